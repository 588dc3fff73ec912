"""Fuzzing the loaders that read JSON from outside: typed configs (model.json, patch metadata, export records)
and patch files. Whatever the JSON, the only exception is QadtrError (one line at the CLI), never a traceback."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qadtr import QadtrError
from qadtr._config import _ALLOWED, config_from_dict, config_to_dict, field_types, read_json
from qadtr.attacks import EOTConfig, UniversalConfig, load_patch, save_patch
from qadtr.attacks.patchfile import META_FIELDS, Patch
from qadtr.checkpoint import Checkpoint
from qadtr.models import ModelConfig
from qadtr.train import TrainConfig

# fast enough for every run (a few seconds per test), many enough to reach each field of each config
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=12)
FIELD_NAMES = sorted({name for cls in _ALLOWED.values() for name in field_types(cls)})


def _typed(children: st.SearchStrategy) -> st.SearchStrategy:
    """Envelopes naming a registered class (or junk), with field names of registered classes (or junk)."""
    return st.fixed_dictionaries({
        "_type": st.sampled_from(sorted(_ALLOWED)) | JSON,
        "_version": st.integers(-1, 3) | JSON,
        "_data": st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), children, max_size=6) | JSON})


TYPED = st.recursive(JSON, _typed, max_leaves=20)


def _load(d):
    """config_from_dict; any result is fine, QadtrError is the only exception allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an older _version loads with a warning
        try:
            return config_from_dict(d)
        except QadtrError:
            return None


@SETTINGS
@given(TYPED)
def test_config_from_dict_raises_only_qadtr_error(value):
    _load(value)


REAL = config_to_dict(Checkpoint(model=ModelConfig("test_qnet", bits=((2, 2), (4, 4)), per_bit_bn=True),
                                 train=TrainConfig(ModelConfig("test_qnet", bits=((2, 2), (4, 4)), per_bit_bn=True)),
                                 sha256="ab" * 32, metrics={"test_acc": {}}, argv=("x",)))


def _replace_at(tree, data: st.DataObject):
    """A copy of `tree` with one node (a dict value or list item, chosen by hypothesis) replaced by any JSON."""
    if not isinstance(tree, (dict, list)) or not tree or data.draw(st.booleans()):
        return data.draw(TYPED)
    keys = sorted(tree) if isinstance(tree, dict) else list(range(len(tree)))
    key = data.draw(st.sampled_from(keys))
    out = dict(tree) if isinstance(tree, dict) else list(tree)
    out[key] = _replace_at(tree[key], data)
    return out


@SETTINGS
@given(st.data())
def test_a_real_model_json_with_any_node_replaced_raises_only_qadtr_error(data):
    assert _load(json.loads(json.dumps(REAL))) is not None  # the unmodified record loads
    _load(_replace_at(json.loads(json.dumps(REAL)), data))


@SETTINGS
@given(depth=st.integers(0, 200_000), opener=st.sampled_from(["[", '{"a":', '{"_type": "Checkpoint", "_data":']))
def test_read_json_of_any_nesting_raises_only_qadtr_error(tmp_path, depth, opener):
    closer = {"[": "]", '{"a":': "}", '{"_type": "Checkpoint", "_data":': "}"}[opener]
    path = tmp_path / "deep.json"
    path.write_text(opener * depth + "1" + closer * depth)
    try:
        _load(read_json(path))
    except QadtrError:
        pass


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory) -> Path:
    values = np.random.default_rng(0).uniform(0, 1, (3, 4, 4)).astype(np.float32)
    cfg = UniversalConfig(size=0.05, target=3, steps=1, eot=EOTConfig())
    patch = Patch(values=values, attack="universal", config=cfg, size=0.05, side=4, target=3, eot=EOTConfig())
    return save_patch(patch, tmp_path_factory.mktemp("fuzz") / "p")


def _meta_variants(data: st.DataObject, meta: dict) -> str:
    kind = data.draw(st.sampled_from(["any", "field", "drop", "text"]))
    if kind == "any":
        return json.dumps(data.draw(TYPED))
    if kind == "text":
        return data.draw(st.text(max_size=30))
    meta = dict(meta)
    key = data.draw(st.sampled_from(META_FIELDS))
    if kind == "drop":
        del meta[key]
    else:
        meta[key] = _replace_at(meta[key], data)
    return json.dumps(meta)


@SETTINGS
@given(data=st.data(), num_classes=st.none() | st.integers(-1, 50))
def test_load_patch_with_any_metadata_raises_only_qadtr_error(patch_file, data, num_classes):
    with np.load(patch_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(_meta_variants(data, json.loads(str(arrays["meta"]))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.npz"
        np.savez(path, **arrays)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                patch = load_patch(path, num_classes=num_classes)
            except QadtrError:
                return
    assert patch.values.shape == (3, 4, 4) and (patch.target is None or patch.target >= 0)
