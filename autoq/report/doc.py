"""A tiny two-format document: every section is written as HTML and as Markdown at once."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Doc", "fmt"]

_CSS = """body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right;font-size:13px}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.bad{color:#b00020;font-weight:bold}.ok{color:#1b7f1b}
details{margin:8px 0}pre{background:#f7f7f7;padding:8px}tr.dim td{color:#9a9a9a}"""


def fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    return str(v)


class Doc:
    def __init__(self, title: str) -> None:
        self.title = title
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.md: list[str] = [f"# {title}", ""]
        self.images: dict[str, bytes] = {}  # file name -> PNG, written next to the Markdown

    def h2(self, text: str, anchor: str = "") -> None:
        a = f' id="{anchor}"' if anchor else ""
        self.html.append(f"<h2{a}>{html.escape(text)}</h2>")
        self.md += [f"## {text}", ""]

    def h3(self, text: str) -> None:
        self.html.append(f"<h3>{html.escape(text)}</h3>")
        self.md += [f"### {text}", ""]

    def p(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{html.escape(text)}</p>")
        self.md += [f"**{text}**" if cls == "bad" else text, ""]

    def pre(self, text: str) -> None:
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md += ["```", text, "```", ""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, collapsed: str = "",
              dim: Sequence[bool] = ()) -> None:
        """``dim[i]``: row i greyed (HTML) / italic (Markdown), e.g. a class with too few instances to judge."""
        cells = [[fmt(c) for c in r] for r in rows]
        dim = list(dim) + [False] * (len(cells) - len(dim))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(("<tr class='dim'>" if d else "<tr>") + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r, d in zip(cells, dim))
        t = f"<table><tr>{head}</tr>{body}</table>"
        self.html.append(f"<details><summary>{html.escape(collapsed)}</summary>{t}</details>" if collapsed else t)
        md = ["| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |", "|" + "---|" * len(headers)]
        md += ["| " + " | ".join((f"_{c}_" if d and c else c).replace("|", "\\|") for c in r) + " |"
               for r, d in zip(cells, dim)]
        if collapsed:
            self.md += [f"<details><summary>{collapsed}</summary>", "", *md, "", "</details>", ""]
        else:
            self.md += [*md, ""]

    def png(self, name: str, data: bytes, alt: str) -> None:
        b64 = base64.b64encode(data).decode()
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>')
        self.images[name] = data
        self.md += [f"![{alt}]({name})", ""]

    def raw_html(self, fragment: str) -> None:
        self.html.append(fragment)

    def write(self, out: Path) -> tuple[Path, Path]:
        """Writes ``out`` (HTML, self-contained) and ``out`` with suffix .md (+ its PNGs next to it)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body>{''.join(self.html)}</body></html>")
        out.write_text(page, encoding="utf-8")
        md = out.with_suffix(".md")
        prefix = out.stem + "."
        text = "\n".join(self.md)
        for name, data in self.images.items():
            (out.parent / (prefix + name)).write_bytes(data)
            text = text.replace(f"]({name})", f"]({prefix + name})")
        md.write_text(text + "\n", encoding="utf-8")
        return out, md
