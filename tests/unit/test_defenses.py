"""Defence recipes on the tiny test_qnet (seconds each): DQ, PBAT, DWQ, QADT-R, their configs and exact resume."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from qadtr import QadtrError
from qadtr.models import ModelConfig, create_model
from qadtr.models._calibrate import calibrate_
from qadtr.recipes import recipe_config
from qadtr.recipes.dq import DqConfig, dq_loss, orthogonality_penalty, regularised_weights
from qadtr.recipes.dwq import DwqConfig, RandomPrecision, dwq_loss, random_inference
from qadtr.recipes.pbat import PbatConfig, pbat_loss
from qadtr.recipes.qadtr import QadtrConfig, dbwt_schedule, gir_penalty, qadtr_loss
from qadtr.recipes.qat import bits_for_step
from qadtr.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
TWO = ((2, 2), (4, 4))


@functools.lru_cache(maxsize=None)
def _calibrated(bits) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(ModelConfig("test_qnet", bits=bits, per_bit_bn=len(bits) > 1))
    if bits:
        calibrate_(model, np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))
    return model


def _model(bits=TWO) -> nn.Module:
    """A fresh calibrated test_qnet (a copy: tests change weights and BatchNorm statistics)."""
    return copy.deepcopy(_calibrated(bits)).train()


def _cfg(recipe: str, rc=None, bits=TWO, **kw) -> TrainConfig:
    return TrainConfig(ModelConfig("test_qnet", bits=bits, per_bit_bn=len(bits) > 1), recipe=recipe, batch_size=8,
                       recipe_config=rc, **kw)


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g).float() / 255, torch.arange(n) % 10  # (B, 3, 8, 8)


# --- DQ -----------------------------------------------------------------------------------------------------

def test_dq_penalty_is_zero_for_orthogonal_weights_and_positive_otherwise():
    model = _model(bits=())
    shapes = [tuple(w.flatten(1).shape) for _, w in regularised_weights(model)]
    assert any(m < n for m, n in shapes) and any(m > n for m, n in shapes)  # both non-square cases
    with torch.no_grad():
        for _, w in regularised_weights(model):
            nn.init.orthogonal_(w)  # orthonormal rows (m < n) or columns (m > n)
    assert orthogonality_penalty(model).item() < 1e-8
    assert orthogonality_penalty(model, gram="paper").item() > 1.0  # W^T W = I is impossible when m < n
    assert orthogonality_penalty(model, edges=False).item() < 1e-8
    with torch.no_grad():
        regularised_weights(model)[1][1].mul_(1.1)
    assert orthogonality_penalty(model).item() > 1e-3


def test_dq_gradient_reduces_the_penalty_and_shared_weights_count_once():
    model = _model()
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.nets["w2a2"].modules())
    assert len(regularised_weights(model)) == n_layers  # two nets share one set of weights
    assert len(regularised_weights(model, edges=False)) == n_layers - 2
    params = [w for _, w in regularised_weights(model)]
    opt = torch.optim.SGD(params, lr=1e-3)
    values = []
    for _ in range(5):
        penalty = orthogonality_penalty(model)
        values.append(penalty.item())
        opt.zero_grad()
        penalty.backward()
        opt.step()
    assert all(b < a for a, b in zip(values, values[1:])), values


def test_dq_loss_is_qat_plus_half_beta_times_the_penalty():
    model, (x, y) = _model(bits=((4, 4),)), _batch()
    model.eval()  # no BatchNorm statistics update between the two calls
    plain, _ = dq_loss(model, x, y, step=0, cfg=_cfg("dq", DqConfig(beta=0.0), bits=((4, 4),)))
    reg, logs = dq_loss(model, x, y, step=0, cfg=_cfg("dq", DqConfig(beta=0.01), bits=((4, 4),)))
    assert reg.item() - plain.item() == pytest.approx(0.005 * orthogonality_penalty(model).item(), rel=1e-4)
    assert logs["dq_reg"] > 0


# --- PBAT ---------------------------------------------------------------------------------------------------

def _training_inputs(model: nn.Module) -> list[torch.Tensor]:
    """Inputs of every forward pass the model makes in train mode (the weight update's batch)."""
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    return seen


def test_pbat_patches_part_of_the_batch_with_patches_that_change_between_steps():
    model, (x, y) = _model(bits=((4, 4),)), _batch()
    seen = _training_inputs(model)
    cfg = _cfg("pbat", PbatConfig(size=0.0625, fraction=0.5, steps=2, move_every=1), bits=((4, 4),))
    _, logs = pbat_loss(model, x, y, step=0, cfg=cfg)
    pbat_loss(model, x, y, step=1, cfg=cfg)
    assert len(seen) == 2 and logs["patched_frac"] == 0.5
    first, second = seen
    assert torch.equal(first[4:], x[4:])  # the clean half is untouched
    changed = (first[:4] != x[:4]).flatten(1).any(1)
    assert changed.all()  # every image of the adversarial half carries a patch
    covered = (first[:4] != x[:4]).any(1).flatten(1).sum(1)  # (4,) pixels changed per image
    assert (covered <= 2 * 2).all()  # a 2x2 patch (6.25% of 8x8): nothing else changes
    assert not torch.equal(first[:4], second[:4])  # fresh patches every step


# --- DWQ ----------------------------------------------------------------------------------------------------

def test_dwq_draws_precisions_from_the_set_reproducibly_by_seed():
    model, (x, y) = _model(bits=((2, 2), (4, 4), (8, 8))), _batch()
    draws = lambda seed: [bits_for_step(model, "random", s, seed=seed)[0] for s in range(30)]  # noqa: E731
    assert draws(0) == draws(0) and draws(0) != draws(1)
    assert set(draws(0)) == {(2, 2), (4, 4), (8, 8)}
    cfg = _cfg("dwq", DwqConfig(steps=1), bits=((2, 2), (4, 4), (8, 8)))
    _, logs = dwq_loss(model, x, y, step=7, cfg=cfg)
    (w, a), = bits_for_step(model, "random", 7, seed=cfg.seed)
    assert f"loss_w{w}a{a}" in logs and logs["adv_frac"] == 1.0


def test_dwq_updates_only_the_sampled_precisions_batchnorm():
    model, (x, y) = _model(), _batch()
    before = {k: net.bn1.running_mean.clone() for k, net in model.nets.items()}
    cfg = _cfg("dwq", DwqConfig(steps=1))
    (w, a), = bits_for_step(model, "random", 3, seed=cfg.seed)
    dwq_loss(model, x, y, step=3, cfg=cfg)
    moved = {k for k, net in model.nets.items() if not torch.equal(net.bn1.running_mean, before[k])}
    assert moved == {f"w{w}a{a}"}
    assert model.nets["w2a2"].bn1 is not model.nets["w4a4"].bn1


def test_random_precision_at_inference_is_seeded_and_flagged_in_the_checkpoint():
    from qadtr.checkpoint import Checkpoint

    model, (x, _) = _model(), _batch()
    picks = []
    for seed in (3, 3):
        rp, drawn = RandomPrecision(model, seed=seed), []
        for _ in range(12):
            rp(x)
            drawn.append(rp.last)
        picks.append(drawn)
    assert picks[0] == picks[1] and set(picks[0]) == {"w2a2", "w4a4"}
    mc = ModelConfig("test_qnet", bits=TWO, per_bit_bn=True)
    assert random_inference(Checkpoint(model=mc, train=_cfg("dwq")))
    assert not random_inference(Checkpoint(model=mc, train=_cfg("dwq", DwqConfig(random_inference=False))))
    assert not random_inference(Checkpoint(model=mc, train=_cfg("qat")))


# --- QADT-R -------------------------------------------------------------------------------------------------

def test_dbwt_cycles_bit_widths_per_schedule():
    model = _model(bits=((2, 2), (4, 4), (5, 5), (8, 8)))
    rc = QadtrConfig(dbwt_bits=((8, 8), (2, 2)), dbwt_block=2)
    assert [dbwt_schedule(rc, model, s, seed=0)[0] for s in range(6)] == [(8, 8), (8, 8), (2, 2), (2, 2), (8, 8), (8, 8)]
    cyc = [dbwt_schedule(QadtrConfig(), model, s, seed=0)[0] for s in range(4)]
    assert cyc == [(2, 2), (4, 4), (5, 5), (8, 8)]  # default: the model's bits in order
    rnd = QadtrConfig(dbwt_mode="random")
    draws = [dbwt_schedule(rnd, model, s, seed=0)[0] for s in range(40)]
    assert draws == [dbwt_schedule(rnd, model, s, seed=0)[0] for s in range(40)] and len(set(draws)) == 4
    assert dbwt_schedule(QadtrConfig(dbwt=False), model, 5, seed=0, switch="all") == [(2, 2), (4, 4), (5, 5), (8, 8)]


SMALL = dict(pool_size=2, refresh_every=2, refresh_steps=1, refresh_batch=4, gir_batch=2, gir_every=1)


def test_qadtr_refreshes_its_pool_round_robin_and_patches_the_batch():
    model, (x, y) = _model(), _batch()
    cfg, state = _cfg("qadtr", QadtrConfig(**SMALL, gir=False)), {}
    pools = []
    for step in range(4):
        _, logs = qadtr_loss(model, x, y, step=step, cfg=cfg, state=state)
        pools.append(state["pool"].clone())
        assert logs["patched_frac"] == 0.5
        assert ("refreshed_slot" in logs) == (step % 2 == 0)
    init = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(cfg.seed))  # _init_state's draw
    assert not torch.equal(pools[0][0], init[0]) and torch.equal(pools[0][1], init[1])  # step 0: slot 0
    assert torch.equal(pools[1], pools[0])  # no refresh at step 1
    assert torch.equal(pools[2][0], pools[1][0]) and not torch.equal(pools[2][1], pools[1][1])  # step 2: slot 1
    assert int(state["refreshes"]) == 2


def test_gir_penalty_lowers_cosine_alignment_under_optimisation():
    model, (x, y) = _model(), _batch()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)  # Adam: a smooth descent in few steps
    cos_values = []
    for _ in range(8):
        pen, cos = gir_penalty(model, x, y, b1=(2, 2), b2=(4, 4), form="square")
        cos_values.append(cos.abs().mean().item())
        opt.zero_grad()
        pen.backward()
        opt.step()
    assert cos_values[0] > 0.5  # shared weights: the two bit widths start well aligned
    assert cos_values[4] < cos_values[0] and cos_values[-1] < 0.6 * cos_values[0], cos_values
    assert model.training  # gir_penalty restores the mode it found


def test_qadtr_ablation_flags_remove_their_component():
    (x, y) = _batch()

    def step0(**kw):
        model, state = _model(), {}
        _, logs = qadtr_loss(model, x, y, step=0, cfg=_cfg("qadtr", QadtrConfig(**{**SMALL, **kw})), state=state)
        return logs, state["pool"]

    logs, pool_gir = step0(gir_weight=0.0)  # GIR noise only
    assert {k for k in logs if k.startswith("alpha_")} == {"alpha_w2a2", "alpha_w4a4"}  # A-QAPA: every width
    assert len([k for k in logs if k.startswith("loss_")]) == 1  # DBWT: one width per step
    logs, _ = step0(aqapa=False)
    assert {k for k in logs if k.startswith("alpha_")} == {"alpha_w4a4"}  # the highest width only
    logs, _ = step0(dbwt=False)
    assert {k for k in logs if k.startswith("loss_")} == {"loss_w2a2", "loss_w4a4"}  # --switch all
    logs, _ = step0()
    assert "gir_penalty" in logs
    logs, pool_off = step0(gir=False)
    assert "gir_penalty" not in logs
    _, pool_no_noise = step0(gir_noise=0.0, gir_weight=0.0)
    assert not torch.equal(pool_gir, pool_off) and torch.equal(pool_no_noise, pool_off)  # the noise is GIR's


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_resume_of_a_stateful_recipe_is_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    import qadtr.recipes as recipes

    cfg = TrainConfig(ModelConfig("test_qnet", bits=TWO, per_bit_bn=True), recipe="qadtr", epochs=1, batch_size=16,
                      lr=0.05, save_every=2, recipe_config=QadtrConfig(**{**SMALL, "refresh_every": 3}))
    # 64 images / 16 = 4 steps; refreshes at steps 0 and 3; the crash at step 3 leaves last.pt of step 2
    full = train(cfg, tmp_path / "full")
    real = recipes.get_recipe("qadtr")

    def crash_at_step_3(model, x, y, *, step, cfg, state):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(model, x, y, step=step, cfg=cfg, state=state)

    monkeypatch.setitem(recipes.RECIPES, "qadtr", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crash")
    saved = torch.load(tmp_path / "crash" / "last.pt", weights_only=True)
    assert saved["step"] == 2 and int(saved["recipe_state"]["refreshes"]) == 1  # the pool is saved with the weights
    monkeypatch.setitem(recipes.RECIPES, "qadtr", real)
    resumed = train(cfg, tmp_path / "crash", resume=True)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- configs, model.json, CLI -------------------------------------------------------------------------------

def test_recipe_configs_are_saved_in_model_json_and_parsed_from_the_cli(tmp_path):
    from qadtr._config import config_from_dict, config_to_dict
    from qadtr.checkpoint import read_checkpoint_info, save_checkpoint

    cfg = _cfg("qadtr", recipe_config("qadtr", ["gir=false", "dbwt_bits=4,2", "pool-size=3", "targets=random"]))
    assert cfg.recipe_config == QadtrConfig(gir=False, dbwt_bits=((4, 4), (2, 2)), pool_size=3, targets="random")
    assert _cfg("dq").recipe_config == DqConfig()  # defaults filled in
    assert config_from_dict(config_to_dict(cfg)) == cfg
    pt = save_checkpoint(_model(), tmp_path / "model.pt", model_cfg=cfg.model, train_cfg=cfg)
    assert read_checkpoint_info(pt).train.recipe_config == cfg.recipe_config
    assert recipe_config("qat") is None and recipe_config("pbat", ["targets=random"]).targets == "random"


@pytest.mark.parametrize("recipe, items, match", [
    ("qadtr", ["pool_sise=3"], r"QadtrConfig has no option 'pool_sise'; valid: \["),
    ("qadtr", ["gir=maybe"], "gir='maybe': expected bool"),
    ("qadtr", ["gir"], "write KEY=VALUE"),
    ("dq", ["beta=big"], "beta='big': expected float"),
    ("qat", ["beta=1"], "takes no --recipe-arg options"),
])
def test_recipe_args_reject_mistakes(recipe, items, match):
    with pytest.raises(ValueError, match=match):
        recipe_config(recipe, items)


@pytest.mark.parametrize("make, match", [
    (lambda: DqConfig(beta=-1.0), "beta=-1.0 must be >= 0"),
    (lambda: DqConfig(gram="wide"), "gram='wide'; choose one of"),
    (lambda: PbatConfig(size=2.0), "size=2.0 is a fraction"),
    (lambda: PbatConfig(fraction=0.0), r"fraction=0.0 must be in \(0, 1\]"),
    (lambda: PbatConfig(steps=0), "steps=0 must be >= 1"),
    (lambda: PbatConfig(stride=0), "stride=0 must be >= 1"),
    (lambda: PbatConfig(targets="some"), "targets='some'; choose one of"),
    (lambda: DwqConfig(attack="fgsm"), "attack='fgsm'; choose one of"),
    (lambda: DwqConfig(steps=0), "steps=0 >= 1"),
    (lambda: DwqConfig(fraction=1.5), "fraction=1.5 must be in"),
    (lambda: QadtrConfig(size=0.0), "size=0.0 must be in"),
    (lambda: QadtrConfig(targets="all"), "targets='all'; choose one of"),
    (lambda: QadtrConfig(pool_size=0), "pool_size, refresh_every"),
    (lambda: QadtrConfig(patch_lr=0.0), "patch_lr=0.0 and temperature"),
    (lambda: QadtrConfig(dbwt_mode="zigzag"), "dbwt_mode='zigzag'"),
    (lambda: QadtrConfig(gir_weight=-1.0), "gir_weight=-1.0 and gir_noise"),
    (lambda: _cfg("dwq", bits=((4, 4),)), "pass several, e.g. --bits 2,4,5,8"),
    (lambda: TrainConfig(ModelConfig("test_qnet", bits=TWO), recipe="dwq"), "add --per-bit-bn"),
    (lambda: _cfg("dwq", switch="cycle"), "drop --switch cycle"),
    (lambda: _cfg("qadtr", bits=((4, 4),)), "QADT-R trains across bit widths"),
    (lambda: _cfg("qadtr", QadtrConfig(dbwt_bits=((5, 5),))), r"dbwt_bits \[\(5, 5\)\] are not among"),
    (lambda: _cfg("qat", DqConfig()), "takes no recipe config; drop --recipe-arg"),
    (lambda: _cfg("dq", PbatConfig()), "takes a DqConfig, got PbatConfig"),
])
def test_recipe_configs_reject_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_train_cli_names_the_fix_for_a_recipe_mistake():
    r = subprocess.run([sys.executable, "-m", "qadtr.train", "--model", "test_qnet", "--bits", "2,4", "--recipe", "dwq",
                        "--out", "x"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "add --per-bit-bn" in r.stderr and "Traceback" not in r.stderr


def test_unknown_recipe_is_a_user_error():
    with pytest.raises(QadtrError, match="unknown recipe 'magic'"):
        recipe_config("magic")
