"""The training loop: seeded batches, augmentation, resumable state, per-epoch evaluation.

Everything random is a pure function of (seed, epoch, step): the batch order of epoch e, the crop
and flip of step s, the bit width of step s. A run resumed from `last.pt` therefore replays exactly
the batches an uninterrupted run would have seen.

Under torchrun (qadtr._distributed) the same loop runs in every process: `cfg.batch_size` is the global batch,
each rank takes its contiguous slice of it (`World.shard`: the same global permutation of the epoch on every
rank), DDP averages the gradients, BatchNorm uses the global batch's statistics, and rank 0 alone writes
last.pt, history.json, model.pt and the progress bar. One process is the world of size 1.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from qadtr._config import atomic_write_bytes, config_to_dict, write_json
from qadtr._distributed import World, broadcast_state_, global_batchnorm, join_world, leave_world, wrap
from qadtr._errors import QadtrError
from qadtr.checkpoint import save_checkpoint
from qadtr import data as datasets  # module attribute: tests swap datasets.load_split for a tiny split
from qadtr.models import bits_of, create_model, load_pretrained_
from qadtr.models._calibrate import calibrate_
from qadtr.predict import accuracy_per_bits, to_tensor
from qadtr.progress import progress
from qadtr.recipes import STATEFUL, get_recipe
from qadtr.train_config import TrainConfig

CALIB_IMAGES = 512  # enough for stable per-layer percentiles; calibration takes seconds
PAD = 4  # random-crop padding: the standard CIFAR augmentation (He et al. 2016)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def augment(x: torch.Tensor, seed: int, step: int, *, hflip: bool, rows: slice | None = None,
            n: int | None = None) -> torch.Tensor:
    """Random crop (zero padding PAD) and optional horizontal flip. x: (B, 3, H, W) in [0, 1].

    `rows`: x holds these rows of the step's global batch of `n` images (a rank's shard), and each row gets the
    crop and flip it gets in the whole batch. None: x is the whole batch.
    """
    g = torch.Generator().manual_seed(seed * 7_919 + step)
    B, _, H, W = x.shape
    rows, n = (slice(0, B), B) if rows is None else (rows, n)  # the draws are made for all n rows
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))  # (B, 3, H+2P, W+2P)
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=g)[rows]
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=g)[rows]
    flip = (torch.rand(n, generator=g) < 0.5)[rows]
    out = torch.empty_like(x)
    for i in range(B):
        crop = padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W]
        out[i] = crop.flip(-1) if (hflip and flip[i]) else crop
    return out


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm, biases and quantizer scales (decay would shrink the scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if (p.ndim <= 1 or "scaling_impl" in name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Step(nn.Module):
    """One training step's loss as a module's forward: DDP then sees one forward per backward (a recipe runs the
    model several times, per bit width and in inner attacks) and finds the parameters the step left unused.

    The recipe's state is an attribute, not an argument: DDP copies the containers of its arguments.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, state: dict):
        super().__init__()
        self.model, self.cfg, self.state = model, cfg, state
        self.recipe = get_recipe(cfg.recipe)

    def forward(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        if self.cfg.recipe in STATEFUL:
            return self.recipe(self.model, x, y, step=step, cfg=self.cfg, state=self.state)
        return self.recipe(self.model, x, y, step=step, cfg=self.cfg)


def _resume_json(cfg: TrainConfig) -> str:
    """The settings a resumed run must share with the one it continues: all but the device."""
    d = config_to_dict(cfg)
    d["_data"].pop("device")
    return json.dumps(d, sort_keys=True)


def fit(model: nn.Module, cfg: TrainConfig, train, *, test, out: Path, resume: bool, hflip: bool,
        world: World = World()) -> dict:
    """Train `model` per `cfg` (a TrainConfig) on `train`, evaluating on `test` after each epoch.

    Writes `out/last.pt` every `cfg.save_every` steps and at each epoch end (with the recipe's state, e.g.
    QADT-R's patch pool); returns the final metrics. Under several processes (`world`) each rank trains on
    its shard of every global batch and rank 0 alone writes and evaluates.
    """
    n = len(train.images)
    steps_per_epoch = n // cfg.batch_size  # drop the last partial batch: every step has the same size
    if steps_per_epoch == 0:
        raise QadtrError(f"{n} training images is fewer than one batch of {cfg.batch_size}; lower --batch-size")
    rows = world.shard(cfg.batch_size)  # this rank's positions in every global batch
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    cfg_json = _resume_json(cfg)
    state_path = out / "last.pt"
    step, history, recipe_state, state = _start(model, cfg, train, out=out, resume=resume, cfg_json=cfg_json,
                                                total=total, world=world)
    model.to(world.device)
    if state is not None:
        opt.load_state_dict(state["optim"])  # after the move: the momentum buffers follow the parameters

    model.train()
    bar = progress(total=total, initial=step, desc=f"{cfg.recipe} {out.name}", unit="step", enabled=world.main)
    t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)  # wall time since the start, by epoch
    with global_batchnorm(model, world):
        step_fn = wrap(_Step(model, cfg, recipe_state), world)
        while step < total:
            epoch, i = divmod(step, steps_per_epoch)
            x, y = _batch(train, cfg, step, epoch=epoch, i=i, rows=rows, hflip=hflip, world=world)
            for g in opt.param_groups:  # cosine decay to zero over the whole run
                g["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
            loss, logs = step_fn(x, y, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP: gradients averaged over the ranks here
            opt.step()
            broadcast_state_(recipe_state, world)  # QADT-R's pool: rank 0's, on every rank
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch, refresh=False)
            if step % steps_per_epoch == 0:
                _end_epoch(model, test, bar, cfg=cfg, loss=loss, epoch=epoch, step=step, t0=t0, history=history,
                           world=world)
            if step % steps_per_epoch == 0 or step % cfg.save_every == 0:
                _save_state(state_path, model, opt, step=step, cfg_json=cfg_json, history=history,
                            recipe_state=recipe_state, world=world)
    bar.close()
    if world.main:
        write_json(out / "history.json", history)
    last = history[-1] if history else {}
    return {"test_acc": last.get("test_acc", {}), "test_acc_trained": last.get("test_acc_trained", {}),
            "epochs": cfg.epochs, "steps": total, "history": history}


def _start(model: nn.Module, cfg: TrainConfig, train, *, out: Path, resume: bool, cfg_json: str, total: int,
           world: World) -> tuple[int, list, dict, dict | None]:
    """(step, history, recipe state, last.pt's contents or None): restored from `out/last.pt` when resuming,
    else a fresh run whose quantized model is calibrated on fixed training images."""
    recipe_state: dict = {}  # filled by a stateful recipe; saved and restored with the weights
    state_path, history = out / "last.pt", []
    step, state = 0, None
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)  # saved on any device
        if state["config"] != cfg_json:
            raise QadtrError(f"{out} holds a run started with other settings; use the same flags or another --out")
        model.load_state_dict(state["model"])
        step, history = state["step"], json.loads(state["history"])
        recipe_state = state.get("recipe_state", {})
        if world.main:
            print(f"resuming {out} at step {step}/{total}", file=sys.stderr)
    elif bits_of(model):  # thresholds from CALIB_IMAGES fixed pseudo-random training images
        pick = np.random.default_rng(cfg.seed).permutation(len(train.images))[:CALIB_IMAGES]
        calibrate_(model, train.images[np.sort(pick)], seed=cfg.seed)
    return step, history, recipe_state, state


def _batch(train, cfg: TrainConfig, step: int, *, epoch: int, i: int, rows: slice, hflip: bool,
           world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of step `step` (batch `i` of `epoch`), augmented, on the device: (x, y)."""
    order = epoch_order(len(train.images), cfg.seed, epoch)
    idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size][rows].numpy()  # this rank's shard
    x = augment(to_tensor(train.images[idx]), cfg.seed, step, hflip=hflip, rows=rows, n=cfg.batch_size)
    x = x.to(world.device)  # (b, 3, 32, 32), b = batch_size / world size
    y = torch.from_numpy(train.labels[idx]).to(world.device)  # (b,)
    return x, y


def _end_epoch(model: nn.Module, test, bar, *, cfg: TrainConfig, loss: torch.Tensor, epoch: int, step: int,
               t0: float, history: list, world: World) -> None:
    """Every rank joins the mean of the last loss; rank 0 then evaluates, appends to `history` and prints."""
    mean_loss = world.mean(loss.detach())
    if world.main:
        acc = accuracy_per_bits(model, test.images, test.labels,  # the deployable (BN-folded) nets
                                device=world.device)
        entry = {"epoch": epoch + 1, "step": step, "loss": mean_loss,
                 "elapsed_s": round(time.perf_counter() - t0, 1),
                 "test_acc": {k: v.to_dict() for k, v in acc.items()}}
        if bits_of(model):
            trained = accuracy_per_bits(model, test.images, test.labels, form="trained",
                                        device=world.device)
            entry["test_acc_trained"] = {k: v.to_dict() for k, v in trained.items()}
        history.append(entry)
        bar.write(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v}" for k, v in acc.items()))
        model.train()


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, *, step: int, cfg_json: str,
                history: list, recipe_state: dict, world: World) -> None:
    """Write last.pt (rank 0 alone): weights, optimizer, step, settings, history and the recipe's state."""
    if not world.main:
        return
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                "config": cfg_json, "history": json.dumps(history), "recipe_state": recipe_state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def train(cfg: TrainConfig, out: str | Path, *, data_dir: str | None = None, resume: bool = False,
          download: bool = False) -> Path:
    """Train per `cfg` into `out`; returns the path of the final model.pt (written by rank 0 alone).

    Run by torchrun, every process calls this; see qadtr._distributed.
    """
    out = Path(out)
    if (out / "model.pt").exists() and not resume:
        raise QadtrError(f"{out} already holds a finished model; choose another --out")
    if (out / "last.pt").exists() and not resume:
        raise QadtrError(f"{out} holds an interrupted run; pass --resume to continue it or choose another --out")
    world = join_world(cfg.device)
    try:
        world.shard(cfg.batch_size)  # a global batch that does not split: refused before the data loads
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
        with world.rank0_first():  # rank 0 may build the dataset cache the others then read
            train_split = datasets.load_split(cfg.data, "train", data_dir, download=download and world.main)
            test_split = datasets.load_split(cfg.data, "test", data_dir, download=download and world.main)
        if cfg.train_subset:
            train_split = datasets.subset(train_split, cfg.train_subset)
        if cfg.eval_subset:
            test_split = datasets.subset(test_split, cfg.eval_subset)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model)
        if cfg.init:
            load_pretrained_(model, cfg.init)
        metrics = fit(model, cfg, train_split, test=test_split, out=out, resume=resume,
                      hflip=datasets.DATASETS[cfg.data].hflip_ok, world=world)
        pt = out / "model.pt"
        if world.main:
            pt = save_checkpoint(model.cpu(), pt, model_cfg=cfg.model, train_cfg=cfg,
                                 metrics={k: v for k, v in metrics.items() if k != "history"})
        world.barrier()  # no rank leaves before model.pt is written
        return pt
    finally:
        leave_world(world)
