"""A scene replay: test images of one class seen through a camera, with and without each sticker.

`make_scene_replay(files, dataset="gtsrb", source=14, camera=CameraConfig(), view_seed=1, out=DIR)` writes an
ordinary replay file (eval.replay's format, so every runtime, the store, eval.compare and the report take it
unchanged) whose rows are:
    clean block   camera(image_i, view_i) for every test image i of class `source` (the "before")
    patch block k camera(rebuild(image_i, sticker_k, placement_i), view_i) (the "after")
View i (rotation, scale, shift, perspective, brightness, contrast, blur, JPEG: `qadtr.attacks.camera`) is drawn
once with `view_seed` and shared by the clean row and every patched row of image i, so before and after
differ by the sticker only; the sticker sits where its own EOT says (the scenario: fixed on the sign's
centre), so the camera moves, tilts, blurs and compresses it with the sign, as a real one would.
The replay's `scene` field records source, camera and seed; its key covers them with the data and patches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from eval.replay import FORMAT_VERSION, ReplayInfo, arrays_sha256, is_current, pack, patch_refs, write_replay
from qadtr._config import config_to_dict, sha256_file
from qadtr._errors import QadtrError

_CHUNK = 500  # images per camera call: its index maps and JPEG round trips stay a few MB


def _views_through(images: np.ndarray, views, *, patch=None, placement=None) -> np.ndarray:
    """(n, H, W, 3) uint8: `images` with `patch` pasted (when given), seen through `views`, in chunks."""
    from qadtr.attacks import rebuild
    from qadtr.attacks.camera import camera_uint8

    out = []
    for i in range(0, len(images), _CHUNK):
        part = images[i:i + _CHUNK]
        if patch is not None:
            part = rebuild(part, patch, placement[i:i + _CHUNK])
        out.append(camera_uint8(part, views[i:i + _CHUNK]))
    return np.concatenate(out)


def make_scene_replay(files: list[Path], *, dataset: str, data_dir: str | Path | None, source: int, camera,
                      view_seed: int, out: str | Path) -> Path:
    """Build (or reuse) the scene replay of the universal patch `files` on `dataset`'s test images of class
    `source`; returns the .npz path (named after its key in folder `out`).

    Raises:
        QadtrError: no test image of `source`, a per-image patch, or a patch made on another dataset.
    """
    import qadtr.data
    from qadtr.attacks import eval_placements, load_patch
    from qadtr.attacks.camera import sample_views

    loaded = [load_patch(f) for f in files]
    for f, p in zip(files, loaded, strict=True):
        if p.per_image or p.data.split("/")[0] not in ("", dataset):
            raise QadtrError(f"{f.name}: a scene replays universal patches made on {dataset}; this one is "
                             f"{'per-image' if p.per_image else f'made on {p.data}'}: re-make it with --remake")
    test = qadtr.data.load_split(dataset, "test", data_dir)
    idx = np.flatnonzero(test.labels == source).astype(np.int64)  # (n,) the scene's signs
    if not len(idx):
        raise QadtrError(f"{dataset}/test has no image of class {source}; pick a class it has")
    shas = [sha256_file(f) for f in files]
    data_sha = arrays_sha256(test.images, test.labels)
    scene = json.dumps({"source": int(source), "camera": config_to_dict(camera), "view_seed": int(view_seed)},
                       sort_keys=True)
    key = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "dataset": dataset, "data": data_sha, "scene": scene,
                                     "patches": shas}).encode()).hexdigest()
    path = Path(out) / f"replay_{dataset}_scene_{key[:16]}.npz"
    n, hw = len(idx), tuple(test.images.shape[1:3])
    plan = ReplayInfo(key=key, npz_sha256="", dataset=dataset, data_sha256=data_sha, eval_subset=n,
                      eval_seed=int(view_seed), n_subset=n, n_clean=n, samples=n * (1 + len(files)), hw=hw,
                      num_classes=len(test.classes), patches=patch_refs(files, shas, loaded, rows=[n] * len(files),
                                                                        first=n), scene=scene)
    if is_current(path, plan):
        return path
    views = sample_views(n, camera, np.random.default_rng(view_seed), hw=hw)
    blocks = [(idx, _views_through(test.images[idx], views), -1)]
    for k, p in enumerate(loaded):
        placement = eval_placements(p, n, hw, seed=view_seed)
        blocks.append((idx, _views_through(test.images[idx], views, patch=p.values, placement=placement), k))
    return write_replay(path, plan, pack(blocks, test.labels))
