"""`--device a,b,c`: the same replay on several devices at once (one thread and one store connection each),
results side by side, and what happens when some devices fail."""

from __future__ import annotations

import threading

import pytest

from eval import fleet as od
from eval.store import Store
from qadtr import QadtrError


def test_two_devices_replay_concurrently(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path, monkeypatch):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.a]\nkind = "local"\npower = "none"\ngroups = ["pair"]\n'
                   '[devices.b]\nkind = "local"\npower = "none"\ngroups = ["pair"]\n')
    threads, real = {}, od.replay_run

    def spy(store, device, job, *, replay, **kw):
        threads[device.name] = (threading.current_thread().name, id(store))
        return real(store, device, job, replay=replay, **kw)

    monkeypatch.setattr(od, "replay_run", spy)
    result = od.replay_on_devices(devices="pair", models=[str(tiny_checkpoint)], patches=str(tiny_patches), eval_subset=16,
                         store_path=tmp_path / "s.sqlite", runtimes=["null"], batch_size=8, warmup=0,
                         inventory=str(inv))
    assert [r["device"] for r in result["runs"]] == ["a", "b"] and set(result["devices"]) == {"a", "b"}
    (ta, sa), (tb, sb) = threads["a"], threads["b"]
    assert ta != tb and ta.startswith("device") and sa != sb  # a thread and a Store connection per device
    with Store(tmp_path / "s.sqlite") as s:
        assert sorted(r.device for r in s.runs() if r.complete) == ["a", "b"]
    rows = [line.split()[:2] for line in od.table(result).splitlines()]
    assert ["a", "null"] in rows and ["b", "null"] in rows  # the printed table: a line per device, side by side


def test_run_fleet_errors():
    def task(name, error=None):
        if error is not None:
            raise error
        return name

    assert od.run_fleet(task, [("a",), ("b",)]) == ["a", "b"]
    with pytest.raises(QadtrError, match=r"^device 'b': gone$"):  # one failure: its own message
        od.run_fleet(task, [("a",), ("b", QadtrError("device 'b': gone"))])
    with pytest.raises(QadtrError, match=r"2 devices failed \(the others finished; re-run to resume\): device 'b': "
                                         r"gone \| device 'c': hung"):
        od.run_fleet(task, [("a",), ("b", QadtrError("device 'b': gone")), ("c", QadtrError("device 'c': hung"))])
    with pytest.raises(ZeroDivisionError):  # a bug keeps its type and traceback
        od.run_fleet(task, [("a", QadtrError("x")), ("b", ZeroDivisionError())])
