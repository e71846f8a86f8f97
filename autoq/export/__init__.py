"""Writes a trial's QuantConfig in a vendor compiler's own configuration format.

One module per toolchain, each registered in ``EXPORTERS`` by format name (``horizon``, ...); a
user exporter is named as ``package.module:function`` and called the same way.

Example:
    >>> export_config(ctx, "horizon", Path("out/hb_mapper.yaml"), march="bayes")  # doctest: +SKIP
    [PosixPath('out/hb_mapper.yaml')]
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export.base import EXPORTERS, ExportContext, Exporter

__all__ = ["EXPORTERS", "ExportContext", "Exporter", "export_config", "format_options", "formats_help"]


def export_config(ctx: ExportContext, fmt: str, out: Path, **options: Any) -> list[Path]:
    """Writes ``ctx`` in format ``fmt`` to ``out`` (a file, or a directory to write into).

    Parent directories are created. ``options`` are the exporter's keyword options (e.g.
    ``march`` for ``horizon``); an unknown option is a ``ConfigError`` listing the known ones.
    Returns the files written.
    """
    writer = EXPORTERS.get(fmt, key="export.format")
    _check_options(writer, fmt, options)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return [Path(p) for p in writer(ctx, out, **options)]
    except OSError as exc:  # read-only place, a file where a folder should be, disk full
        where = exc.filename or out
        raise ExportError(f"cannot write the {fmt} export to {where} ({exc.strerror or exc}); "
                          "pass -o a writable folder") from None


def format_options(fmt: str) -> dict[str, Any]:
    """The keyword options of export format ``fmt`` and their defaults."""
    params = inspect.signature(EXPORTERS.get(fmt, key="export.format")).parameters
    return {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def formats_help(defaults: dict[str, list[str]]) -> str:
    """``autoq export --help``'s list: each built-in format, the targets it is the default of, its options."""
    lines = ["formats (default: the target's toolchain; options as -O KEY=VALUE or export.options.<format>):"]
    for fmt in EXPORTERS.names():
        targets = ", ".join(defaults.get(fmt, []))
        lines.append(f"  {fmt}" + (f"  (default for {targets})" if targets else ""))
        opts = ", ".join(f"{k}={v!r}" for k, v in format_options(fmt).items())
        if opts:
            lines.append(f"      {opts}")
    return "\n".join(lines)


def _check_options(writer: Exporter, fmt: str, options: dict[str, Any]) -> None:
    """Unknown options fail here with a clear message instead of a TypeError inside the exporter."""
    try:
        params = inspect.signature(writer).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for name in options:
        if name not in known:
            raise ConfigError(
                f"export format {fmt!r} has no option {name!r}; known options: {', '.join(known) or '(none)'}"
            )
