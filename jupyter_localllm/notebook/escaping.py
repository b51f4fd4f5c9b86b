"""Untrusted text made safe to show: HTML for the panels, Markdown for the answers.

ipywidgets' ``HTML`` widget sets ``innerHTML``, and JupyterLab renders the Markdown of an output
the kernel just produced without its sanitizer (the output is trusted). So a model named
``<img src=x onerror=…>``, a label or column name in the user's data, an alias sent over the
comm, or a prompt injection in a model's answer would run JavaScript in the page, and the page
can run code in the kernel. Every panel builds its HTML from :func:`html_text` and
:func:`html_table`; answers shown as Markdown go through :func:`safe_markdown` or
:func:`markdown_code`.
"""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["html_table", "html_text", "markdown_code", "safe_markdown"]


def html_text(value: Any) -> str:
    """``str(value)`` as HTML text (also safe in a quoted attribute): ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


_CELL = "text-align:left; padding:2px 12px 2px 0"


def html_table(frame: Any, *, precision: int = 1) -> str:
    """A DataFrame as a left-aligned HTML table without its index; every column name and cell
    escaped, floats shown with ``precision`` decimals. (pandas' ``Styler.to_html`` escapes
    neither cells nor index names by default.)"""

    def cell(value: Any) -> str:
        shown = f"{value:.{precision}f}" if isinstance(value, float) else value
        return f"<td style='{_CELL}'>{html_text(shown)}</td>"

    head = "".join(
        f"<th style='{_CELL}; border-bottom:1px solid #ccc'>{html_text(c)}</th>"
        for c in frame.columns
    )
    rows = "".join(
        "<tr>" + "".join(cell(v) for v in row) + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# -- Markdown ------------------------------------------------------------------------------------
# A fence as marked (JupyterLab's Markdown parser) opens one: up to 3 spaces, 3+ backticks (an
# info string without backticks) or 3+ tildes. The closing test accepts at least every line
# marked closes on, so text we keep verbatim is never outside a code block for marked.
_FENCE = re.compile(r"( {0,3})(`{3,}|~{3,})([^\n]*)")
_TICKS = re.compile(r"`+")
# What raw HTML, links, images, link definitions, math (JupyterLab cuts $…$, \\(…\\) and
# \begin…\end out before marked) and JupyterLab's @@N@@ math placeholders start with.
_PROSE = {"<": "&lt;", "[": "&#91;", "\\": "&#92;", "$": "&#36;", "`": "&#96;"}


def _closes(line: str, fence: str) -> bool:
    return re.fullmatch(r" {0,3}" + re.escape(fence) + r"[~`]*[ \t]*", line) is not None


def _entities(text: str) -> str:
    """Every ASCII punctuation character as a numeric entity: nothing left for Markdown."""
    return "".join(
        f"&#{ord(c)};" if c.isascii() and not c.isalnum() and c != " " else c for c in text
    )


def _prose_line(line: str) -> str:
    """One line outside code blocks: code spans become ``<code>`` with their text as entities,
    and every character that could start HTML, a link or math becomes an entity."""
    out, at = [], 0
    runs = list(_TICKS.finditer(line))
    used: set[int] = set()
    for i, run in enumerate(runs):
        if i in used:
            continue
        close = next((j for j in range(i + 1, len(runs)) if len(runs[j][0]) == len(run[0])), None)
        if close is None or not line[run.end() : runs[close].start()].strip():
            continue
        used.update(range(i, close + 1))  # runs in between belong to the code span
        out.append(_escape_prose(line[at : run.start()]))
        out.append(f"<code>{_entities(line[run.end() : runs[close].start()])}</code>")
        at = runs[close].end()
    out.append(_escape_prose(line[at:]))
    return "".join(out)


def _escape_prose(text: str) -> str:
    text = "".join(_PROSE.get(c, c) for c in text)
    return text.replace("@@", "&#64;@")


def _fenced(lines: list[str], start: int, out: list[str]) -> int:
    """Copy the fenced block opening at ``lines[start]`` to ``out`` (its text verbatim: marked
    escapes it) and always close it ourselves; the index after it. A non-blank line indented
    less than the opening fence ends it: the list item holding the block ended there."""
    found = _FENCE.fullmatch(lines[start])
    assert found is not None
    indent, fence, info = found.groups()
    language = re.match(r"[\w+#.-]*", info.strip())[0]  # type: ignore[index]
    if language.lower() == "mermaid":  # drawn as a diagram from its text: keep it code
        language = ""
    out.append(f"{indent}{fence}{language}")
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if _closes(line, fence):
            i += 1
            break
        if line.strip() and len(line) - len(line.lstrip(" ")) < len(indent):
            break
        out.append(line)
        i += 1
    out.append(f"{indent}{fence}")
    return i


def _opens_fence(line: str) -> bool:
    found = _FENCE.fullmatch(line)
    return found is not None and not (found[2][0] == "`" and "`" in found[3])


def safe_markdown(text: str) -> str:
    """``text`` (a model's answer) as Markdown that renders no raw HTML, link, image or math:
    what the model wrote shows as text, with its headings, lists, emphasis, tables and code.

    Fenced code blocks are kept as they are (marked escapes them); code spans become
    ``<code>`` elements whose text is all entities; elsewhere ``<``, ``[``, ``\\``, ``$`` and
    stray backticks become entities."""
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _opens_fence(lines[i]):
            i = _fenced(lines, i, out)
        else:
            out.append(_prose_line(lines[i]))
            i += 1
    return "\n".join(out)


def markdown_code(text: str, language: str = "") -> str:
    """``text`` as one fenced code block that no line of it can close (the fence is longer
    than any run of backticks in it)."""
    longest = max((len(run) for run in _TICKS.findall(str(text))), default=0)
    fence = "`" * max(3, longest + 1)
    language = re.match(r"[\w+#.-]*", language)[0]  # type: ignore[index]
    return f"{fence}{language}\n{text}\n{fence}"
