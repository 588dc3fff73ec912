"""qadtr._registry: one registry shape (frozen rows, lazy "module:attr") for every pluggable kind, and dispatch by
the type of a recipe's or an attack's config."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qadtr.attacks  # noqa: F401  (fills ATTACK_ROWS)
import qadtr.models  # noqa: F401  (fills MODELS)
import qadtr.recipes  # noqa: F401  (fills RECIPE_ROWS)
from qadtr._errors import QadtrError
from qadtr._registry import Registry, UnknownName, resolve
from qadtr.attacks import ATTACK_ROWS, ATTACKS, UniversalConfig, attack_for_config
from qadtr.recipes import RECIPE_CONFIGS, RECIPE_ROWS, RECIPES, STATEFUL, get_recipe, recipe_for_config
from qadtr.recipes.dq import DqConfig

ROOT = Path(__file__).resolve().parents[2]
# every registry in the tree: (module, attribute); test_no_other_registry_shape finds any one left out
REGISTRIES = [("qadtr.models._registry", "MODELS"), ("qadtr.recipes._registry", "RECIPE_ROWS"),
              ("qadtr.attacks._registry", "ATTACK_ROWS"), ("export.registry", "EXPORTERS"),
              ("devices.runtimes", "RUNTIMES"), ("devices.inventory", "DEVICE_KINDS"),
              ("devices.power._meter", "POWER_METERS"), ("eval.query", "QUERY_ATTACKS"), ("eval.scenario", "SCENARIOS")]
LAZY = [("devices.runtimes", "RUNTIMES", "runner"), ("devices.inventory", "DEVICE_KINDS", "device"),
        ("devices.power._meter", "POWER_METERS", "meter"), ("export.registry", "EXPORTERS", "function"),
        ("eval.query", "QUERY_ATTACKS", "run"), ("eval.scenario", "SCENARIOS", "function"),
        ("eval.scenario", "SCENARIOS", "config")]  # registries of "module:attr" rows, and the field naming the code
MODULE_ATTR = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # a "module:attr" reference, as rows hold them


def registry(module: str, attr: str) -> Registry:
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("module, attr", REGISTRIES)
def test_every_registry_is_one_shape_of_frozen_rows(module, attr):
    reg = registry(module, attr)
    assert isinstance(reg, Registry) and len(reg) > 0
    for name, row in reg.items():
        assert dataclasses.is_dataclass(row) and row.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            row.name = "changed"  # type: ignore[misc]
    assert list(reg) == reg.names() == [r.name for r in reg.rows()]


def _module_level_tables(path: Path):
    """(line, name) of module-level dicts whose values are all "module:attr" strings or tuples holding a class and a
    function (the shapes the registries replaced), and of every `Registry(...)` call with the name it is bound to."""
    tree = ast.parse(path.read_text(), str(path))
    tables, registries = [], []
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        name = target.id if isinstance(target, ast.Name) else "?"
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Registry":
            registries.append(name)
        if isinstance(value, ast.Dict) and value.values and all(
                (isinstance(v, ast.Constant) and isinstance(v.value, str) and MODULE_ATTR.fullmatch(v.value))
                or (isinstance(v, ast.Tuple) and len(v.elts) == 2 and all(isinstance(e, ast.Name) for e in v.elts))
                for v in value.values):
            tables.append((node.lineno, name))
    return tables, registries


def test_no_other_registry_shape():
    listed = {(m, a) for m, a in REGISTRIES}
    found, old = set(), []
    for pkg in ("qadtr", "devices", "export", "eval", "bench"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            tables, registries = _module_level_tables(path)
            old += [f"{path.relative_to(ROOT)}:{line} {name}" for line, name in tables]
            found |= {(module, name) for name in registries}
    assert old == [], "name -> 'module:attr' / (config, function) tables: make them a qadtr._registry.Registry"
    assert found == listed, "add a new registry to REGISTRIES (and its rows' checks) here"


def test_the_check_sees_the_old_shapes(tmp_path):
    old = tmp_path / "old.py"
    old.write_text('KINDS = {"local": "devices.local:LocalDevice", "ssh": "devices.ssh:SshDevice"}\n'
                   'ATTACKS = {"universal": (UniversalConfig, universal_patch)}\nR = Registry("thing")\n')
    assert _module_level_tables(old) == ([(1, "KINDS"), (2, "ATTACKS")], ["R"])


@pytest.mark.parametrize("module, attr", REGISTRIES)
def test_a_second_row_of_one_name_is_refused(module, attr):
    reg = registry(module, attr)
    first = reg.rows()[0]
    with pytest.raises(ValueError, match=f"{reg.kind} '{first.name}' is registered twice; pick another name"):
        reg.register(first)
    assert reg.get(first.name) is first and len(reg) == len(reg.names())


def test_the_registering_helpers_refuse_a_second_name_too():
    from qadtr.models import register_model
    from qadtr.recipes import register_recipe

    def resnet20(quant, num_classes):  # the name of a registered model
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="model 'resnet20' is registered twice"):
        register_model(resnet20)
    with pytest.raises(ValueError, match="recipe 'qat' is registered twice"):
        register_recipe("qat")(resnet20)
    assert get_recipe("qat") is not resnet20


def test_a_row_must_be_a_frozen_dataclass_with_a_name():
    @dataclasses.dataclass
    class Loose:
        name: str

    reg: Registry = Registry("thing")
    for row in (Loose("a"), {"name": "a"}, ("a",)):
        with pytest.raises(TypeError, match="thing rows are frozen dataclasses with a name"):
            reg.register(row)
    assert len(reg) == 0


@pytest.mark.parametrize("module, attr", REGISTRIES)
def test_an_unknown_name_lists_the_known_ones(module, attr):
    reg = registry(module, attr)
    with pytest.raises(QadtrError) as e:
        reg.get("no-such-name")
    assert str(e.value) == f"unknown {reg.kind} 'no-such-name'; known: {', '.join(reg.names())}"
    assert isinstance(e.value, UnknownName) and isinstance(e.value, LookupError)
    assert "no-such-name" not in reg and [] not in reg  # `in` answers, even for an unhashable name


def test_the_messages_users_see():
    from devices.runtimes import get_runtime
    from export.registry import get_exporter

    with pytest.raises(QadtrError, match=r"^unknown runtime 'ort'; known: fakequant, onnxrt, litert-xnnpack, "):
        get_runtime("ort")
    with pytest.raises(QadtrError, match=r"^unknown exporter 'pdf'; known: onnx, trt, tflite$"):
        get_exporter("pdf")
    with pytest.raises(QadtrError, match=r"^unknown power meter 'watts'; known: rapl, tegrastats, ina, nvml$"):
        registry("devices.power._meter", "POWER_METERS").get("watts")
    with pytest.raises(QadtrError, match=r"^unknown device kind 'usb'; known: local, ssh, arm-emu$"):
        registry("devices.inventory", "DEVICE_KINDS").get("usb")
    with pytest.raises(QadtrError, match=r"^unknown recipe 'magic'; known: qat, float, dq, "):
        get_recipe("magic")


def test_resolve_imports_on_call_with_a_clear_error():
    assert resolve("json:loads") is importlib.import_module("json").loads
    assert resolve(len) is len  # a row may hold the callable itself
    with pytest.raises(ImportError, match=r"runtime 'x' \(no_such_module_q:Thing\): cannot import no_such_module_q"):
        resolve("no_such_module_q:Thing", what="runtime 'x'")
    with pytest.raises(ImportError, match=r"json:nothing: module json has no 'nothing'; fix the row's reference"):
        resolve("json:nothing")
    for bad in ("json.loads", "json:", ":loads", "a:b:c"):
        with pytest.raises(ValueError, match="is not 'module:attr'"):
            resolve(bad)


def test_lazy_rows_import_nothing_until_resolved(tmp_path):
    """Importing every table of "module:attr" rows (and reading its rows) imports none of what the rows name; a
    row's code is imported by resolve alone (checked in a fresh interpreter)."""
    (tmp_path / "lazy_target_q.py").write_text("VALUE = 42\n")
    code = textwrap.dedent(f"""
        import importlib, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from dataclasses import dataclass
        from qadtr._registry import Registry, resolve
        tables = {[(m, a, f) for m, a, f in LAZY]!r}
        targets = []
        for module, attr, field in tables:
            reg = getattr(importlib.import_module(module), attr)
            targets += [getattr(reg.get(n), field) for n in reg.names()]
        loaded = sorted(t for t in targets if t.split(":")[0] in sys.modules)
        print("loaded:", ",".join(loaded))

        @dataclass(frozen=True)
        class Row:
            name: str
            code: str
        reg = Registry("thing")
        reg.register(Row("x", "lazy_target_q:VALUE"))
        before = "lazy_target_q" in sys.modules
        value = resolve(reg.get("x").code)
        print("custom:", before, value, "lazy_target_q" in sys.modules)
        null = importlib.import_module("devices.runtimes").RUNTIMES.get("null").runner
        resolve(null)
        print("null:", null.split(":")[0] in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["loaded: ", "custom: False 42 True", "null: True"], r.stdout


def test_recipe_dispatch_by_config_type():
    with_config = [r for r in RECIPE_ROWS.rows() if r.config is not None]
    assert {r.name for r in with_config} == {"dq", "dwq", "pbat", "qadtr"} == set(RECIPE_CONFIGS)
    for row in with_config:
        assert recipe_for_config(row.config()) is row
    with pytest.raises(QadtrError, match=r"no recipe takes a UniversalConfig; the recipe configs are DqConfig \(dq\)"):
        recipe_for_config(UniversalConfig())

    @dataclasses.dataclass(frozen=True)
    class LooksLikeDq(DqConfig):  # a subclass is another type: no row takes it
        pass

    with pytest.raises(UnknownName, match="no recipe takes a LooksLikeDq"):
        recipe_for_config(LooksLikeDq())


def test_attack_dispatch_by_config_type():
    assert ATTACK_ROWS.names() == ["universal", "lavan", "location", "aqapa"]
    for row in ATTACK_ROWS.rows():
        assert attack_for_config(row.config()) is row and ATTACKS[row.name] == (row.config, row.function)
    with pytest.raises(QadtrError, match=r"no attack takes a DqConfig; the attack configs are UniversalConfig "
                                         r"\(universal\), LavanConfig \(lavan\)"):
        attack_for_config(DqConfig())
    with pytest.raises(QadtrError, match="no attack takes a str"):
        attack_for_config("universal")


def test_the_older_tables_are_live_views(monkeypatch):
    """RECIPES, ATTACKS, STATEFUL, ... read the rows; assigning to RECIPES / ATTACKS (tests standing a crashing
    recipe in) changes the row the trainer and the attack CLI dispatch through, and undoing it restores it."""
    real = get_recipe("qat")

    def crash(*a, **k):
        raise RuntimeError("stand-in")

    monkeypatch.setitem(RECIPES, "qat", crash)
    assert get_recipe("qat") is crash and RECIPE_ROWS.get("qat").function is crash
    monkeypatch.undo()
    assert get_recipe("qat") is real and RECIPES["qat"] is real
    monkeypatch.setitem(ATTACKS, "universal", (UniversalConfig, crash))
    assert attack_for_config(UniversalConfig()).function is crash
    monkeypatch.undo()
    assert attack_for_config(UniversalConfig()).function is qadtr.attacks.universal_patch
    assert set(STATEFUL) == {"qadtr"} and "qadtr" in STATEFUL and "qat" not in STATEFUL
    with pytest.raises(KeyError, match="no recipe of that name"):
        RECIPES["new"] = crash
    with pytest.raises(TypeError, match="not removed"):
        del RECIPES["qat"]
    from devices.inventory import DEFAULT_PORT, FIELDS, KINDS
    from devices.power import METERS

    assert dict(KINDS) == {"local": "devices.local:LocalDevice", "ssh": "devices.ssh:SshDevice",
                           "arm-emu": "devices.arm_emu:ArmEmuDevice"}
    assert dict(DEFAULT_PORT) == {"ssh": 22, "arm-emu": 2222} and FIELDS["local"][0] == "kind"
    assert METERS["rapl"] == "devices.power.rapl:RaplMeter" and list(METERS) == ["rapl", "tegrastats", "ina", "nvml"]
