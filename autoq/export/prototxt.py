"""A small, strict reader and writer for protobuf text format (``.prototxt``), without a schema.

Axera Pulsar reads its ``config.prototxt`` with protobuf's text parser; autoq has no copy of
Pulsar's ``.proto``, so it writes and reads the text directly. The reader accepts the subset of
text format that config files use and refuses everything else with the line number:

* ``name: value`` scalars: double-quoted strings (C escapes; adjacent strings concatenate),
  integers, floats, and identifiers (enum values, ``true``/``false``);
* ``name { ... }`` / ``name: { ... }`` / ``name < ... >`` messages; ``name: [v1, v2]`` lists;
* ``#`` comments to the end of the line; ``,`` or ``;`` after a field.

A message parses to a ``dict`` mapping each field name to the *list* of its values in file order
(text format cannot tell a singular field from a repeated one without the schema), so
``msg["a"][0]`` is the first ``a``. Identifiers parse to `Ident` (a ``str``) so an enum value
``UINT16`` and a string ``"UINT16"`` stay distinguishable.

Example:
    >>> parse_prototxt('a: 1  b { c: "x" c: "y" } e: ENUM_V')
    {'a': [1], 'b': [{'c': ['x', 'y']}], 'e': [Ident('ENUM_V')]}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from autoq.errors import ConfigError

__all__ = ["Ident", "PrototxtError", "dump_prototxt", "parse_prototxt", "quote"]


class PrototxtError(ConfigError):
    """The text is not valid protobuf text format (names the line)."""


class Ident(str):
    """An identifier value (enum value or ``true``/``false``), as opposed to a quoted string."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Ident({str(self)!r})"


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|inf|nan)(?![A-Za-z0-9_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>\[\]:,;])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "?": "?"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            snippet = text[pos : pos + 20].split("\n")[0]
            raise PrototxtError(f"line {line}: unexpected text {snippet!r}")
        kind = m.lastgroup or ""
        value = m.group()
        if kind == "nl":
            line += 1
        elif kind not in ("ws", "comment"):
            tokens.append((kind, value, line))
        pos = m.end()
    return tokens


def _unquote(token: str, line: int) -> str:
    body = token[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert m is not None
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :])
            if m is None:
                raise PrototxtError(f"line {line}: bad \\x escape in {token}")
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        else:
            raise PrototxtError(f"line {line}: unknown escape \\{nxt} in {token}")
    # text format strings are bytes; autoq writes UTF-8, so decode escaped bytes back to text
    raw = "".join(out)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _number(token: str) -> int | float:
    t = token.rstrip("fF") if not token.lower().startswith(("0x", "-0x", "+0x")) else token
    if t.lower().lstrip("+-") in ("inf", "nan"):
        return float(t)
    try:
        return int(t, 0)
    except ValueError:
        return float(t)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            last = self.tokens[-1][2] if self.tokens else 1
            raise PrototxtError(f"line {last}: unexpected end of file (missing '}}'?)")
        self.i += 1
        return tok

    def message(self, close: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    self.take()  # raises "unexpected end of file"
                return fields
            kind, value, line = tok
            if kind == "punct" and value == close:
                self.i += 1
                return fields
            if kind != "ident":
                raise PrototxtError(f"line {line}: expected a field name, got {value!r}")
            self.i += 1
            if not _NAME.match(value):
                raise PrototxtError(f"line {line}: {value!r} is not a field name")
            fields.setdefault(value, []).extend(self.field_value(value, line))
            nxt = self.peek()
            if nxt is not None and nxt[0] == "punct" and nxt[1] in ",;":
                self.i += 1

    def field_value(self, name: str, line: int) -> list[Any]:
        kind, value, vline = self.take()
        if kind == "punct" and value in "{<":
            return [self.message("}" if value == "{" else ">")]
        if not (kind == "punct" and value == ":"):
            raise PrototxtError(f"line {vline}: expected ':' or '{{' after field {name!r}, got {value!r}")
        kind, value, vline = self.take()
        if kind == "punct" and value in "{<":
            return [self.message("}" if value == "{" else ">")]
        if kind == "punct" and value == "[":
            items: list[Any] = []
            if self.peek() is not None and self.peek()[1] == "]":  # type: ignore[index]
                self.i += 1
                return items
            while True:
                k, v, ln = self.take()
                if k == "punct" and v in "{<":
                    items.append(self.message("}" if v == "{" else ">"))
                else:
                    items.append(self.scalar(k, v, ln, name))
                k, v, ln = self.take()
                if k == "punct" and v == "]":
                    return items
                if not (k == "punct" and v == ","):
                    raise PrototxtError(f"line {ln}: expected ',' or ']' in the list of {name!r}, got {v!r}")
        return [self.scalar(kind, value, vline, name)]

    def scalar(self, kind: str, value: str, line: int, name: str) -> Any:
        if kind == "string":
            parts = [_unquote(value, line)]
            while self.peek() is not None and self.peek()[0] == "string":  # type: ignore[index]
                _, v, ln = self.take()
                parts.append(_unquote(v, ln))
            return "".join(parts)
        if kind == "number":
            return _number(value)
        if kind == "ident":
            return Ident(value)
        raise PrototxtError(f"line {line}: expected a value for {name!r}, got {value!r}")


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Parses protobuf text format into nested dicts of lists (see the module docstring).

    Raises `PrototxtError` (a ``ConfigError``) naming the line for anything outside the subset.
    """
    return _Parser(text).message(None)


def quote(text: str) -> str:
    """``text`` as a text-format string literal (UTF-8 kept, quotes/backslashes/controls escaped)."""
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar_text(value: Any) -> str:
    if isinstance(value, Ident):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot write {value!r} as a prototxt scalar")


def dump_prototxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """Writes nested dicts as text format: a list value repeats the field, a dict is a message.

    A key starting with ``#`` writes its value (a string) as a comment line at that place.
    """
    pad = "  " * indent
    lines: list[str] = []
    for name, value in message.items():
        if name.startswith("#"):
            lines.extend(f"{pad}# {' '.join(str(line).split())}\n" for line in str(value).split("\n"))
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, Mapping):
                body = dump_prototxt(v, indent + 1)
                if body:
                    lines.append(f"{pad}{name} {{\n{body}{pad}}}\n")
                else:
                    lines.append(f"{pad}{name} {{\n{pad}}}\n")
            else:
                lines.append(f"{pad}{name}: {_scalar_text(v)}\n")
    return "".join(lines)
