"""Every exporter on every checkpoint of a zoo, and one table of their parity figures.

    python -m export.table --zoo zoo --data-dir ../shared/data --out export/results

For each checkpoint (zoo/*/model.pt) and each of its bit widths it runs `export.onnx` (fp32 for a float
checkpoint), `export.trt` and `export.tflite` exactly as their CLIs do, proof included, and collects
what each proof measured against the Brevitas fake-quant (deploy) network on the same test images:
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

import argparse
import sys
from pathlib import Path

from devices.runtimes import record_path
from qadtr._errors import QadtrError

EXPORTERS = ("onnx", "trt", "tflite")


def _cells(zoo: Path) -> list[tuple[str, Path, int | None, str]]:
    """(checkpoint name, model.pt, bits or None for float, exporter) for every zoo entry."""
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


def _onnx_figures(parity: dict) -> dict:
    logits = parity["logits"]
    return {"int_elements": parity["int_elements"], "int_off_end_to_end": parity["int_mismatches_fused"],
            "int_off_per_layer": parity["int_mismatches_local"], "int_max_step": parity["int_max_step"],
            "argmax_agree": logits["argmax_agree"], "ties": logits["ties"], "n": logits["n"],
            "max_dlogit_lsb": logits["max_abs_lsb"], "passed": parity["passed"], "exact": parity["exact"]}


def export_cell(name: str, pt: Path, bits: int | None, exporter: str, out: Path, data_dir: str | None,
                limit: int) -> dict:
    """Run one exporter; returns the row (figures, or the reason it was refused or failed)."""
    from qadtr._config import read_json

    row = {"checkpoint": name, "bits": "float" if bits is None else f"w{bits}a{bits}", "exporter": exporter}
    stem = out / "artifacts" / name / f"{exporter}_{row['bits']}"
    try:
        if exporter == "onnx":
            from export.onnx import export_onnx

            path = stem.with_suffix(".onnx")
            try:
                r = export_onnx(pt, path, bits=bits, data_dir=data_dir, limit=limit, float_model=bits is None)
                info = r.info
            except QadtrError as e:  # failed parity still writes the artifact and its JSON: keep the figures
                if not record_path(path).is_file():
                    raise
                row["error"] = str(e)
                info = read_json(record_path(path))["_data"]
                info = argparse.Namespace(**info)
            row.update(runtime="onnxruntime CPU, ORT_ENABLE_ALL", bytes=info.artifact_bytes,
                       integer_ops=info.fusion.get("qlinearconv", 0), float_convs=info.fusion.get("float_conv", 0),
                       figures={"onnxrt": _onnx_figures(info.parity)})
        elif exporter == "trt":
            if bits is None:
                raise QadtrError("a float checkpoint has no INT8 TensorRT form here; use export.onnx --float")
            from export.trt import export_trt

            r, check = export_trt(pt, stem, bits=bits, data_dir=data_dir, limit=limit)
            row.update(runtime="TensorRT-bound ONNX, parity under onnxruntime CPU", bytes=r.info.artifact_bytes,
                       integer_ops=r.info.fusion.get("qlinearconv", 0), float_convs=r.info.fusion.get("float_conv", 0),
                       offline_check=check.get("tool") if check.get("built") else None,
                       uint8_as_float=len(r.info.extra.get("uint8_as_float", [])),
                       figures={"onnxrt": _onnx_figures(r.info.parity)})
        else:
            if bits is None:
                raise QadtrError("the TFLite exporter writes full-integer models; export a quantized checkpoint")
            from export.tflite import export_tflite

            rec = export_tflite(pt, stem.with_suffix(".tflite"), bits=bits, data_dir=data_dir, n_check=limit)
            figures = {}
            for kernels, p in rec.parity.items():
                lg = p["logits"]
                figures[f"litert-{kernels}"] = {
                    "int_elements": p["act_elements"], "int_off_end_to_end": p["act_mismatch"], "int_off_per_layer": None,
                    "int_max_step": p["act_max_step"], "argmax_agree": lg["argmax_agree"], "ties": lg["ties"],
                    "n": lg["n"], "max_dlogit_lsb": lg["max_abs_lsb"], "passed": p["passed"],
                    "exact": p["act_mismatch"] == 0}
            row.update(runtime="LiteRT (XNNPACK and builtin kernels)", bytes=Path(rec.artifact).stat().st_size,
                       figures=figures)
    except QadtrError as e:
        row["error"] = str(e)
    return row


def _exporter_version(exporter: str) -> int:
    """The version of the exporter a row came from: a row of another version is measured again."""
    if exporter == "tflite":
        from export._tflite_graph import EXPORTER_VERSION
    else:  # onnx and trt: export.trt builds on export.onnx's export and proof
        from export.onnx import EXPORTER_VERSION
    return EXPORTER_VERSION


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def table_md(rows: list[dict]) -> str:
    fp32 = {r["checkpoint"]: r.get("bytes") for r in rows if r["exporter"] == "onnx" and r["bits"] == "float"}
    base = next(iter(v for v in fp32.values() if v), None)  # one architecture: the float ONNX is the size baseline
    lines = ["| checkpoint | bits | exporter | runtime (kernels) | int activations off: end to end / per layer "
             "(of elements) | argmax agree (ties) | max \\|dlogit\\| (LSB) | size KiB (x fp32) | passed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['checkpoint']} | {r['bits']} | {r['exporter']} |"
        if "figures" not in r:
            lines.append(f"{head} refused | {r['error']} | | | | |")
            continue
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

        from tqdm import tqdm

        from qadtr._config import read_json, sha256_file, write_json

        data_dir = args.data_dir or os.environ.get("QADTR_DATA")  # None: the exporters prove on random images
        out = Path(args.out)
        path = out / "table.json"
        rows = read_json(path)["rows"] if path.is_file() else []
        only = {s for s in args.only.split(",") if s}
        cells = [c for c in _cells(Path(args.zoo)) if not only or c[0] in only]
        for name, pt, bits, exporter in tqdm(cells, desc="export", disable=not sys.stderr.isatty()):
            sha = sha256_file(pt)
            key = (name, "float" if bits is None else f"w{bits}a{bits}", exporter)
            version = _exporter_version(exporter)
            if any((r["checkpoint"], r["bits"], r["exporter"]) == key and r.get("source_sha256") == sha
                   and r.get("exporter_version") == version for r in rows):
                continue  # the same source through the same exporter version: its row stands
            row = {**export_cell(name, pt, bits, exporter, out, data_dir, args.limit), "source_sha256": sha,
                   "exporter_version": version,
                   "parity_images": args.limit,
                   "image_source": "test split" if data_dir else "random images (no --data-dir)"}
            rows = [r for r in rows if (r["checkpoint"], r["bits"], r["exporter"]) != key] + [row]
            print(f"{name} {key[1]} {exporter}: {row.get('error') or 'ok'}", flush=True)
            write_json(path, {"argv": sys.argv, "rows": rows})  # after every cell: nothing is lost
        rows.sort(key=lambda r: (r["checkpoint"], r["bits"], EXPORTERS.index(r["exporter"])))
        (out / "table.md").write_text(table_md(rows))
        print(table_md(rows))
        print(f"wrote {path} and {out / 'table.md'}")

    return run_cli("export.table", body, argv)


if __name__ == "__main__":
    sys.exit(main())
