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


def run(checkpoints: list[str], surrogate: str, budget: Budget, out: Path, *, kinds=KINDS,
        data_dir: str | None = None, scope: tuple[str, ...] = ()) -> list[dict]:
    """Evaluate every checkpoint per the module docstring; returns all rows (old ones of a resumed run too).

    `scope` (network keys from `parse_scope`) limits which networks are attacked and measured, and the
    unseen source bit widths to those; the adaptive attack still spans every bit width the model has
    (that is the deployed defence). Empty: every network.
    """
    from qadtr._config import config_to_dict, read_json, write_json
    from qadtr.data import subset_indices
    from qadtr.attacks import attack_success, evaluate_patch
    from qadtr.checkpoint import load_checkpoint
    from qadtr.data import load_split
    from qadtr.predict import predict
    from qadtr.models import bits_of, deploy_net
    from qadtr.recipes.dwq import RandomPrecision, random_inference

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise QadtrError(f"--kinds {unknown or '(none)'}: choose from {','.join(KINDS)}")
    names = [_name(p) for p in checkpoints]
    if len(set(names)) != len(names):
        raise QadtrError(f"two checkpoints share a folder name ({names}); rows are keyed by it, rename one")
    result = out / "defense.json"
    rows = read_json(result)["rows"] if result.is_file() else []
    if result.is_file() and read_json(result)["budget"] != config_to_dict(budget):
        raise QadtrError(f"{out} holds results made with another budget; pass the same flags or another --out")
    done = {row_key(r) for r in rows}
    models = [(n, *load_checkpoint(p)) for n, p in zip(names, checkpoints)]  # fail early on a bad path
    s_model, s_ck = load_checkpoint(surrogate)
    s_bits = tuple(bits_of(s_model)[:1])
    s_net, s_name = (deploy_net(s_model, *s_bits[0]) if s_bits else s_model), f"surrogate:{_name(surrogate)}"
    datasets = {ck_data(ck) for _, _, ck in models} | {ck_data(s_ck)}
    if len(datasets) != 1:
        raise QadtrError(f"the checkpoints were trained on different datasets {sorted(datasets)}; "
                         "evaluate one at a time")
    data = datasets.pop()
    train, test = load_split(data, "train", data_dir), load_split(data, "test", data_dir)
    idx = subset_indices(len(test.labels), budget.eval_images, seed=1)
    images, labels = test.images[idx], test.labels[idx]
    maker = PatchMaker(out / "patches", budget, train, test, idx)
    surrogate_lp: dict = {}

    def emit(row: dict) -> None:
        rows.append(row)
        done.add(row_key(row))
        write_json(result, {"argv": sys.argv, "budget": config_to_dict(budget), "rows": rows})  # nothing is lost
        a = row["asr"] if "asr" in row else row["accuracy"]
        print(f"{row['checkpoint']}:{row['evaluated_on']:7s} {row['category']:18s} {row['attack']:9s} "
              f"{row['source']:28s} {'ASR' if 'asr' in row else 'acc'} {100 * a['value']:6.2f}% (n={a['n']})",
              flush=True)

    for name, model, ck in models:
        prof, have = profile(ck, budget), bits_of(model)
        recipe = ck.train.recipe if ck.train is not None else ""
        nets = [(bits_name((w, a)), (w, a), deploy_net(model, w, a)) for w, a in have] or [("float", None, model)]
        if random_inference(ck):
            nets.append(("random", None, RandomPrecision(model, seed=budget.eval_seed)))
        if scope:
            nets = [n for n in nets if n[0] in scope]
            if not nets:
                raise QadtrError(f"{name} has none of --bits {','.join(scope)} (it has "
                                 f"{', '.join(bits_names((b,)) for b in have) or 'float'}); pick among those")
        own_nets = {bits: net for _, bits, net in nets if bits is not None}
        other_size = budget.other_size if abs(budget.other_size - prof.size) > 1e-9 else 0.05

        def base(key: str, category: str, attack: str, size, source: str, eps=None) -> dict:
            return {"checkpoint": name, "recipe": recipe, "evaluated_on": key, "category": category, "attack": attack,
                    "size": size, "source": source, "eps255": eps, "target": budget.target}

        for key, bits, net in nets:
            clean = predict(net, images)
            row = base(key, "clean", "none", None, "-")
            if row_key(row) not in done:
                emit({**row, "accuracy": robust_accuracy(clean, labels).to_dict()})
            specs = []  # (category, attack, size, source bits, source label, maker kwargs)
            if bits is not None and "seen" in kinds:
                specs.append(("seen" if prof.trained else "white-box", prof.attack, prof.size, (bits,), {}))
            if bits is not None and "unseen" in kinds:
                specs += [("unseen-attack", OTHER_KIND[prof.attack], prof.size, (bits,), {}),
                          ("unseen-size", prof.attack, other_size, (bits,), {}),
                          ("unseen-location", "lavan", LAVAN_SIZE, (bits,), {})]
            if "unseen" in kinds:
                specs += [("unseen-source-bits", prof.attack, prof.size, (b,), {}) for b in have
                          if b != bits and (not scope or bits_names((b,)) in scope)]
            if "adaptive" in kinds:
                if have:
                    specs.append(("adaptive", "aqapa", prof.size, tuple(have),
                                  {"temperature": budget.adaptive_temperature}))
                else:
                    specs.append(("adaptive", "universal", prof.size, (), {}))
                if key == "random":
                    specs.append(("adaptive-eot", "aqapa", prof.size, tuple(have), {"temperature": EOT_TEMPERATURE}))
            for category, attack, size, src_bits, kw in specs:
                source = f"self:{bits_names(src_bits)}"
                row = base(key, category, attack, size, source)
                if row_key(row) in done:
                    continue
                patch = maker.get(name, model, ck, attack, size, src_bits, net=own_nets.get(src_bits[0]) if
                                  len(src_bits) == 1 else None, **kw)
                asr = evaluate_patch(net, patch, test.images[patch.indices] if patch.per_image else images,
                                     labels, seed=budget.eval_seed, clean_pred=clean)
                emit({**row, "seen": category == "seen", "asr": asr.rate.to_dict(), "definition": asr.definition})
            if "transfer" in kinds:
                for attack in ("universal", "location"):
                    row = base(key, "transfer", attack, prof.size, f"{s_name}:{bits_names(s_bits)}")
                    if row_key(row) in done:
                        continue
                    patch = maker.get(f"surrogate-{_name(surrogate)}", s_model, s_ck, attack, prof.size, s_bits,
                                      net=s_net)
                    asr = evaluate_patch(net, patch, images, labels, seed=budget.eval_seed, clean_pred=clean)
                    emit({**row, "seen": False, "asr": asr.rate.to_dict(), "definition": asr.definition})
            for kind in [k for k in ("fgsm", "pgd") if k in kinds]:
                for eps in budget.eps255:
                    jobs = [(kind, "self", net)] + ([("pgd-transfer", s_name, s_net)] if kind == "pgd" else [])
                    for category, source, src in jobs:
                        row = base(key, category, kind, None, source, eps)
                        if row_key(row) in done:
                            continue
                        if source == "self":
                            adv = lp_examples(src, images, labels, kind=kind, eps255=eps, steps=budget.pgd_steps,
                                              seed=budget.seed)
                        else:
                            if eps not in surrogate_lp:
                                surrogate_lp[eps] = lp_examples(s_net, images, labels, kind=kind, eps255=eps,
                                                                steps=budget.pgd_steps, seed=budget.seed)
                            adv = surrogate_lp[eps]
                        pred = predict(net, adv)
                        asr = attack_success(clean, pred, labels)
                        emit({**row, "seen": False, "asr": asr.rate.to_dict(), "definition": asr.definition,
                              "robust_acc": robust_accuracy(pred, labels).to_dict()})
    return rows


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
        rows = run(args.checkpoints, args.surrogate, budget, out, kinds=kinds, data_dir=args.data_dir,
                   scope=parse_scope(args.bits))
        (out / "defense.md").write_text(markdown(rows, budget))
        print(f"wrote {out / 'defense.json'} and defense.md ({len(rows)} rows)")

    return run_cli("eval.defense", body, argv)


if __name__ == "__main__":
    sys.exit(main())
