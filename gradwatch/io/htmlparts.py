"""The HTML pieces of `gradwatch.io.report.html_report`: style, tables, the diagnosis list."""

from __future__ import annotations

import html
from typing import Iterable, Sequence

__all__ = ["CSS", "inline", "html_table", "html_diagnosis"]

CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
       "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
       "padding:2px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
       "code{background:#f3f3f3}")


def inline(text: str) -> str:
    """Escapes text and renders Markdown-style `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_diagnosis(lines: Sequence[str]) -> str:
    """The diagnosis lines as a list; indented detail lines go small under their finding."""
    out, open_item = [], False
    for line in lines:
        if line.startswith("  "):
            out.append(f"<br><small>{inline(line.strip())}</small>")
            continue
        out.append(("</li>" if open_item else "") + f"<li>{inline(line)}")
        open_item = True
    return "<ul>" + "".join(out) + ("</li>" if open_item else "") + "</ul>"
