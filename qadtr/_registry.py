"""One registry shape for every pluggable kind (models, recipes, attacks, exporters, runtimes, device kinds, meters).

    RUNTIMES = Registry("runtime")                  # name -> a frozen dataclass row with a `name` field
    RUNTIMES.register(RuntimeInfo("null", "devices.null:NullRunner", ()))   # a second "null" is refused
    RUNTIMES.get("ort")     # QadtrError: unknown runtime 'ort'; known: fakequant, onnxrt, ...
    cls = resolve(RUNTIMES.get("null").runner)      # "module:attr" is imported here, not when the row is made

A row names code either as a callable or as a "module:attr" string; a string is imported only by `resolve`,
so a table of rows loads without the heavy dependencies of what it lists. Rows whose kind has a config
class carry it in their `config` field and `for_config(cfg)` finds the row by `type(cfg)` (torchao's
`_HANDLERS[type(cfg)]`). `view()` gives the dict shapes the older tables had (RECIPES: name -> function).

This file needs the standard library and qadtr._errors only, and runs on Python >= 3.8: devices/ssh.py pushes
it to boards with the runner layer (BOARD_FILES).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import MutableMapping, Set
from typing import Any, Callable, Generic, Iterator, TypeVar

from qadtr._errors import QadtrError

RowT = TypeVar("RowT")


class UnknownName(QadtrError, LookupError):
    """A name no row of a registry has; the message lists the known ones."""


def resolve(ref: str | Callable[..., Any], *, what: str = "") -> Any:
    """The object `ref` names: a "module:attr" string is imported now; anything else is returned as it is.

    Raises:
        ValueError: `ref` is a string without one ":" between a module and an attribute.
        ImportError: the module cannot be imported or has no such attribute (the message names `ref`, and `what`
            when given, e.g. "runtime 'tensorrt'"), for the caller to add how to install it.
    """
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr or ":" in attr:
        raise ValueError(f"{ref!r} is not 'module:attr'; write e.g. 'devices.null:NullRunner'")
    label = f"{what} ({ref})" if what else ref
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{label}: cannot import {module}: {e}", name=getattr(e, "name", None)) from e
    try:
        return getattr(found, attr)
    except AttributeError:
        raise ImportError(f"{label}: module {module} has no {attr!r}; fix the row's reference") from None


class Registry(Generic[RowT]):
    """name -> frozen row, in registration order. Reads like a read-only dict (`in`, `[]`, iteration, items()),
    but `get(name)` raises UnknownName (a QadtrError) listing the known names instead of returning None."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # in messages: "unknown <kind> 'x'"
        self._rows: dict[str, RowT] = {}

    def register(self, row: RowT) -> RowT:
        """Add `row` (a frozen dataclass with a `name`); returns it, so a module can keep it under a name.

        Raises:
            TypeError: `row` is not a frozen dataclass with a `name` field.
            ValueError: a row of that name is registered already.
        """
        params = getattr(type(row), "__dataclass_params__", None)
        if params is None or not params.frozen or not isinstance(getattr(row, "name", None), str):
            raise TypeError(f"{self.kind} rows are frozen dataclasses with a name; got {type(row).__name__}")
        name = row.name  # type: ignore[attr-defined]
        if name in self._rows:
            raise ValueError(f"{self.kind} {name!r} is registered twice; pick another name")
        self._rows[name] = row
        return row

    def replace(self, row: RowT) -> RowT:
        """Swap the row of `row.name` for `row` (a test standing a crashing recipe in for the real one)."""
        self.get(row.name)  # type: ignore[attr-defined]
        self._rows[row.name] = row  # type: ignore[attr-defined]
        return row

    def get(self, name: str) -> RowT:
        try:
            return self._rows[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self._rows)}") from None

    def names(self) -> list[str]:
        return list(self._rows)

    def rows(self) -> list[RowT]:
        return list(self._rows.values())

    def for_config(self, cfg: Any) -> RowT:
        """The row whose `config` class is exactly `type(cfg)`.

        Raises:
            UnknownName: no row takes that config class (the message lists the classes that have one).
        """
        for row in self._rows.values():
            if getattr(row, "config", None) is type(cfg):
                return row
        known = ", ".join(f"{c.__name__} ({n})" for n, c in
                          ((n, getattr(r, "config", None)) for n, r in self._rows.items()) if c is not None)
        raise UnknownName(f"no {self.kind} takes a {type(cfg).__name__}; the {self.kind} configs are {known}")

    def view(self, fields: str | tuple[str, ...], *,
             where: Callable[[RowT], bool] | None = None) -> RowView:
        """A dict-shaped window: name -> the row's `fields` (one field, or a tuple of them), over the rows `where`
        accepts; assigning to an existing name replaces those fields of its row."""
        return RowView(self, fields, where=where)

    def names_where(self, where: Callable[[RowT], bool]) -> NamesWhere:
        """A live set of the names whose rows `where` accepts (STATEFUL: the recipes registered stateful=True)."""
        return NamesWhere(self, where)

    # -- the read-only dict shape ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> RowT:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._rows
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> list[str]:
        return self.names()

    def values(self) -> list[RowT]:
        return self.rows()

    def items(self) -> list[tuple[str, RowT]]:
        return list(self._rows.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._rows)})"


class RowView(MutableMapping):
    """name -> fields of each row of a registry, as a dict (the older tables' shape, kept for their readers)."""

    def __init__(self, registry: Registry, fields: str | tuple[str, ...], *,
                 where: Callable[[Any], bool] | None = None) -> None:
        self.registry, self.fields, self.where = registry, fields, where

    def _row(self, name: str) -> Any:
        if name in self.registry:
            row = self.registry.get(name)
            if self.where is None or self.where(row):
                return row
        raise KeyError(name)

    def __getitem__(self, name: str) -> Any:
        row = self._row(name)
        if isinstance(self.fields, str):
            return getattr(row, self.fields)
        return tuple(getattr(row, f) for f in self.fields)

    def __setitem__(self, name: str, value: Any) -> None:
        try:
            row = self._row(name)
        except KeyError:
            raise KeyError(f"{name!r}: no {self.registry.kind} of that name to change; register a row") from None
        values = {self.fields: value} if isinstance(self.fields, str) else dict(zip(self.fields, value))
        self.registry.replace(dataclasses.replace(row, **values))

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"{self.registry.kind} rows are not removed; replace the row instead")

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, r in self.registry.items() if self.where is None or self.where(r)])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __repr__(self) -> str:
        return repr(dict(self))


class NamesWhere(Set):
    """The names of a registry's rows that a predicate accepts, read live."""

    def __init__(self, registry: Registry, where: Callable[[Any], bool]) -> None:
        self.registry, self.where = registry, where

    def __contains__(self, name: object) -> bool:
        return name in self.registry and bool(self.where(self.registry.get(name)))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, r in self.registry.items() if self.where(r)])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __repr__(self) -> str:
        return repr(set(self))
