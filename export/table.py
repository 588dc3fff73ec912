"""Every exporter on every checkpoint of a zoo, and one table of their parity figures.

    python -m export.table --zoo zoo --data-dir ../shared/data --out export/results

For each checkpoint (zoo/*/model.pt) and each of its bit widths it runs every exporter of the registry
(export.registry: `export.onnx`, fp32 for a float checkpoint, `export.trt`, `export.tflite`) exactly as
their CLIs do, proof included, and collects what each proof measured against the Brevitas fake-quant
(deploy) network on the same test images:
    int act off   integer activations that differ, end to end / per layer (the layer fed the runtime's
                  own upstream integers), over all compared elements
    argmax        top-1 agreement over non-tie images (export._compare.TIE_RULE), ties counted apart
    max |dlogit|  largest logit difference in LSBs of the logit's accumulator grid
    size          artifact bytes, and their ratio to the checkpoint's fp32 ONNX
A request an exporter cannot express (e.g. a float checkpoint to TFLite) is recorded with its
one-line reason instead of figures. Writes OUT/table.json (rows + the command), OUT/table.md and the
artifacts under OUT/artifacts/ (not committed: rebuild them with this command). Resumable: a cell
already in table.json for the same checkpoint sha256 is not redone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from export._common import ProofFailed
from export.registry import EXPORTERS, export, get_exporter, load
from qadtr._errors import QadtrError
from qadtr.progress import progress
from qadtr.bits import bits_name


def _cells(zoo: Path) -> list[tuple[str, Path, int | None, str]]:
    """(checkpoint name, model.pt, bits or None for float, exporter) for every zoo entry and registered exporter."""
    from qadtr.checkpoint import read_checkpoint_info

    models = sorted(zoo.glob("*/model.pt"))
    if not models:
        raise QadtrError(f"no checkpoints (*/model.pt) under {zoo}; train the zoo with `python -m qadtr.zoo --out {zoo}`")
    out = []
    for pt in models:
        info = read_checkpoint_info(pt)
        if not info.model.is_quant:
            out += [(pt.parent.name, pt, None, e) for e in EXPORTERS]
            continue
        for w, a in info.model.bits:
            out += [(pt.parent.name, pt, w, e) for e in EXPORTERS] if w == a else []
    return out


def architecture(pt: Path) -> str:
    """'arch/classes' of a checkpoint: the rows that share it share one fp32 size baseline."""
    from qadtr.checkpoint import read_checkpoint_info

    model = read_checkpoint_info(pt).model
    return f"{model.arch}/{model.num_classes}"


def export_cell(name: str, pt: Path, bits: int | None, *, exporter: str, out: Path, data_dir: str | None,
                limit: int) -> dict:
    """Run one exporter; returns the row (figures, or the reason it was refused or failed)."""
    info = get_exporter(exporter)
    row = {"checkpoint": name, "bits": bits_name(None if bits is None else (bits, bits)), "exporter": exporter,
           "arch": architecture(pt)}
    stem = out / "artifacts" / name / f"{exporter}_{row['bits']}"
    try:
        if bits is None and info.fp32_refusal:
            raise QadtrError(info.fp32_refusal)
        target = stem if info.out == "folder" else stem.with_suffix(info.suffix)
        try:
            record = export(exporter, pt, target, bits=bits, data_dir=data_dir, limit=limit,
                            **({"float_model": True} if bits is None else {})).record
        except ProofFailed as e:  # the rejected artifact's record holds the figures that failed: keep them
            row["error"] = str(e)
            record = e.result.record
        row.update(bytes=record.artifact_bytes, **load(info.table_row)(record))
    except QadtrError as e:
        row["error"] = str(e)
    return row


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def table_md(rows: list[dict]) -> str:
    # the size baseline of each architecture: its float checkpoint's fp32 ONNX (none: sizes without a ratio)
    fp32 = {r.get("arch"): r.get("bytes") for r in rows if r["exporter"] == "onnx" and r["bits"] == "float"}
    lines = ["| checkpoint | bits | exporter | runtime (kernels) | int activations off: end to end / per layer "
             "(of elements) | argmax agree (ties) | max \\|dlogit\\| (LSB) | size KiB (x fp32) | passed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['checkpoint']} | {r['bits']} | {r['exporter']} |"
        if "figures" not in r:
            lines.append(f"{head} refused | {r['error']} | | | | |")
            continue
        base = fp32.get(r.get("arch"))
        size = f"{r['bytes'] / 1024:.0f}" + (f" ({r['bytes'] / base:.2f}x)" if base else "")
        for runtime, f in r["figures"].items():
            per_layer = "n/a" if f["int_off_per_layer"] is None else f"{f['int_off_per_layer']}"
            end = "n/a" if f["int_off_end_to_end"] is None else f"{f['int_off_end_to_end']}"  # None: not reproduced
            ints = "n/a (fp32)" if not f["int_elements"] else f"{end} / {per_layer} (of {f['int_elements']})"
            lines.append(f"{head} {runtime} | {ints} | {_pct(f['argmax_agree'])} ({f['ties']}) | "
                         f"{f['max_dlogit_lsb']:.3g} | {size} | {'yes' if f['passed'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m export.table", description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="zoo", help="folder of checkpoints (<name>/model.pt)")
    p.add_argument("--out", required=True, help="results folder (table.json, table.md, artifacts/)")
    p.add_argument("--data-dir", default=None, help="dataset folder: parity on real test images (default: $QADTR_DATA)")
    p.add_argument("--limit", type=int, default=500, help="parity images per export")
    p.add_argument("--only", default="", help="comma-separated checkpoint names to (re)do, default all")
    args = p.parse_args(argv)

    def body() -> None:
        import os

        from qadtr._config import read_json, sha256_file, write_json

        data_dir = args.data_dir or os.environ.get("QADTR_DATA")  # None: the exporters prove on random images
        out = Path(args.out)
        path = out / "table.json"
        rows = read_json(path)["rows"] if path.is_file() else []
        for r in rows:  # rows written before the column: their checkpoint says it
            pt = Path(args.zoo) / r["checkpoint"] / "model.pt"
            if "arch" not in r and pt.is_file():
                r["arch"] = architecture(pt)
        only = {s for s in args.only.split(",") if s}
        cells = [c for c in _cells(Path(args.zoo)) if not only or c[0] in only]
        for name, pt, bits, exporter in progress(cells, desc="export", unit="cell"):
            sha = sha256_file(pt)
            key = (name, bits_name(None if bits is None else (bits, bits)), exporter)
            version = get_exporter(exporter).version
            if any((r["checkpoint"], r["bits"], r["exporter"]) == key and r.get("source_sha256") == sha
                   and r.get("exporter_version") == version for r in rows):
                continue  # the same source through the same exporter version: its row stands
            row = {**export_cell(name, pt, bits, exporter=exporter, out=out, data_dir=data_dir, limit=args.limit),
                   "source_sha256": sha, "exporter_version": version,
                   "parity_images": args.limit,
                   "image_source": "test split" if data_dir else "random images (no --data-dir)"}
            rows = [r for r in rows if (r["checkpoint"], r["bits"], r["exporter"]) != key] + [row]
            print(f"{name} {key[1]} {exporter}: {row.get('error') or 'ok'}", flush=True)
            write_json(path, {"argv": sys.argv, "rows": rows})  # after every cell: nothing is lost
        rows.sort(key=lambda r: (r["checkpoint"], r["bits"], list(EXPORTERS).index(r["exporter"])))
        (out / "table.md").write_text(table_md(rows))
        print(table_md(rows))
        print(f"wrote {path} and {out / 'table.md'}")

    return run_cli("export.table", body, argv)


if __name__ == "__main__":
    sys.exit(main())
