"""``jupyter-localllm run`` gives the user's own columns back unchanged (issue 25, family 6).

CSV cells are text: ``NA``, ``None``, ``null``, ``01234``, ``true``, empty cells, quotes,
newlines and commas in cells, a byte-order mark and CRLF line endings come back byte for byte.
JSON Lines values keep their JSON types and Parquet columns their Arrow types. A malformed
file (a ragged CSV, broken quoting, a line that is no JSON object) is exit 2 naming the line;
a file in another encoding is exit 2 suggesting ``--encoding``, or read with it. Each case
runs the real command in a subprocess on the packaged default model (few rows, few tokens).
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli_run import cli, counts

BOM = "\ufeff"
# The CSV's records as written by hand: the text a run must give back untouched.
HEADER = 'id,text,flag,"note, with comma"'
RECORDS = [
    '01234,NA,true,""',
    '00,None,FALSE,"He said ""hi"""',
    '7,null,True,"two\r\nlines"',
    "8,,,plain",
    '"9","Name the capital of France.",yes,  spaced  ',
    '1e3,"Olá, café — ünïcode ✓","multi\nline\ncell",-0',
]


def csv_cells(text: str) -> list[list[str]]:
    """``text``'s records as cells (Python's csv reader: text only, no inference)."""
    return list(csv.reader(io.StringIO(text, newline="")))


def one_line_error(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_csv_columns_come_back_byte_for_byte(tmp_path):
    source = tmp_path / "tricky.csv"
    written = BOM + HEADER + "\r\n" + "".join(r + "\r\n" for r in RECORDS)
    source.write_bytes(written.encode("utf-8"))
    out = tmp_path / "out.csv"
    done = cli(tmp_path, source, "-o", out, "--max-tokens", "2")
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == (6, 0)

    text = out.read_bytes().decode("utf-8")
    assert text.startswith(BOM + HEADER + ",llm_output,llm_output_error\r\n")
    position = 0
    for record in RECORDS:  # every record's own text, then the new cells, in order
        found = text.find("\n" + record + ",", position)
        assert found >= 0, f"{record!r} not found unchanged after position {position}"
        position = found + len(record)
    rows_in = csv_cells(written[1:])
    rows_out = csv_cells(text[1:])
    assert len(rows_out) == len(rows_in)
    assert [row[:4] for row in rows_out] == rows_in  # the input cells, as text, exactly
    errors = [row[5] for row in rows_out[1:]]
    # "NA", "None" and "null" are texts the model answers; only the empty cell is an error
    assert [bool(e) for e in errors] == [False, False, False, True, False, False]
    assert "blank" in errors[3]


def test_csv_without_bom_keeps_lf_and_a_last_line_without_newline(tmp_path):
    source = tmp_path / "plain.csv"
    source.write_text("text,n\nhello,01\nworld,true", encoding="utf-8", newline="")
    out = tmp_path / "out.csv"
    done = cli(tmp_path, source, "-o", out, "--max-tokens", "1")
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert not data.startswith(BOM.encode()) and b"\r" not in data
    lines = data.decode().split("\n")
    assert lines[0] == "text,n,llm_output,llm_output_error"
    assert lines[1].startswith("hello,01,") and lines[2].startswith("world,true,")


MALFORMED = {
    "an extra field": ("id,text\n1,a\n2,b,c\n", "line 3 has 3 fields, the header has 2"),
    "a missing field": ("id,text\n1,a\n2\n", "line 3 has 1 fields, the header has 2"),
    "extra fields on every row": ("text\na,1\nb,2\n", "line 2 has 2 fields"),
    "after a multi-line cell": ('id,text\n1,"a\nb"\n2,c,d\n', "line 4 has 3 fields"),
    "a quote inside a quoted cell": ('id,text\n1,"a"b\n', "line 2"),
    "an unterminated quote": ('id,text\n1,a\n2,"open\n', "line 3"),
    "two columns of one name": ("text,text\na,b\n", "two columns named 'text'"),
    "an empty file": ("", "empty"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_csv_is_exit_2_naming_the_line(tmp_path, case):
    content, words = MALFORMED[case]
    (tmp_path / "bad.csv").write_text(content, encoding="utf-8", newline="")
    done = cli(tmp_path, "bad.csv", "-o", "out.csv")
    assert done.returncode == 2, done.stderr
    line = one_line_error(done)
    assert "bad.csv" in line and words in line, line
    assert not (tmp_path / "out.csv").exists()


def test_malformed_jsonl_is_exit_2_naming_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"\n', encoding="utf-8")
    (tmp_path / "list.jsonl").write_text('{"text": "a"}\n\n["text"]\n', encoding="utf-8")
    for name, words in (("bad.jsonl", "line 2"), ("list.jsonl", "line 3 is a JSON list")):
        done = cli(tmp_path, name, "-o", "out.jsonl")
        assert done.returncode == 2, done.stderr
        assert words in one_line_error(done)


def test_latin1_input_needs_and_takes_encoding(tmp_path):
    source = tmp_path / "latin.csv"
    source.write_bytes("text,city\nSay hi,Zürich\nSay bye,Café\n".encode("latin-1"))
    refused = cli(tmp_path, source, "-o", "out.csv")
    assert refused.returncode == 2
    line = one_line_error(refused)
    assert "latin.csv" in line and "line 2" in line and "--encoding latin-1" in line
    assert not (tmp_path / "out.csv").exists()

    done = cli(tmp_path, source, "-o", "out.csv", "--encoding", "latin-1", "--max-tokens", "1")
    assert done.returncode == 0, done.stderr
    rows = csv_cells((tmp_path / "out.csv").read_text(encoding="utf-8"))  # OUTPUT is UTF-8
    expected = [["text", "city"], ["Say hi", "Zürich"], ["Say bye", "Café"]]
    assert [row[:2] for row in rows] == expected

    unknown = cli(tmp_path, source, "-o", "out2.csv", "--encoding", "klingon")
    assert unknown.returncode == 2 and "klingon" in one_line_error(unknown)


def test_utf16_with_a_bom_is_read_and_without_one_is_a_clear_error(tmp_path):
    text = "text,n\nSay hi ✓,01\n"
    (tmp_path / "bom16.csv").write_bytes(text.encode("utf-16"))  # with a byte-order mark
    done = cli(tmp_path, "bom16.csv", "-o", "out.csv", "--max-tokens", "1")
    assert done.returncode == 0, done.stderr
    data = (tmp_path / "out.csv").read_bytes()
    assert data.startswith(BOM.encode("utf-8"))  # the BOM is kept, the text is UTF-8
    assert csv_cells(data.decode("utf-8")[1:])[1][:2] == ["Say hi ✓", "01"]

    (tmp_path / "bare16.csv").write_bytes(text.encode("utf-16-le"))
    refused = cli(tmp_path, "bare16.csv", "-o", "out2.csv")
    assert refused.returncode == 2 and "--encoding utf-16-le" in one_line_error(refused)


JSON_RECORDS = [
    '{"id": "01234", "text": "NA", "n": 1234, "x": null, "ok": true, "f": 1.10, "big": '
    "1180591620717411303424}",
    '{"id": "00", "text": "null", "n": null, "nested": {"a": [1, "b"]}, "f": 2.5e-3}',
    '{"text":"Line\u2028sep and \\"quotes\\"","ok":false,"f":0}   ',  # a raw U+2028
]


def test_jsonl_values_keep_their_json_types_and_text(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(JSON_RECORDS) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = cli(tmp_path, source, "-o", out, "--max-tokens", "1")
    assert done.returncode == 0, done.stderr
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 4
    for given, written in zip(JSON_RECORDS, lines, strict=False):
        body = given.rstrip()
        assert written.startswith(body[:-1] + ", "), written  # the record's own text first
        record = json.loads(written)
        original = json.loads(given)
        assert {k: record[k] for k in original} == original
        assert [type(record[k]) for k in original] == [type(v) for v in original.values()]
        assert set(record) == {*original, "llm_output", "llm_output_error"}
    again = cli(tmp_path, source, "-o", out, "--max-tokens", "1")
    assert again.returncode == 0 and counts(again.stdout) == (0, 3), again.stderr


def test_parquet_columns_keep_their_arrow_types(tmp_path):
    table = pa.table(
        {
            "id": pa.array(["01234", "NA", None], pa.string()),
            "text": pa.array(["Say hi", "null", "None"], pa.large_string()),
            "n": pa.array([1, None, 3], pa.int64()),
            "small": pa.array([1, 2, 3], pa.int8()),
            "flag": pa.array([True, None, False]),
            "when": pa.array([0, 1, None], pa.timestamp("ms", tz="UTC")),
            "tags": pa.array([["a"], [], None], pa.list_(pa.string())),
            "price": pa.array([1.5, None, 2.25], pa.float32()),
            "kind": pa.array(["x", "y", "x"]).dictionary_encode(),
        },
        metadata={b"owner": b"me"},
    )
    source = tmp_path / "typed.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out.parquet"
    done = cli(tmp_path, source, "-o", out, "--max-tokens", "1")
    assert done.returncode == 0, done.stderr
    written = pq.read_table(out)
    assert written.column_names == [*table.column_names, "llm_output", "llm_output_error"]
    assert written.select(table.column_names).equals(table)
    assert written.schema.metadata[b"owner"] == b"me"
    assert written.schema.field("llm_output").type == pa.string()
    again = cli(tmp_path, source, "-o", out, "--max-tokens", "1")
    assert again.returncode == 0 and counts(again.stdout) == (0, 3), again.stderr
    assert pq.read_table(out).equals(written)
