"""The report's Markdown as one HTML page that reads well in a browser: pictures inside it (sized so that a grid
does not fill the screen; a click shows one at full size), tables that wrap their cells instead of running off
the page (and scroll inside their own box if they still cannot fit), headings with the anchors of the table of
contents. Only the Markdown that the report writes is understood: headings, paragraphs, tables, pictures and
(nested) lists of links."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = (
    "body{font-family:system-ui,sans-serif;line-height:1.4;max-width:70em;margin:auto;padding:1em;color:#222}"
    ".scroll{overflow-x:auto;max-width:100%;margin:.75em 0}"
    "table{border-collapse:collapse;font-size:.88em}table.wide{font-size:.8em}"
    "td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top;overflow-wrap:break-word}"
    "th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}"
    "code{font-size:.95em;background:#f2f2f2;padding:0 .2em}"
    "figure{margin:1em 0}figcaption{font-size:.9em;color:#444;margin-top:.3em}"
    "img{display:block;max-width:min(100%,900px);max-height:600px;width:auto;height:auto;cursor:zoom-in}"
    "img.full{max-width:100%;max-height:none;cursor:zoom-out}"
    "nav ul{margin:.25em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
)
# A click on a picture toggles it between its reading size and the page's full width; the caption of a picture
# shown smaller than it is says so.
SCRIPT = (
    "window.addEventListener('load',function(){document.querySelectorAll('figure img').forEach(function(i){"
    "i.onclick=function(){i.classList.toggle('full')};"
    "if(i.naturalWidth>i.width+1){i.nextElementSibling.insertAdjacentText('beforeend',' (click to enlarge)')}})});"
)
WIDE_TABLE = 8  # columns: a table with more is set in smaller type
BREAKS = re.compile(r"([_/])")  # a long option name or path may wrap after these, in a table cell


def slug(text: str, taken: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes; repeats get -1, -2."""
    base = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    count = taken.get(base, 0)
    taken[base] = count + 1
    return f"{base}-{count}" if count else base


def inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\[([^\]]+)\]\((#[^)]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def breakable(markup: str) -> str:
    """Word-break opportunities after "_" and "/" in the text of `markup` (not inside its tags), so that table
    columns can narrow to whole words ("learning_rate" as "learning_" + "rate") instead of cutting them anywhere."""
    return "".join(part if part.startswith("<") else BREAKS.sub(r"\1<wbr>", part) for part in re.split(r"(<[^>]+>)", markup))


def html_table(lines: list[str]) -> str:
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{breakable(inline(c))}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{breakable(inline(c))}</td>" for c in row) + "</tr>" for row in cells[2:])
    wide = ' class="wide"' if len(cells[0]) > WIDE_TABLE else ""
    return f'<div class="scroll"><table{wide}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def html_list(lines: list[str]) -> str:
    """"- item" lines, nested by two spaces."""
    out, depth = [], 0
    for line in lines:
        level = (len(line) - len(line.lstrip(" "))) // 2 + 1
        out.append("<ul>" * (level - depth) + "</li></ul>" * (depth - level) + ("</li>" if level <= depth else ""))
        out.append(f"<li>{inline(line.strip()[2:])}")
        depth = level
    return "".join(out) + "</li></ul>" * depth


def embedded(study_dir: Path, block: str) -> str:
    caption, path = re.fullmatch(r"!\[(.*)\]\((.*)\)", block).groups()
    data = base64.b64encode((study_dir / path).read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" title="click: full size">'
            f"<figcaption>{inline(caption)}</figcaption></figure>")  # fmt: skip


def to_html(text: str, study_dir: Path) -> str:
    """The report's own Markdown as one page, pictures inside."""
    parts, taken = [], {}
    for block in text.strip().split("\n\n"):
        if block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            title = block[level:].strip()
            parts.append(f'<h{level} id="{slug(title, taken)}">{inline(title)}</h{level}>')
        elif block.startswith("|"):
            parts.append(html_table(block.splitlines()))
        elif block.startswith("!["):
            parts.append(embedded(study_dir, block))
        elif block.startswith("- "):
            parts.append(f"<nav>{html_list(block.splitlines())}</nav>")
        else:
            parts.append(f"<p>{inline(block)}</p>")
    title = html.escape(text.splitlines()[0].lstrip("# "))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{title}</title><style>{STYLE}</style></head>'
            f"<body>\n{chr(10).join(parts)}\n<script>{SCRIPT}</script>\n</body></html>\n")  # fmt: skip


def contents(text: str) -> str:
    """The Markdown table of contents of `text`'s ## and ### headings, linked to their anchors."""
    lines, taken = [], {}
    for line in text.splitlines():
        match = re.match(r"(#{1,3}) (.*)", line)
        if match:
            anchor = slug(match.group(2).strip(), taken)
            if len(match.group(1)) > 1:
                lines.append("  " * (len(match.group(1)) - 2) + f"- [{match.group(2).strip()}](#{anchor})")
    return "\n".join(lines)
