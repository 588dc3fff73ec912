"""qadtr.data on tiny synthetic sources built in tmp_path (seconds), plus one real-data check (`-m data`)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qadtr.data
from qadtr import QadtrError
from qadtr.data import DATASETS, Split, _archive, cifar10, gtsrb, load_split, resolve_data_dir

CLASSES = cifar10.CLASSES
REAL_DATA = Path(__file__).parents[2].parent / "shared" / "data"
SHARED_DATA_DEFAULT = qadtr.data.SHARED_DATA  # before any test patches it


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Every test is offline (a download must go through a test's own fake urlopen) and finds no data beside
    the repository."""
    def refuse(url, timeout=None):
        raise AssertionError(f"test tried to open {url}")
    monkeypatch.setattr(_archive, "urlopen", refuse)
    monkeypatch.setattr(qadtr.data, "SHARED_DATA", tmp_path / "no-shared" / "data")
    monkeypatch.delenv("QADTR_DATA", raising=False)
    monkeypatch.delenv("QADTR_CACHE", raising=False)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# ---- synthetic sources -----------------------------------------------------------------------------

def _pixels(label: int, index: int, size=(32, 32)) -> np.ndarray:
    """A (H, W, 3) image whose first pixel encodes (label, index); the rest is a fixed gradient."""
    w, h = size
    im = np.fromfunction(lambda y, x, c: (x * 7 + y * 3 + c * 50) % 256, (h, w, 3)).astype(np.uint8)
    im[0, 0] = (label * 20, index * 40, 123)
    return im


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:" + {".gz": "gz", ".xz": "xz"}[path.suffix]) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _batch(n: int, first_label: int, **override) -> bytes:
    data = np.stack([_pixels((first_label + i) % 10, i).transpose(2, 0, 1).reshape(-1) for i in range(n)])
    d = {b"data": data, b"labels": [(first_label + i) % 10 for i in range(n)], b"batch_label": b"x"}
    d.update(override)
    return pickle.dumps(d, protocol=2)  # bytes keys and protocol 2, like the python-2 originals


def _batch_members(skip: str = "", **override) -> dict[str, bytes]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = {f"cifar-10-batches-py/{b}": _batch(3, i, **override) for i, b in enumerate(names) if b != skip}
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(meta, protocol=2)
    return members


def _folder_members(prefix: str = "", per_class: int = 2, fmt: str = "PNG", skip_class: str = "") -> dict:
    members = {}
    for split in ("train", "test"):
        for label, cls in reversed(list(enumerate(CLASSES))):  # unsorted on purpose: the loader sorts
            for i in reversed(range(per_class)):
                if cls != skip_class:
                    members[f"{prefix}{split}/{cls}/{i:04d}.{fmt.lower()}"] = _encode(_pixels(label, i), fmt)
    return members


def _gtsrb_members(size=(40, 37), per_class: int = 1, n_test: int = 5) -> dict[str, bytes]:
    members = {}
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\r\n"
    for c in range(43):
        folder = f"GTSRB/Final_Training/Images/{c:05d}"
        rows = [header]
        for i in range(per_class):
            members[f"{folder}/{c:05d}_{i:05d}.ppm"] = _encode(_pixels(c % 12, i, size), "PPM")
            rows.append(f"{c:05d}_{i:05d}.ppm;{size[0]};{size[1]};1;1;20;20;{c}\r\n")
        members[f"{folder}/GT-{c:05d}.csv"] = "".join(rows).encode()
    rows = [header]
    for i in range(n_test):
        members[f"GTSRB/Final_Test/Images/{i:05d}.ppm"] = _encode(_pixels(i, 0, size), "PPM")
        rows.append(f"{i:05d}.ppm;{size[0]};{size[1]};1;1;20;20;{40 - i}\r\n")
    members["GTSRB/Final_Test/GT-final_test.csv"] = "".join(rows).encode()
    members["GTSRB/Final_Test/Images/GT-final_test.test.csv"] = b"Filename;Width\r\n00000.ppm;40\r\n"
    return members


def _gtsrb_zips(data_dir: Path, members: dict[str, bytes]) -> None:
    """The official three zips: train tree, test tree (unlabelled csv), labelled csv at the top level."""
    groups = {"GTSRB_Final_Training_Images.zip": lambda n: "Final_Training" in n,
              "GTSRB_Final_Test_Images.zip": lambda n: "Final_Test/Images" in n,
              "GTSRB_Final_Test_GT.zip": lambda n: n.endswith("GT-final_test.csv")}
    data_dir.mkdir(parents=True, exist_ok=True)
    for zip_name, keep in groups.items():
        with zipfile.ZipFile(data_dir / zip_name, "w") as zf:
            for name, data in members.items():
                if keep(name):
                    zf.writestr(name.rsplit("/", 1)[-1] if zip_name.endswith("GT.zip") else name, data)


# ---- CIFAR-10 --------------------------------------------------------------------------------------

def test_cifar_python_batches_tar_and_dir_agree(tmp_path, cache):
    members = _batch_members()
    _write_tar(tmp_path / "a" / "cifar-10-python.tar.gz", members)
    _write_tree(tmp_path / "b", members)
    for split, n in (("train", 15), ("test", 3)):
        a = load_split("cifar10", split, tmp_path / "a", cache_dir=cache)
        b = load_split("cifar10", split, tmp_path / "b", cache_dir=cache)
        assert isinstance(a, Split) and (a.name, a.split) == ("cifar10", split)
        assert a.images.shape == (n, 32, 32, 3) and a.images.dtype == np.uint8
        assert a.labels.shape == (n,) and a.labels.dtype == np.int64
        assert a.classes == CLASSES and a.source.endswith("cifar-10-python.tar.gz")
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    # CHW-flattened rows became HWC images: every image equals the pattern it was built from
    train = load_split("cifar10", "train", tmp_path / "a", cache_dir=cache)
    assert train.labels.tolist() == [(b + i) % 10 for b in range(5) for i in range(3)]
    np.testing.assert_array_equal(train.images[4], _pixels(train.labels[4], 1))


@pytest.mark.parametrize("prefix", ["", "cifar10-jpg/"])
def test_cifar_image_folder_tar(tmp_path, cache, prefix):
    _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members(prefix))
    s = load_split("cifar10", "train", tmp_path, cache_dir=cache)
    assert s.images.shape == (20, 32, 32, 3) and s.labels.tolist() == [c for c in range(10) for _ in range(2)]
    for k in range(20):  # sorted by class, then file name, whatever the member order in the tar
        np.testing.assert_array_equal(s.images[k], _pixels(k // 2, k % 2))


@pytest.mark.parametrize("where", ["cifar10/", ""])
def test_cifar_image_folder_dir_matches_tar(tmp_path, cache, where):
    _write_tree(tmp_path / "dir" / where.rstrip("/"), _folder_members(fmt="JPEG"))
    _write_tar(tmp_path / "tar" / "cifar10-jpg.tar.gz", _folder_members(fmt="JPEG"))
    for split in ("train", "test"):
        a = load_split("cifar10", split, tmp_path / "dir", cache_dir=cache)
        b = load_split("cifar10", split, tmp_path / "tar", cache_dir=cache)
        assert a.source == str(tmp_path / "dir" / where / split)
        np.testing.assert_array_equal(a.images, b.images)  # same JPEG bytes, same order
        np.testing.assert_array_equal(a.labels, b.labels)


def test_cifar_python_batches_win_over_image_folder(tmp_path, cache):
    _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members())
    _write_tree(tmp_path, _batch_members())
    assert load_split("cifar10", "test", tmp_path, cache_dir=cache).source.endswith("cifar-10-batches-py")


# ---- GTSRB -----------------------------------------------------------------------------------------

def _expected_gtsrb(members: dict[str, bytes], names: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(members[n])).convert("RGB").resize((32, 32),
                                                                                           Image.BILINEAR))
                     for n in names])


def test_gtsrb_tree_resizes_and_labels(tmp_path, cache):
    members = _gtsrb_members(per_class=2)
    _write_tree(tmp_path, members)
    train = load_split("gtsrb", "train", tmp_path, cache_dir=cache)
    assert train.images.shape == (86, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [c for c in range(43) for _ in range(2)]
    assert train.classes == gtsrb.CLASSES and len(train.classes) == DATASETS["gtsrb"].num_classes
    names = [f"GTSRB/Final_Training/Images/{c:05d}/{c:05d}_{i:05d}.ppm" for c in range(43) for i in range(2)]
    np.testing.assert_array_equal(train.images, _expected_gtsrb(members, names))  # 40x37 -> 32x32 bilinear
    test = load_split("gtsrb", "test", tmp_path, cache_dir=cache)
    assert test.labels.tolist() == [40, 39, 38, 37, 36]  # from GT-final_test.csv, not the .test.csv
    names = [f"GTSRB/Final_Test/Images/{i:05d}.ppm" for i in range(5)]
    np.testing.assert_array_equal(test.images, _expected_gtsrb(members, names))


def test_gtsrb_tar_zips_and_tree_agree(tmp_path, cache):
    members = _gtsrb_members(size=(32, 32))  # already 32x32: read as is
    _write_tree(tmp_path / "tree", members)
    _write_tar(tmp_path / "tar" / "gtsrb-32.tar.xz", members)
    _gtsrb_zips(tmp_path / "zips", members)
    for split in ("train", "test"):
        loaded = [load_split("gtsrb", split, tmp_path / d, cache_dir=cache) for d in ("tree", "tar", "zips")]
        for other in loaded[1:]:
            np.testing.assert_array_equal(loaded[0].images, other.images)
            np.testing.assert_array_equal(loaded[0].labels, other.labels)
    test = load_split("gtsrb", "test", tmp_path / "zips", cache_dir=cache)
    assert "GTSRB_Final_Test_Images.zip + " in test.source and test.source.endswith("GTSRB_Final_Test_GT.zip")
    np.testing.assert_array_equal(test.images[2], _pixels(2, 0))


@pytest.mark.parametrize("labels_at", ["data_dir", "gt_zip"])
def test_gtsrb_test_tree_with_labels_beside_it(tmp_path, cache, labels_at):
    members = _gtsrb_members()
    csv = members.pop("GTSRB/Final_Test/GT-final_test.csv")
    _write_tree(tmp_path, members)
    if labels_at == "data_dir":
        (tmp_path / "GT-final_test.csv").write_bytes(csv)
    else:
        with zipfile.ZipFile(tmp_path / "GTSRB_Final_Test_GT.zip", "w") as zf:
            zf.writestr("GT-final_test.csv", csv)
    assert load_split("gtsrb", "test", tmp_path, cache_dir=cache).labels.tolist() == [40, 39, 38, 37, 36]


# ---- cache -----------------------------------------------------------------------------------------

def test_second_load_is_served_from_cache(tmp_path, cache, monkeypatch):
    _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members())
    first = load_split("cifar10", "test", tmp_path, cache_dir=cache)
    files = list(cache.glob("cifar10-test-*.npz"))
    assert len(files) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")
    monkeypatch.setattr(cifar10, "read", no_decoding)
    second = load_split("cifar10", "test", tmp_path, cache_dir=cache)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert second.classes == CLASSES and second.source == first.source

    os.utime(tmp_path / "cifar10-jpg.tar.gz", ns=(1, 1))  # the source changed: the cache key changes
    with pytest.raises(AssertionError, match="decoded again"):
        load_split("cifar10", "test", tmp_path, cache_dir=cache)


def test_directory_source_change_is_seen(tmp_path, cache):
    _write_tree(tmp_path, _folder_members())
    assert len(load_split("cifar10", "test", tmp_path, cache_dir=cache).labels) == 20
    (tmp_path / "test" / "cat" / "0002.png").write_bytes(_encode(_pixels(3, 2), "PNG"))  # new fingerprint
    assert len(load_split("cifar10", "test", tmp_path, cache_dir=cache).labels) == 21


def test_cache_dir_from_env(tmp_path, monkeypatch):
    _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members())
    monkeypatch.setenv("QADTR_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("QADTR_DATA", str(tmp_path))
    load_split("cifar10", "test")
    assert len(list((tmp_path / "env-cache").glob("cifar10-test-*.npz"))) == 1


@pytest.mark.parametrize("damage", [b"garbage", b"truncate"])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, cache, damage):
    _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members())
    good = load_split("cifar10", "test", tmp_path, cache_dir=cache)
    (path,) = cache.glob("*.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == b"truncate" else damage)
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        again = load_split("cifar10", "test", tmp_path, cache_dir=cache)
    np.testing.assert_array_equal(good.images, again.images)
    assert path.read_bytes() == data  # rewritten whole


def test_order_is_deterministic_across_caches(tmp_path):
    _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members(fmt="JPEG"))
    a = load_split("cifar10", "train", tmp_path, cache_dir=tmp_path / "c1")
    b = load_split("cifar10", "train", tmp_path, cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


# ---- data dir resolution and download ---------------------------------------------------------------

def test_resolve_data_dir_flag_over_env(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"


def test_resolve_data_dir_then_shared_data_beside_the_repo_then_the_cache(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "data"
    monkeypatch.setattr(qadtr.data, "SHARED_DATA", shared)
    assert resolve_data_dir(None, cache_dir=tmp_path / "c") == tmp_path / "c" / "data"  # nothing beside the repo
    monkeypatch.setenv("QADTR_CACHE", str(tmp_path / "env-cache"))
    assert resolve_data_dir("") == tmp_path / "env-cache" / "data"
    shared.mkdir(parents=True)
    assert resolve_data_dir(None) == shared
    monkeypatch.setenv("QADTR_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"


def test_shared_data_is_the_folder_beside_the_checkout():
    checkout = Path(__file__).resolve().parents[2]
    assert (checkout / "pyproject.toml").is_file() and SHARED_DATA_DEFAULT == checkout.parent / "shared" / "data"


def test_no_data_anywhere_downloads_into_the_cache_once(tmp_path, cache, monkeypatch):
    archive = _write_tar(tmp_path / "src.tar.gz", _batch_members())
    fetched = []
    monkeypatch.setattr(_archive, "urlopen", _fake_urlopen({cifar10.URL: archive.read_bytes()}, fetched))
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    s = load_split("cifar10", "test", cache_dir=cache)
    assert s.images.shape == (3, 32, 32, 3) and (cache / "data" / "cifar-10-python.tar.gz").is_file()
    assert load_split("cifar10", "train", cache_dir=cache).images.shape == (5 * 3, 32, 32, 3)
    assert fetched == [cifar10.URL]  # the archive in the cache is found the second time


def test_no_data_anywhere_offline_says_where_to_put_it(tmp_path, cache, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(_archive, "urlopen", offline)
    with pytest.raises(QadtrError) as e:
        load_split("cifar10", "train", cache_dir=cache)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"no cifar10 found: pass --data-dir DIR, set QADTR_DATA=DIR or put it in "
                                   f"{tmp_path / 'no-shared' / 'data'} (README \"Data\"); fetching it into "
                                   f"{cache / 'data'} failed: could not download {cifar10.URL}")


def _fake_urlopen(payloads: dict[str, bytes], fetched: list[str]):
    def urlopen(url, timeout=None):
        fetched.append(url)
        return io.BytesIO(payloads[url])
    return urlopen


def test_cifar_download_checks_md5(tmp_path, cache, monkeypatch):
    archive = _write_tar(tmp_path / "src.tar.gz", _batch_members())
    fetched = []
    monkeypatch.setattr(_archive, "urlopen", _fake_urlopen({cifar10.URL: archive.read_bytes()}, fetched))
    with pytest.raises(QadtrError, match="md5 .* expected c58f30108f718f92721af3b95e74349a"):
        load_split("cifar10", "test", tmp_path / "new", cache_dir=cache, download=True)
    assert not list((tmp_path / "new").iterdir())  # the partial file is gone
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    s = load_split("cifar10", "test", tmp_path / "new", cache_dir=cache, download=True)
    assert s.images.shape == (3, 32, 32, 3) and (tmp_path / "new" / "cifar-10-python.tar.gz").is_file()
    load_split("cifar10", "test", tmp_path / "new", cache_dir=cache, download=True)
    assert fetched == [cifar10.URL, cifar10.URL]  # not downloaded a third time


def test_gtsrb_download_fetches_only_the_split_zips(tmp_path, cache, monkeypatch):
    members = _gtsrb_members()
    _gtsrb_zips(tmp_path / "src", members)
    payloads = {gtsrb.BASE_URL + p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()}
    for p in (tmp_path / "src").iterdir():
        monkeypatch.setitem(gtsrb.ZIP_MD5, p.name, hashlib.md5(p.read_bytes()).hexdigest())
    fetched = []
    monkeypatch.setattr(_archive, "urlopen", _fake_urlopen(payloads, fetched))
    s = load_split("gtsrb", "test", tmp_path / "dl", cache_dir=cache, download=True)
    assert s.labels.tolist() == [40, 39, 38, 37, 36]
    assert sorted(u.removeprefix(gtsrb.BASE_URL) for u in fetched) == ["GTSRB_Final_Test_GT.zip",
                                                                       "GTSRB_Final_Test_Images.zip"]


def test_download_without_network_names_the_manual_fix(tmp_path, cache, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(_archive, "urlopen", offline)
    with pytest.raises(QadtrError, match="could not download .*by hand into"):
        load_split("gtsrb", "train", tmp_path, cache_dir=cache, download=True)


# ---- every user-error branch -----------------------------------------------------------------------

def test_errors_before_reading(tmp_path, cache):
    with pytest.raises(QadtrError, match=r"unknown dataset 'mnist'; use one of \['cifar10', 'gtsrb'\]"):
        load_split("mnist", "train", tmp_path, cache_dir=cache)
    with pytest.raises(QadtrError, match="unknown split 'val' for cifar10"):
        load_split("cifar10", "val", tmp_path, cache_dir=cache)
    with pytest.raises(QadtrError, match="does not exist.*--data-dir / QADTR_DATA.*--download"):
        load_split("cifar10", "train", tmp_path / "nope", cache_dir=cache)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(QadtrError, match="a-file does not exist or is not a directory"):
        load_split("cifar10", "train", tmp_path / "a-file", cache_dir=cache, download=True)
    with pytest.raises(QadtrError, match=r"no CIFAR-10 in .*cifar-10-batches-py/, cifar-10-python\.tar\.gz, "
                                         r"cifar10/train/, train/, cifar10-jpg\.tar\.gz.*--download"):
        load_split("cifar10", "train", tmp_path, cache_dir=cache)
    with pytest.raises(QadtrError, match=r"no GTSRB test split .*GTSRB/Final_Test/, gtsrb-32\.tar\.xz, "
                                         r"GTSRB_Final_Test_Images\.zip, GTSRB_Final_Test_GT\.zip.*"
                                         "--download"):
        load_split("gtsrb", "test", tmp_path, cache_dir=cache)


def _evil_pickle() -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    return pickle.dumps({b"data": Evil()}, protocol=2)


@pytest.mark.parametrize("members, match", [
    (_batch_members(skip="data_batch_3"), "member data_batch_3 is missing"),
    (_batch_members(data=np.zeros((3, 100), np.uint8)), r"data uint8 \(3, 100\).*expected uint8 \(N, 3072\)"),
    (_batch_members(labels=[0, 1]), r"and 2 labels; expected .* N labels"),
    (_batch_members(labels=[0, 1, 10]), "labels outside 0..9"),
    ({**_batch_members(), "cifar-10-batches-py/data_batch_1": _evil_pickle()},
     "data_batch_1 is not a CIFAR-10 python batch .*not allowed"),
    ({**_batch_members(), "cifar-10-batches-py/data_batch_2": pickle.dumps([1, 2])},
     "data_batch_2 is a list"),
    ({**_batch_members(), "cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": [b"a"]})},
     "batches.meta lists 1 label_names, expected 10"),
    (_folder_members(skip_class="truck"), "no images in class folder train/truck/"),
    ({**_folder_members(), "train/unicorn/0000.png": _encode(_pixels(0, 0), "PNG")},
     "class folder 'unicorn'"),
    ({**_folder_members(), "train/cat/0009.png": _encode(_pixels(0, 0, (31, 32)), "PNG")},
     "train/cat/0009.png is 31x32; expected a 32x32"),
    ({**_folder_members(), "train/cat/0009.jpg": b"not a jpeg"},
     r"train/cat/0009.jpg is not a readable image \(unknown image format\)"),
])
def test_incomplete_cifar_sources(tmp_path, cache, members, match):
    name = "cifar-10-python.tar.gz" if "cifar-10-batches-py/data_batch_1" in members else "cifar10-jpg.tar.gz"
    _write_tar(tmp_path / name, members)
    with pytest.raises(QadtrError, match=match):
        load_split("cifar10", "train", tmp_path, cache_dir=cache)


def test_truncated_archive(tmp_path, cache):
    data = _write_tar(tmp_path / "cifar10-jpg.tar.gz", _folder_members()).read_bytes()
    (tmp_path / "cifar10-jpg.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(QadtrError, match="is not a readable archive.*download it again"):
        load_split("cifar10", "train", tmp_path, cache_dir=cache)


def _without(members: dict, name: str) -> dict:
    return {k: v for k, v in members.items() if k != name}


def _replace(members: dict, name: str, data: bytes) -> dict:
    return {**members, name: data}


_M = _gtsrb_members()
_CSV0 = "GTSRB/Final_Training/Images/00000/GT-00000.csv"


@pytest.mark.parametrize("split, members, match", [
    ("train", _without(_M, "GTSRB/Final_Training/Images/00042/GT-00042.csv"), "GT-00042.csv is missing"),
    ("train", _without(_M, "GTSRB/Final_Training/Images/00007/00007_00000.ppm"),
     r"member Final_Training/Images/00007/00007_00000.ppm \(listed in .*GT-00007.csv\) is missing"),
    ("train", _replace(_M, "GTSRB/Final_Training/Images/00001/extra.ppm", _encode(_pixels(0, 0), "PPM")),
     r"1 image\(s\) have no row in their GT csv .*Final_Training/Images/00001/extra.ppm"),
    ("train", _replace(_M, _CSV0, b"Filename;Width\r\na.ppm;3\r\n"),
     "has columns .*expected the labelled GT csv"),
    ("train", _replace(_M, _CSV0, b"Filename;ClassId\r\n00000_00000.ppm;99\r\n"),
     "ClassId 99; expected 0..42"),
    ("train", _replace(_M, _CSV0, b"Filename;ClassId\r\n00000_00000.ppm;x\r\n"),
     "bad row '00000_00000.ppm;x'"),
    ("train", _replace(_M, _CSV0, b"\xff\xfe"), "is not a text csv"),
    ("train", _replace(_M, "GTSRB/Final_Training/Images/00003/00003_00000.ppm", b"P6 broken"),
     "00003_00000.ppm is not a readable image"),
    ("test", _without(_M, "GTSRB/Final_Test/GT-final_test.csv"), "GT-final_test.csv is missing"),
])
def test_incomplete_gtsrb_tar(tmp_path, cache, split, members, match):
    _write_tar(tmp_path / "gtsrb-32.tar.xz", members)
    with pytest.raises(QadtrError, match=match):
        load_split("gtsrb", split, tmp_path, cache_dir=cache)


def test_incomplete_gtsrb_tree_and_zips(tmp_path, cache):
    _write_tree(tmp_path / "tree", _without(_M, "GTSRB/Final_Test/GT-final_test.csv"))
    with pytest.raises(QadtrError, match="has no GT-final_test.csv .*or put GTSRB_Final_Test_GT.zip in"):
        load_split("gtsrb", "test", tmp_path / "tree", cache_dir=cache)
    _gtsrb_zips(tmp_path / "zips", _M)
    (tmp_path / "zips" / "GTSRB_Final_Test_GT.zip").unlink()
    with pytest.raises(QadtrError, match="has GTSRB_Final_Test_Images.zip but not GTSRB_Final_Test_GT.zip"):
        load_split("gtsrb", "test", tmp_path / "zips", cache_dir=cache)


# ---- the real data in ../shared/data -----------------------------------------------------------------

@pytest.mark.data
@pytest.mark.skipif(not (REAL_DATA / "cifar10-jpg.tar.gz").is_file(), reason=f"{REAL_DATA} has no CIFAR-10")
def test_real_cifar10_test_split(tmp_path):
    s = load_split("cifar10", "test", REAL_DATA, cache_dir=tmp_path)
    assert s.images.shape == (10000, 32, 32, 3) and s.images.dtype == np.uint8
    assert np.bincount(s.labels).tolist() == [1000] * 10


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_member_larger_than_any_dataset_file_is_refused_before_it_is_inflated(tmp_path, cache, kind):
    """A decompression bomb (a 6.9 MB tar.gz once held a 1.5 GB member: 3.5 GB of memory before its error)."""
    from qadtr.data import _archive

    assert 31 * 2 ** 20 < _archive.MAX_MEMBER <= 2 ** 30  # the largest real member (a CIFAR-10 batch) fits
    bomb = bytes(_archive.MAX_MEMBER + 1)  # zeros: a few hundred KB compressed
    members = {**_folder_members(), "train/cat/0000.jpg": bomb}
    if kind == "zip":
        path = tmp_path / "cifar10-jpg.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        got = _archive.iter_members(path, lambda n: n.endswith(".jpg"))
    else:
        path = _write_tar(tmp_path / "cifar10-jpg.tar.gz", members)
        got = _archive.iter_members(path, lambda n: n.endswith(".jpg"))
    with pytest.raises(QadtrError, match=r"member train/cat/0000.jpg unpacks to 268,435,457 bytes.*not the official archive"):
        list(got)
