"""The one way autoq caches to disk: keys from content, files written atomically, a broken file read
as a miss.

Caches live under ``.autoq/cache/`` and are shared by parallel workers, so a file is written to a
temporary name and renamed into place (a reader never sees half a file), and a file that cannot
be read (truncated by a crash, an older format) is recomputed rather than an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["content_key", "read_json", "try_write_json", "write_atomic", "write_json"]


def content_key(*parts: object) -> str:
    """A short hex key over ``parts`` (strings, numbers, lists, dicts; anything else by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """`write_atomic` of ``data`` as indented JSON."""
    return write_atomic(path, json.dumps(data, indent=1))


def try_write_json(path: Path, data: Any) -> Path | None:
    """`write_json`, or None when the folder is not writable (a read-only project): a cache that
    cannot be written is only a miss next time, never a reason to stop a command that reads."""
    try:
        return write_json(path, data)
    except OSError:
        return None


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (the caller recomputes)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
