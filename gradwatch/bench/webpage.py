"""The bench report as one self-contained HTML page (``report.html``), from its Markdown lines."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Sequence

__all__ = ["html_page"]


_HTML_CSS = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;"
             "line-height:1.45}table{border-collapse:collapse;font-size:.88em;margin:.6em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;"
             "max-width:34em}th{background:#f3f3f3;position:sticky;top:0}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 .2em}blockquote{border-left:4px solid #e80;"
             "margin:0;padding:.3em 1em;background:#fff6e8}")


def _inline_html(text: str) -> str:
    """Escapes text and renders the report's inline Markdown: `code`, **bold**, [links](#x)."""
    parts = html.escape(text.replace("\\|", "|"), quote=False).split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", part)
        out.append(re.sub(r"\[([^\]]+)\]\((#[\w-]+)\)", r"<a href='\2'>\1</a>", part))
    return "".join(out)


def html_page(lines: Sequence[str], out: Path, *, title: str) -> str:
    """The report's Markdown lines as one self-contained HTML page (figures embedded).

    Renders the subset the bench writes: headings, tables, bullet lists (two levels), block
    quotes, images (inlined as base64 PNG), raw HTML lines (anchors, ``<details>``), paragraphs.
    """
    body: list[str] = []
    rows: list[list[str]] = []
    depth = 0

    def close_table() -> None:
        if rows:
            head, *rest = rows
            body.append("<table><thead><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head)
                        + "</tr></thead><tbody>" + "".join(
                            "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                            for r in rest) + "</tbody></table>")
            rows.clear()

    def close_lists(to: int = 0) -> None:
        nonlocal depth
        while depth > to:
            body.append("</ul>")
            depth -= 1

    for line in list(lines):
        for raw in str(line).split("\n"):
            if raw.startswith("|"):
                close_lists()
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", raw.strip())[1:-1]]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append(cells)
                continue
            close_table()
            bullet = re.match(r"^( *)- (.*)$", raw)
            if bullet:
                level = len(bullet.group(1)) // 2 + 1
                while depth < level:
                    body.append("<ul>")
                    depth += 1
                close_lists(level)
                body.append(f"<li>{_inline_html(bullet.group(2))}</li>")
                continue
            close_lists()
            image = re.match(r"^!\[(.*)\]\((.+)\)$", raw)
            if image:
                path = out / image.group(2)
                if path.is_file():
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    body.append(f"<figure><img alt='{html.escape(image.group(1))}' "
                                f"src='data:image/png;base64,{data}'><figcaption>"
                                f"{html.escape(image.group(1))}</figcaption></figure>")
                continue
            heading = re.match(r"^(#{1,4}) (.*)$", raw)
            if heading:
                n = len(heading.group(1))
                body.append(f"<h{n}>{_inline_html(heading.group(2))}</h{n}>")
            elif raw.startswith("<"):
                body.append(raw)
            elif raw.startswith("> "):
                body.append(f"<blockquote>{_inline_html(raw[2:])}</blockquote>")
            elif raw.strip():
                body.append(f"<p>{_inline_html(raw)}</p>")
    close_table()
    close_lists()
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_HTML_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")
