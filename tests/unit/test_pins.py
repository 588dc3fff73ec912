"""qadtr._pins: one pinned runtime stack (pyproject.toml) that the host install and the emulated board both use."""

from __future__ import annotations

from devices import _emu_image
from qadtr import _pins


def test_every_runtime_is_pinned_exactly():
    have = _pins.pins()
    assert set(_pins.RUNTIME_STACK) <= set(have)
    assert all(v[0].isdigit() for v in have.values())


def test_this_install_runs_the_pinned_versions():
    assert _pins.drift() == {}, "reinstall with `pip install -e .[dev]`: " + ", ".join(
        f"{n} {got} installed, {want} pinned" for n, (want, got) in _pins.drift().items())


def test_the_board_image_installs_the_same_pins():
    assert _emu_image.WHEELS == _pins.pinned(_pins.BOARD)
    assert {w.split("==")[0] for w in _emu_image.WHEELS} == {"onnxruntime", "ai-edge-litert", "numpy"}


def test_unpinned_name_is_refused():
    import pytest

    from qadtr._errors import QadtrError

    with pytest.raises(QadtrError, match=r"pins no exact version of tqdm; pin them with '=='"):
        _pins.pinned(("tqdm",))
