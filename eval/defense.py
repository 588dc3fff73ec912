"""Defence evaluation: each defended checkpoint against seen, unseen, adaptive, transfer and L-inf attacks.

    python -m eval.defense --checkpoints runs/qat runs/pbat runs/qadtr --surrogate zoo/resnet20_float --out DIR

Every checkpoint is measured at each of its bit widths (deployable networks; plus a random precision
per batch when a DWQ checkpoint asks for it) on one fixed test subset, against:

    seen / white-box    the patch kind the recipe trained on (PBAT: per-image location patches;
                        QADT-R: universal), at its size, made white-box at that bit width ("white-box"
                        for recipes that saw no patches: a universal patch)
    unseen-attack       the other kind (universal <-> location), same size
    unseen-size         the own kind at another size (`--other-size`)
    unseen-location     a LaVAN patch: 2% of the image at one fixed corner
    unseen-source-bits  the own kind made at each *other* bit width of the same model
    adaptive            A-QAPA over every bit width of the model jointly (knows the defence is
                        multi-precision); `adaptive-eot` for a random-precision model: A-QAPA with
                        uniform weights = the expectation over DWQ's random precision
    transfer            universal and location patches made on the undefended `--surrogate`
    fgsm, pgd           untargeted L-inf at eps 2, 4, 8 /255 (white-box), `pgd-transfer` from the surrogate

A defence that only hides gradients shows up as transfer ASR above white-box ASR. Patch ASR is
untargeted by default (`--target` for a class); L-inf rows also report robust accuracy. On a
random-precision network the clean and the attacked predictions are separate draws (as a deployed
DWQ model would make them), so part of its "ASR" is precision noise: compare with its clean row.
Writes OUT/defense.json (budget + rows, after every row: resumable; a resumed run must use the same
budget), OUT/defense.md (a summary table per network and every row) and the patches under OUT/patches/.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval._threats import EOT_TEMPERATURE, LAVAN_SIZE, Budget, PatchMaker, ck_data, lp_examples, profile, \
    robust_accuracy
from qadtr._errors import QadtrError
from qadtr.bits import bits_name, bits_names

KINDS = ("seen", "unseen", "adaptive", "transfer", "fgsm", "pgd")
OTHER_KIND = {"universal": "location", "location": "universal"}


def _name(path: str) -> str:
    return Path(path).parent.name if Path(path).suffix == ".pt" else Path(path).name


def row_key(r: dict) -> tuple:
    return r["checkpoint"], r["evaluated_on"], r["category"], r["attack"], r["size"], r["source"], r.get("eps255")


def parse_scope(text: str) -> tuple[str, ...]:
    """`--bits` tokens as network keys: '2,4' -> ('w2a2', 'w4a4'); 'w4a8', 'float' and 'random' pass as given."""
    from qadtr.bits import parse_bits

    keys = []
    for tok in (t.strip().lower() for t in text.split(",") if t.strip()):
        if tok in ("float", "random"):
            keys.append(tok)
            continue
        try:
            keys += [bits_names((b,)) for b in parse_bits(tok)]
        except ValueError:
            raise QadtrError(f"--bits {text!r}: use bit widths like 2,4 or w4a8 (plus 'random' or 'float')") from None
    return tuple(keys)


def run(checkpoints: list[str], surrogate: str, budget: Budget, *, out: Path, kinds=KINDS,
        data_dir: str | None = None, scope: tuple[str, ...] = ()) -> list[dict]:
    """Evaluate every checkpoint per the module docstring; returns all rows (old ones of a resumed run too).

    `scope` (network keys from `parse_scope`) limits which networks are attacked and measured, and the
    unseen source bit widths to those; the adaptive attack still spans every bit width the model has
    (that is the deployed defence). Empty: every network.
    """
    from qadtr.checkpoint import load_checkpoint
    from qadtr.data import load_split, subset_indices

    names = _check_names(checkpoints, kinds)
    result = out / "defense.json"
    rows = _resumed_rows(result, budget, out=out)
    models = [(n, *load_checkpoint(p)) for n, p in zip(names, checkpoints)]  # fail early on a bad path
    sur = _Surrogate.load(surrogate)
    datasets = {ck_data(ck) for _, _, ck in models} | {ck_data(sur.ck)}
    if len(datasets) != 1:
        raise QadtrError(f"the checkpoints were trained on different datasets {sorted(datasets)}; "
                         "evaluate one at a time")
    data = datasets.pop()
    train, test = load_split(data, "train", data_dir), load_split(data, "test", data_dir)
    idx = subset_indices(len(test.labels), budget.eval_images, seed=1)
    run_ = _Run(budget=budget, kinds=kinds, scope=scope, result=result, rows=rows, done={row_key(r) for r in rows},
                maker=PatchMaker(out / "patches", budget, train, test=test, eval_idx=idx), test=test,
                images=test.images[idx], labels=test.labels[idx], sur=sur)
    for name, model, ck in models:
        _evaluate_model(run_, name, model, ck=ck)
    return rows


def _check_names(checkpoints: list[str], kinds) -> list[str]:
    """The checkpoints' row names, after checking `kinds` and that no two names clash."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise QadtrError(f"--kinds {unknown or '(none)'}: choose from {','.join(KINDS)}")
    names = [_name(p) for p in checkpoints]
    if len(set(names)) != len(names):
        raise QadtrError(f"two checkpoints share a folder name ({names}); rows are keyed by it, rename one")
    return names


def _resumed_rows(result: Path, budget: Budget, *, out: Path) -> list[dict]:
    """The rows of an earlier run into `out` (none at first); it must have used the same budget."""
    from qadtr._config import config_to_dict, read_json

    rows = read_json(result)["rows"] if result.is_file() else []
    if result.is_file() and read_json(result)["budget"] != config_to_dict(budget):
        raise QadtrError(f"{out} holds results made with another budget; pass the same flags or another --out")
    return rows


@dataclass
class _Surrogate:
    """The undefended model transfer attacks are made on, at its first bit width (or float)."""
    path: str  # as given: patch folder names come from it
    model: object
    ck: object
    bits: tuple  # () for a float surrogate, else its first (w, a)
    net: object  # the deployed network at `bits`
    name: str  # "surrogate:<folder>", the row's source
    lp: dict = field(default_factory=dict)  # eps -> its L-inf examples, made once for every network

    @classmethod
    def load(cls, path: str) -> _Surrogate:
        from qadtr.checkpoint import load_checkpoint
        from qadtr.models import bits_of, deploy_net

        model, ck = load_checkpoint(path)
        bits = tuple(bits_of(model)[:1])
        return cls(path, model, ck, bits, net=deploy_net(model, *bits[0]) if bits else model,
                   name=f"surrogate:{_name(path)}")


@dataclass
class _Run:
    """What every network of one `run` is measured with, and its rows so far."""
    budget: Budget
    kinds: tuple
    scope: tuple
    result: Path  # OUT/defense.json, rewritten after every row
    rows: list
    done: set  # row_key of every row in `rows`
    maker: PatchMaker
    test: object  # the test split (per-image patches index it)
    images: np.ndarray  # the fixed test subset
    labels: np.ndarray
    sur: _Surrogate

    def emit(self, row: dict) -> None:
        from qadtr._config import config_to_dict, write_json

        self.rows.append(row)
        self.done.add(row_key(row))
        doc = {"argv": sys.argv, "budget": config_to_dict(self.budget), "rows": self.rows}
        write_json(self.result, doc)  # after every row: nothing is lost
        a = row["asr"] if "asr" in row else row["accuracy"]
        print(f"{row['checkpoint']}:{row['evaluated_on']:7s} {row['category']:18s} {row['attack']:9s} "
              f"{row['source']:28s} {'ASR' if 'asr' in row else 'acc'} {100 * a['value']:6.2f}% (n={a['n']})",
              flush=True)


@dataclass
class _Model:
    """One checkpoint under evaluation."""
    name: str
    model: object
    ck: object
    prof: object  # its threat profile (`eval._threats.profile`)
    have: list  # its bit widths
    recipe: str
    own_nets: dict  # (w, a) -> its deployed network, for the networks in scope
    other_size: float  # the unseen patch size

    def base(self, key: str, category: str, attack: str, *, size, source: str, eps=None, target) -> dict:
        return {"checkpoint": self.name, "recipe": self.recipe, "evaluated_on": key, "category": category,
                "attack": attack, "size": size, "source": source, "eps255": eps, "target": target}


def _evaluate_model(run_: _Run, name: str, model, *, ck) -> None:
    """Every threat on each network of the checkpoint within --bits."""
    from qadtr.models import bits_of, deploy_net
    from qadtr.predict import predict
    from qadtr.recipes.dwq import RandomPrecision, random_inference

    budget = run_.budget
    prof, have = profile(ck, budget), bits_of(model)
    nets = [(bits_name((w, a)), (w, a), deploy_net(model, w, a)) for w, a in have] or [("float", None, model)]
    if random_inference(ck):
        nets.append(("random", None, RandomPrecision(model, seed=budget.eval_seed)))
    if run_.scope:
        nets = [n for n in nets if n[0] in run_.scope]
        if not nets:
            raise QadtrError(f"{name} has none of --bits {','.join(run_.scope)} (it has "
                             f"{', '.join(bits_names((b,)) for b in have) or 'float'}); pick among those")
    m = _Model(name, model, ck, prof, have, recipe=ck.train.recipe if ck.train is not None else "",
               own_nets={bits: net for _, bits, net in nets if bits is not None},
               other_size=budget.other_size if abs(budget.other_size - prof.size) > 1e-9 else 0.05)
    for key, bits, net in nets:
        clean = predict(net, run_.images)
        row = m.base(key, "clean", "none", size=None, source="-", target=budget.target)
        if row_key(row) not in run_.done:
            run_.emit({**row, "accuracy": robust_accuracy(clean, run_.labels).to_dict()})
        _own_patches(run_, m, key, bits=bits, net=net, clean=clean)
        if "transfer" in run_.kinds:
            _transfer_patches(run_, m, key, net=net, clean=clean)
        for kind in [k for k in ("fgsm", "pgd") if k in run_.kinds]:
            _lp_attacks(run_, m, key, kind=kind, net=net, clean=clean)


def _patch_specs(run_: _Run, m: _Model, key: str, *, bits) -> list[tuple]:
    """(category, attack, size, source bits, maker kwargs) of each patch made on the model itself."""
    prof, have, kinds, scope = m.prof, m.have, run_.kinds, run_.scope
    specs = []
    if bits is not None and "seen" in kinds:
        specs.append(("seen" if prof.trained else "white-box", prof.attack, prof.size, (bits,), {}))
    if bits is not None and "unseen" in kinds:
        specs += [("unseen-attack", OTHER_KIND[prof.attack], prof.size, (bits,), {}),
                  ("unseen-size", prof.attack, m.other_size, (bits,), {}),
                  ("unseen-location", "lavan", LAVAN_SIZE, (bits,), {})]
    if "unseen" in kinds:
        specs += [("unseen-source-bits", prof.attack, prof.size, (b,), {}) for b in have
                  if b != bits and (not scope or bits_names((b,)) in scope)]
    if "adaptive" in kinds:
        if have:
            specs.append(("adaptive", "aqapa", prof.size, tuple(have),
                          {"temperature": run_.budget.adaptive_temperature}))
        else:
            specs.append(("adaptive", "universal", prof.size, (), {}))
        if key == "random":
            specs.append(("adaptive-eot", "aqapa", prof.size, tuple(have), {"temperature": EOT_TEMPERATURE}))
    return specs


def _own_patches(run_: _Run, m: _Model, key: str, *, bits, net, clean: np.ndarray) -> None:
    from qadtr.attacks import evaluate_patch

    budget = run_.budget
    for category, attack, size, src_bits, kw in _patch_specs(run_, m, key, bits=bits):
        source = f"self:{bits_names(src_bits)}"
        row = m.base(key, category, attack, size=size, source=source, target=budget.target)
        if row_key(row) in run_.done:
            continue
        patch = run_.maker.get(m.name, m.model, m.ck, attack=attack, size=size, bits=src_bits,
                               net=m.own_nets.get(src_bits[0]) if len(src_bits) == 1 else None, **kw)
        asr = evaluate_patch(net, patch, run_.test.images[patch.indices] if patch.per_image else run_.images,
                             labels=run_.labels, seed=budget.eval_seed, clean_pred=clean)
        run_.emit({**row, "seen": category == "seen", "asr": asr.rate.to_dict(), "definition": asr.definition})


def _transfer_patches(run_: _Run, m: _Model, key: str, *, net, clean: np.ndarray) -> None:
    from qadtr.attacks import evaluate_patch

    budget, sur = run_.budget, run_.sur
    for attack in ("universal", "location"):
        row = m.base(key, "transfer", attack, size=m.prof.size, source=f"{sur.name}:{bits_names(sur.bits)}",
                     target=budget.target)
        if row_key(row) in run_.done:
            continue
        patch = run_.maker.get(f"surrogate-{_name(sur.path)}", sur.model, sur.ck, attack=attack, size=m.prof.size,
                               bits=sur.bits, net=sur.net)
        asr = evaluate_patch(net, patch, run_.images, labels=run_.labels, seed=budget.eval_seed, clean_pred=clean)
        run_.emit({**row, "seen": False, "asr": asr.rate.to_dict(), "definition": asr.definition})


def _lp_attacks(run_: _Run, m: _Model, key: str, *, kind: str, net, clean: np.ndarray) -> None:
    from qadtr.attacks import attack_success
    from qadtr.predict import predict

    budget, sur, images, labels = run_.budget, run_.sur, run_.images, run_.labels
    for eps in budget.eps255:
        jobs = [(kind, "self", net)] + ([("pgd-transfer", sur.name, sur.net)] if kind == "pgd" else [])
        for category, source, src in jobs:
            row = m.base(key, category, kind, size=None, source=source, eps=eps, target=budget.target)
            if row_key(row) in run_.done:
                continue
            if source == "self":
                adv = lp_examples(src, images, labels, kind=kind, eps255=eps, steps=budget.pgd_steps,
                                  seed=budget.seed)
            else:
                if eps not in sur.lp:
                    sur.lp[eps] = lp_examples(sur.net, images, labels, kind=kind, eps255=eps,
                                              steps=budget.pgd_steps, seed=budget.seed)
                adv = sur.lp[eps]
            pred = predict(net, adv)
            asr = attack_success(clean, pred, labels)
            run_.emit({**row, "seen": False, "asr": asr.rate.to_dict(), "definition": asr.definition,
                       "robust_acc": robust_accuracy(pred, labels).to_dict()})


def _pct(values: list[float]) -> str:
    return f"{100 * float(np.mean(values)):.1f}" if values else "-"


def markdown(rows: list[dict], budget: Budget) -> str:
    """A summary line per (checkpoint, network) and the full list of rows."""
    nets = list(dict.fromkeys((r["checkpoint"], r["recipe"], r["evaluated_on"]) for r in rows))
    eps = budget.eps255
    head = (["checkpoint", "recipe", "bits", "clean acc", "seen / white-box", "unseen (mean)", "unseen (worst)",
             "adaptive", "transfer (max)"] + [f"FGSM {e:g}" for e in eps] + [f"PGD {e:g}" for e in eps]
            + [f"PGD-transfer {eps[-1]:g}"])
    lines = ["ASR % (untargeted unless a target is given; L-inf: share of correct images flipped), "
             f"{budget.eval_images or 'all'} test images", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for ck, recipe, key in nets:
        mine = [r for r in rows if (r["checkpoint"], r["evaluated_on"]) == (ck, key)]

        def asr(cat, e=None):
            return [r["asr"]["value"] for r in mine if r["category"] == cat and (e is None or r.get("eps255") == e)]

        clean = [r["accuracy"]["value"] for r in mine if r["category"] == "clean"]
        unseen = [r["asr"]["value"] for r in mine if r["category"].startswith("unseen")]
        cells = [ck, recipe, key, _pct(clean), _pct(asr("seen") + asr("white-box")), _pct(unseen),
                 _pct([max(unseen)]) if unseen else "-", _pct(asr("adaptive") + asr("adaptive-eot")),
                 _pct([max(asr("transfer"))]) if asr("transfer") else "-"]
        cells += [_pct(asr("fgsm", e)) for e in eps] + [_pct(asr("pgd", e)) for e in eps]
        cells.append(_pct(asr("pgd-transfer", eps[-1])))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| checkpoint | bits | category | attack | size | source | eps | ASR / acc [95% CI] | n |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r.get("asr") or r["accuracy"]
        size = "-" if r["size"] is None else f"{r['size']:g}"
        eps_text = "-" if r.get("eps255") is None else f"{r['eps255']:g}/255"
        lines.append(f"| {r['checkpoint']} | {r['evaluated_on']} | {r['category']} | {r['attack']} | {size} | "
                     f"{r['source']} | {eps_text} | {100 * a['value']:.2f}% [{100 * a['ci95'][0]:.1f}, "
                     f"{100 * a['ci95'][1]:.1f}] | {a['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.defense", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="defended (and baseline) checkpoints")
    p.add_argument("--surrogate", required=True,
                   help="an undefended checkpoint for transfer attacks (e.g. zoo/resnet20_float)")
    p.add_argument("--out", required=True, help="results folder (resumable)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"threats to run: {','.join(KINDS)}")
    p.add_argument("--bits", default="", help="networks to evaluate, e.g. 2,4 or w4a4,random (default: all); "
                   "the adaptive attack still spans all of a model's bit widths")
    p.add_argument("--size", type=float, default=0.0625, help="patch size of recipes that trained on none")
    p.add_argument("--other-size", type=float, default=0.1, help="the unseen patch size")
    p.add_argument("--target", default="none", help="patch target class, or none (untargeted)")
    p.add_argument("--patch-steps", type=int, default=100)
    p.add_argument("--patch-batch", type=int, default=64)
    p.add_argument("--location-steps", type=int, default=20)
    p.add_argument("--train-images", type=int, default=2000, help="training images patches are made on (0 = all)")
    p.add_argument("--eval-images", type=int, default=500, help="test images every threat is measured on (0 = all)")
    p.add_argument("--eps", default="2,4,8", help="FGSM/PGD budgets in uint8 levels")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--adaptive-temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr.attacks import parse_target

        check_writable(args.out, "folder")  # a file there gave a FileExistsError traceback
        try:
            eps = tuple(float(e) for e in args.eps.split(","))
        except ValueError:
            raise QadtrError(f"--eps {args.eps!r}: uint8 levels like 2,4,8") from None
        try:
            budget = Budget(size=args.size, other_size=args.other_size, target=parse_target(args.target),
                            patch_steps=args.patch_steps, patch_batch=args.patch_batch,
                            location_steps=args.location_steps, train_images=args.train_images,
                            eval_images=args.eval_images, eps255=eps,
                            pgd_steps=args.pgd_steps, adaptive_temperature=args.adaptive_temperature,
                            seed=args.seed, eval_seed=args.eval_seed)
        except ValueError as e:
            raise QadtrError(str(e)) from None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        rows = run(args.checkpoints, args.surrogate, budget, out=out, kinds=kinds, data_dir=args.data_dir,
                   scope=parse_scope(args.bits))
        (out / "defense.md").write_text(markdown(rows, budget))
        print(f"wrote {out / 'defense.json'} and defense.md ({len(rows)} rows)")

    return run_cli("eval.defense", body, argv)


if __name__ == "__main__":
    sys.exit(main())
