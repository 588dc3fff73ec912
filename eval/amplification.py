"""Error amplification (Lin et al. 2019): how much a small input perturbation grows, layer by layer.

    python -m eval.amplification --checkpoints zoo/resnet20_float zoo/resnet20_w4a4 runs/dq \\
        --eps 1,2,4,8 --images 500 --data-dir ../shared/data --out results/amplification

For every network (a float model, or each bit width of a quantized checkpoint through `deploy_net`,
the function the integer runtimes compute) and every perturbation delta of L-inf size eps/255, it
records at the output f_l of the stem, of every residual block and of the classifier:

    ratio_l    = mean over images of ||f_l(x + delta) - f_l(x)||_2 / ||delta||_2
    relative_l = mean over images of (||f_l(x + delta) - f_l(x)|| / ||f_l(x)||) / (||delta|| / ||x||)

`ratio` is the brief's gain (input units to feature units; compare it between networks of the same
architecture); `relative` is scale-free (BatchNorm and quantizer scales cancel): > 1 means the layer
amplifies the relative error. Perturbations: `random` (+-eps per pixel, random signs) and `fgsm`
(eps * sign of the input gradient of the cross-entropy, white-box on that network). eps is a whole
number of uint8 levels and x + delta is clipped to [0, 1], so the perturbed input is a valid image;
||delta|| is measured after clipping. Writes OUT/amplification.json and OUT/amplification.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from qadtr.bits import bits_name

KINDS = ("random", "fgsm")


def probe_layers(net: nn.Module) -> list[str]:
    """Names of the modules whose outputs are measured: stem ReLU, each residual block, classifier."""
    names = dict(net.named_modules())
    blocks = sorted((n for n in names if n.count(".") == 2 and n.startswith("layers.")),
                    key=lambda n: tuple(int(p) for p in n.split(".")[1:]))
    return [n for n in ("relu", *blocks, "linear") if n in names]


def layer_outputs(net: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """{layer: (B, features) flattened float output} for one forward pass of `x` (B, 3, H, W)."""
    from qadtr.models._layers import value

    modules, out = dict(net.named_modules()), {}
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, value(o).flatten(1)))
             for n in layers]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def perturbation(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps255: int, kind: str,
                 g: torch.Generator) -> torch.Tensor:
    """delta (B, 3, H, W) with x + delta in [0, 1] on the uint8 grid."""
    if kind == "random":
        sign = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1  # (B, 3, H, W) of +-1
    else:
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(xg), y), xg)
        sign = grad.sign()
    return (x + sign * eps255 / 255.0).clamp(0.0, 1.0) - x


@torch.no_grad()
def _ratios(clean: dict, noisy: dict, x: torch.Tensor, *, delta: torch.Tensor) -> dict[str, tuple[float, float]]:
    d_in = delta.flatten(1).norm(dim=1)  # (B,)
    rel_in = d_in / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    keep = d_in > 0  # an all-clipped delta carries no information
    out = {}
    for name, f in clean.items():
        d_out = (noisy[name] - f).norm(dim=1)  # (B,)
        rel_out = d_out / f.norm(dim=1).clamp_min(1e-12)
        out[name] = ((d_out / d_in.clamp_min(1e-12))[keep].mean().item(), (rel_out / rel_in)[keep].mean().item())
    return out


def amplification(net: nn.Module, images: np.ndarray, labels: np.ndarray, *, eps255: int, kind: str, seed: int = 0,
                  batch_size: int = 100) -> dict[str, dict[str, float]]:
    """{layer: {"ratio", "relative"}} averaged over (N, H, W, 3) uint8 `images` (see the module docstring)."""
    from qadtr.predict import to_tensor

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}")
    net.eval()
    layers = probe_layers(net)
    g = torch.Generator().manual_seed(seed)
    sums = {n: np.zeros(2) for n in layers}
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i:i + batch_size])  # (B, 3, H, W)
        y = torch.from_numpy(labels[i:i + batch_size]).long()
        delta = perturbation(net, x, y, eps255=eps255, kind=kind, g=g)
        with torch.no_grad():
            clean, noisy = layer_outputs(net, x, layers), layer_outputs(net, x + delta, layers)
        for name, (r, rel) in _ratios(clean, noisy, x, delta=delta).items():
            sums[name] += np.array([r, rel]) * len(x)
    return {n: {"ratio": float(s[0] / len(images)), "relative": float(s[1] / len(images))} for n, s in sums.items()}


def run(checkpoints: list[str], *, eps: list[int], kinds: list[str], n_images: int, data_dir: str | None,
        seed: int = 0) -> list[dict]:
    """One row per (checkpoint, bit width, kind, eps) with the per-layer figures."""
    from qadtr.data import subset_indices
    from qadtr.checkpoint import load_checkpoint
    from qadtr.data import load_split
    from qadtr.models import bits_of, deploy_net

    rows, test = [], None
    for path in checkpoints:
        model, ck = load_checkpoint(path)
        if test is None:
            test = load_split(ck.train.data if ck.train is not None else "cifar10", "test", data_dir)
            idx = subset_indices(len(test.labels), n_images, seed=1)
        name = Path(path).parent.name if Path(path).suffix == ".pt" else Path(path).name
        nets = [("float", model)] if not bits_of(model) else [(bits_name((w, a)), deploy_net(model, w, a))
                                                             for w, a in bits_of(model)]
        for key, net in nets:
            for kind in kinds:
                for e in eps:
                    layers = amplification(net, test.images[idx], test.labels[idx], eps255=e, kind=kind, seed=seed)
                    rows.append({"checkpoint": name, "recipe": ck.train.recipe if ck.train else "", "bits": key,
                                 "kind": kind, "eps255": e, "images": len(idx), "layers": layers})
                    print(f"{name}:{key} {kind} eps {e}/255: " + " ".join(
                        f"{n} {v['ratio']:.2f}" for n, v in layers.items()), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """Table of `ratio` (and `relative` in brackets) at the stem, each stage's last block and the logits."""
    if not rows:
        return ""
    names = list(rows[0]["layers"])
    stage = [n.split(".")[1] if n.startswith("layers.") else None for n in names]  # "layers.2.1" -> "2"
    stage_ends = [n for i, n in enumerate(names) if stage[i] is not None and stage[i] != (stage + [None])[i + 1]]
    cols = [n for n in names if n in ("relu", "linear") or n in stage_ends]
    lines = ["| network | delta | eps | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r['layers'][c]['ratio']:.2f} ({r['layers'][c]['relative']:.2f})" if c in r["layers"] else "-"
                 for c in cols]
        lines.append(f"| {r['checkpoint']}:{r['bits']} | {r['kind']} | {r['eps255']}/255 | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nratio ||df|| / ||delta|| (relative gain in brackets); see eval/amplification.py\n"


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli
    from qadtr._errors import QadtrError

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.amplification", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="float, quantized and DQ checkpoints")
    p.add_argument("--eps", default="1,2,4,8", help="perturbation sizes in uint8 levels (x/255)")
    p.add_argument("--kinds", default="random,fgsm", help=f"perturbations: {','.join(KINDS)}")
    p.add_argument("--images", type=int, default=500, help="test images (a fixed pseudo-random subset; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random perturbations")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--out", required=True, help="results folder")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._config import write_json

        check_writable(args.out, "folder")  # before the measurements: they were lost to a bad --out
        try:
            eps = [int(e) for e in args.eps.split(",")]
        except ValueError:
            raise QadtrError(f"--eps {args.eps!r}: whole uint8 levels, e.g. 1,2,4,8") from None
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        if min(eps) < 1 or not kinds or set(kinds) - set(KINDS):
            raise QadtrError(f"--eps must be >= 1 and --kinds from {KINDS}")
        rows = run(args.checkpoints, eps=eps, kinds=kinds, n_images=args.images, data_dir=args.data_dir,
                   seed=args.seed)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "amplification.json", {"argv": sys.argv, "rows": rows})
        (out / "amplification.md").write_text(markdown(rows))
        print(f"wrote {out / 'amplification.json'} and amplification.md ({len(rows)} rows)")

    return run_cli("eval.amplification", body, argv)


if __name__ == "__main__":
    sys.exit(main())
