"""GTSRB (Stallkamp et al. 2012), German traffic signs: 39,209 train + 12,630 test images, 43 classes.

Sources, searched in `data_dir` in this order (all in the official layout
`GTSRB/Final_Training/Images/000NN/*.ppm` + `GT-000NN.csv`, `GTSRB/Final_Test/Images/*.ppm` +
`GT-final_test.csv`, `;`-separated with `Filename` first and `ClassId` last):
  1. an extracted `GTSRB/` directory (the test labels `GT-final_test.csv` may sit in `GTSRB/Final_Test/`,
     in `data_dir`, or in `GTSRB_Final_Test_GT.zip`);
  2. `gtsrb-32.tar.xz` (a copy with every image already 32x32);
  3. the official zips `GTSRB_Final_Training_Images.zip`, `GTSRB_Final_Test_Images.zip` and
     `GTSRB_Final_Test_GT.zip`, downloaded with `download=True`.
Every image is resized whole to 32x32 (PIL bilinear) unless it already is; the ROI columns are ignored.
Labels are the CSV `ClassId`; class i is folder `000ii`, named by the short names in `CLASSES`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from qadtr._errors import QadtrError
from qadtr.data import _archive
from qadtr.data._archive import Source, decode_rgb, iter_members

# Short names for ClassId 0..42 (the official sign meanings, abbreviated; "3.5t" = vehicles over 3.5 t).
CLASSES = (
    "speed_20", "speed_30", "speed_50", "speed_60", "speed_70", "speed_80", "end_speed_80", "speed_100",
    "speed_120", "no_passing", "no_passing_3.5t", "right_of_way", "priority_road", "yield", "stop",
    "no_vehicles", "no_3.5t", "no_entry", "general_caution", "curve_left", "curve_right", "double_curve",
    "bumpy_road", "slippery_road", "narrows_right", "road_work", "traffic_signals", "pedestrians",
    "children", "bicycles", "ice_snow", "wild_animals", "end_limits", "turn_right", "turn_left",
    "ahead_only", "straight_or_right", "straight_or_left", "keep_right", "keep_left", "roundabout",
    "end_no_passing", "end_no_passing_3.5t",
)
# Per-channel mean/std of the train split after the 32x32 resize, pixel/255 (measured on gtsrb-32.tar.xz).
MEAN = (0.3398, 0.3117, 0.3210)
STD = (0.2755, 0.2647, 0.2712)

# The official archive (the address torchvision's GTSRB uses). The md5s of the test zips are
# torchvision's; the training zip's is the one published by several independent GTSRB loaders.
BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
ZIP_MD5 = {
    "GTSRB_Final_Training_Images.zip": "f33fd80ac59bff73c82d25ab499e03a3",
    "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
    "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
TAR = "gtsrb-32.tar.xz"
TEST_CSV = "GT-final_test.csv"  # the labelled one; Final_Test/Images/GT-final_test.test.csv has no ClassId

_ZIPS = {
    "train": ("GTSRB_Final_Training_Images.zip",),
    "test": ("GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip"),
}
_TREE = {"train": "Final_Training", "test": "Final_Test"}


def find_source(data_dir: Path, split: str, *, download: bool) -> Source:
    """The first GTSRB source for `split` present in `data_dir` (see the module docstring).

    Raises:
        QadtrError: none is present and `download` is False, test labels are missing, or a download fails.
    """
    tree = data_dir / "GTSRB" / _TREE[split]
    if tree.is_dir():
        return Source("tree", (tree, *_test_labels(data_dir, tree)) if split == "test" else (tree,))
    if (data_dir / TAR).is_file():
        return Source("tar", (data_dir / TAR,))
    zips = [data_dir / name for name in _ZIPS[split]]
    if download:
        for path in zips:
            if not path.is_file():  # a partial set is completed, an existing file is kept
                _archive.download(BASE_URL + path.name, path, md5=ZIP_MD5[path.name])
    if all(path.is_file() for path in zips):
        return Source("zips", tuple(zips))
    if any(path.is_file() for path in zips):  # test: one of the two zips
        have = next(path.name for path in zips if path.is_file())
        missing = next(path.name for path in zips if not path.is_file())
        raise QadtrError(f"{data_dir} has {have} but not {missing}; put it there, "
                         f"or pass --download to fetch it from {BASE_URL}")
    raise QadtrError(f"no GTSRB {split} split in {data_dir} (looked for GTSRB/{_TREE[split]}/, {TAR}, "
                     f"{', '.join(_ZIPS[split])}); put one of these there, or pass --download to fetch the "
                     f"official archives from {BASE_URL}")


def _test_labels(data_dir: Path, tree: Path) -> tuple[Path, ...]:
    """Where an extracted test tree's labels are: inside it, beside it, or in the official GT zip."""
    for path in (tree / TEST_CSV, data_dir / TEST_CSV, data_dir / "GTSRB_Final_Test_GT.zip"):
        if path.is_file():
            return () if path.parent == tree else (path,)
    raise QadtrError(f"{tree} has no {TEST_CSV} (the test labels); put it in {tree} or {data_dir}, "
                     f"or put GTSRB_Final_Test_GT.zip in {data_dir}")


def read(source: Source, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode one split: images (N, 32, 32, 3) uint8 RGB, labels (N,) int64, class names.

    Train is ordered by class folder then file name, test by file name.

    Raises:
        QadtrError: a CSV or an image listed in one is missing, or a member is unreadable.
    """
    images = {}  # (folder, file name) -> (32, 32, 3) image; folder is "" for test
    tables = {}  # folder -> [(file name, ClassId)] from its csv
    for path in source.paths:
        for name, data in iter_members(path, _want_train if split == "train" else _want_test):
            parts = name.split("/")
            folder = parts[-2] if split == "train" else ""
            if parts[-1].endswith(".csv"):
                tables[folder] = _parse_csv(name, data, source)
            else:
                images[folder, parts[-1]] = _to_32x32(decode_rgb(name, data, source))
    if split == "train":
        expected = {f"{c:05d}": f"Final_Training/Images/{c:05d}/GT-{c:05d}.csv" for c in range(len(CLASSES))}
        layout = "one class folder with its GT-000NN.csv for each of 00000..00042"
    else:
        expected = {"": TEST_CSV}
        layout = f"Final_Test/Images/*.ppm and the labelled {TEST_CSV} (from GTSRB_Final_Test_GT.zip)"
    keys, labels = [], []
    for folder, csv_name in sorted(expected.items()):
        if folder not in tables:
            raise QadtrError(f"{source}: member {csv_name} is missing; expected {layout} "
                             "(re-download or re-extract the dataset)")
        for filename, class_id in sorted(tables[folder]):
            if (folder, filename) not in images:
                raise QadtrError(f"{source}: member {_member(folder, filename)} (listed in {csv_name}) is "
                                 "missing; re-download or re-extract the dataset")
            keys.append((folder, filename))
            labels.append(class_id)
    unlisted = sorted(set(images) - set(keys))
    if unlisted:
        raise QadtrError(f"{source}: {len(unlisted)} image(s) have no row in their GT csv (first: member "
                         f"{_member(*unlisted[0])}); re-download or re-extract the dataset")
    return np.stack([images[k] for k in keys]), np.array(labels, dtype=np.int64), CLASSES


def _member(folder: str, filename: str) -> str:
    return f"Final_Training/Images/{folder}/{filename}" if folder else f"Final_Test/Images/{filename}"


def _want_train(name: str) -> bool:  # .../Final_Training/Images/000NN/(*.ppm | GT-000NN.csv)
    parts = name.split("/")
    return (len(parts) >= 4 and parts[-4:-2] == ["Final_Training", "Images"]
            and (parts[-1].endswith(".ppm") or parts[-1] == f"GT-{parts[-2]}.csv"))


def _want_test(name: str) -> bool:  # .../Final_Test/Images/*.ppm and GT-final_test.csv anywhere
    parts = name.split("/")
    return parts[-1] == TEST_CSV or (len(parts) >= 3 and parts[-3:-1] == ["Final_Test", "Images"]
                                     and parts[-1].endswith(".ppm"))


def _to_32x32(im: Image.Image) -> np.ndarray:
    if im.size != (32, 32):
        im = im.resize((32, 32), Image.BILINEAR)  # the whole photo, not the ROI
    return np.asarray(im)  # (32, 32, 3) uint8


def _parse_csv(name: str, data: bytes, source: Source) -> list[tuple[str, int]]:
    """`Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId` rows -> [(file name, ClassId)]."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise QadtrError(f"{source}: member {name} is not a text csv ({e}); re-download it") from None
    rows = [row for row in csv.reader(text.splitlines(), delimiter=";") if row]
    header = rows[0] if rows else []
    if "Filename" not in header or "ClassId" not in header:
        raise QadtrError(f"{source}: member {name} has columns {header}; expected the labelled GT csv "
                         "(Filename;...;ClassId), re-download it")
    i_file, i_class = header.index("Filename"), header.index("ClassId")
    table = []
    for row in rows[1:]:
        try:
            class_id = int(row[i_class])
        except (IndexError, ValueError):
            raise QadtrError(f"{source}: member {name} has a bad row {';'.join(row)!r}; expected a "
                             f"ClassId in 0..{len(CLASSES) - 1} (re-download it)") from None
        if not 0 <= class_id < len(CLASSES):
            raise QadtrError(f"{source}: member {name} has ClassId {class_id}; expected "
                             f"0..{len(CLASSES) - 1} (re-download it)")
        table.append((row[i_file], class_id))
    return table
