"""One registry shape for every pluggable kind (adapters, targets, exporters, ...).

Built-ins register by name with a decorator; a user names their own object as
``package.module:attribute`` in autoq.yaml. Unknown names raise one error that lists
the known ones.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Collection, Iterator
from typing import Generic, TypeVar

from autoq.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to an object (a class or a function) of one pluggable kind.

    Example:
        >>> exporters = Registry("exporter")
        >>> @exporters.register("toy")
        ... def write_toy(config): ...
        >>> exporters.get("toy") is write_toy
        True
    """

    def __init__(self, kind: str, *, builtins_module: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins_module = builtins_module
        self._loaded = builtins_module is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        """Registers ``obj`` without a decorator (data-defined items such as target files)."""
        self._items[name] = obj

    def _load_builtins(self) -> None:
        if not self._loaded:  # marked loaded only once the import worked: a failed import is retried, not hidden
            importlib.import_module(self._builtins_module)  # type: ignore[arg-type]
            self._loaded = True

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, *, key: str | None = None) -> T:
        """Returns the object named ``name`` or imported from ``package.module:attribute``.

        ``key`` names where the name came from (e.g. ``autoq.yaml: model.adapter``) for the error.
        """
        self._load_builtins()
        where = f"{key}: " if key else ""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigError(
                    f"{where}cannot import module {module_name!r} for {self.kind} {name!r} ({exc}); "
                    "check the name and that the package is installed"
                ) from None
            try:
                return getattr(module, attr)
            except AttributeError:
                raise ConfigError(
                    f"{where}module {module_name!r} has no attribute {attr!r} for {self.kind} {name!r}"
                ) from None
        known = ", ".join(self.names()) or "(none)"
        raise ConfigError(
            f"{where}unknown {self.kind} {name!r}; known: {known}, or give your own as package.module:attribute"
        )


def accepted_options(obj: object, *, skip: Collection[str] = ()) -> str:
    """The keyword options a plugin class or function takes, for "accepted options: ..." errors."""
    try:
        params = inspect.signature(obj).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(unknown)"
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", *skip)
    ]
    return ", ".join(names) or "(none)"
