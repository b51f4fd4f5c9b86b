"""Prompt-template placeholders (issue 25, family 11): a conversion, format spec or field name
that cannot be read or filled is one :class:`PlaceholderError` line in every front-end that
reads templates (``df.llm.*``, ``%%llm``; the command line is in ``test_cli_run``), never a
traceback from ``str.format`` and never a huge allocation (``{text:>999999999999}``). And a
DataFrame's rows as :func:`~jupyter_localllm.tasks.rows.frame_rows` renders them for every
front-end: a row that cannot run gets its reason in its place.
"""

from __future__ import annotations

import pandas as pd
import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from jupyter_localllm.errors import InvalidParameterError, PlaceholderError, PromptError
from jupyter_localllm.tasks.rows import MAX_WIDTH, check_fields, frame_rows, render

# A template and words of the one line it gives, on a table whose column "text" holds text.
BAD = {
    "{text!x}": "unknown conversion !x",
    "{text!}": "broken placeholder",
    "{text:d}": "cannot format 'a cat' (str)",
    "{text:,}": "cannot format",
    "{text:>999999999999}": f"the most is {MAX_WIDTH:,}",
    "{text:^99999999}": "width of 99,999,999",
    "{text:.99999999}": "precision of 99,999,999",
    "{text:{width}}": "inside its format spec",
    "{0}": "Column '0' not found",
    "{} {text}": "empty {} placeholder",
    "{text.upper}": "no .attribute or [index]",
    "{text[0]}": "no .attribute or [index]",
    "{text": "unmatched braces",
    "text}": "unmatched braces",
    "{text}}": "unmatched braces",
}


@pytest.mark.parametrize("template", BAD, ids=list(BAD))
def test_a_bad_placeholder_is_one_placeholder_error(template):
    with pytest.raises(PlaceholderError, match=r"^[^\n]+$") as raised:
        check_fields(template, ["text"])
        render(template, {"text": "a cat"})
    assert BAD[template] in str(raised.value)
    assert isinstance(raised.value, PromptError) and isinstance(raised.value, InvalidParameterError)


def test_good_specs_and_conversions_still_format():
    values = {"text": "cat", "n": 3.14159, "when": pd.Timestamp("2024-05-01")}
    template = "{text!r:>7}|{n:.2f}|{n!s}|{when:%Y-%m-%d}|{{literal}}|{text:*^{w}}"
    with pytest.raises(PlaceholderError):  # a nested spec is refused as a whole
        render(template, values)
    assert render(template.rsplit("|", 1)[0], values) == "  'cat'|3.14|3.14159|2024-05-01|{literal}"
    assert render(f"{{text:>{MAX_WIDTH}}}", values) == "cat".rjust(MAX_WIDTH)


def test_frame_rows_render_each_row_and_say_why_one_cannot_run():
    frame = pd.DataFrame(
        {"text": ["a {cat}", None, "  ", 7, "a dog"], 0: [1, 2, 3, 4, float("nan")]},
        index=["a", "b", "c", "d", "e"],
    )
    rows = frame_rows(frame, "{text} #{0!s}")
    assert list(rows.index) == ["a", "b", "c", "d", "e"] and rows.template == "{text} #{0!s}"
    assert rows.texts == ["a {cat} #1.0", None, None, None, None]
    assert rows.errors == {
        1: "column 'text' is empty (missing value) in this row",
        2: "column 'text' is blank in this row",
        3: "column 'text' holds int 7, not text; write {text!s} in the template to format it",
        4: "column '0' is empty (missing value) in this row",
    }
    assert frame_rows(frame.iloc[3:4], "{text!s}").texts == ["7"]
    assert frame_rows(frame.iloc[:0], "{text}").texts == []


def test_frame_rows_refuse_a_column_named_twice_or_missing():
    twice = pd.DataFrame([["a", "b"]], columns=["text", "text"])
    with pytest.raises(InvalidParameterError, match="'text' appears more than once"):
        frame_rows(twice, "{text}")
    with pytest.raises(PlaceholderError, match="Column 'body' not found; columns are text, n"):
        frame_rows(pd.DataFrame({"text": ["a"], "n": [1]}), "{body}")


@pytest.mark.parametrize("template", ["{text!x}", "{text:>999999999999}", "{n:d}", "{text[0]}"])
def test_the_accessor_refuses_a_bad_placeholder_in_one_line(ctx, template):
    df = pd.DataFrame({"text": ["a cat", "a dog"], "n": ["1", "2"]})
    with pytest.raises(PlaceholderError, match=r"^[^\n]+$"):
        df.llm.generate(template, model=ctx, max_tokens=2)


@pytest.fixture(scope="module")
def shell():
    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "jupyter_localllm")
    return ip


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ("Tell me about {animal!x}.", "conversion !x"),
        ("Tell me about {animal:>999999999999}.", "the most is"),
        ("Tell me about {animal:d}.", "cannot format 'cat'"),
        ("Tell me about {animal:{w}}.", "format spec"),
        ("Tell me about {}.", "empty"),
    ],
)
def test_llm_cells_refuse_a_bad_placeholder_in_one_line(shell, capsys, cell, words):
    shell.user_ns["animal"] = "cat"
    capsys.readouterr()
    res = shell.run_cell(f"%%llm --no-stream --max-tokens 2\n{cell}")
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err and err.startswith("UsageError: "), err
    assert words in err
