"""``annotation_sink_csv``: every batch entry point appends its finished rows to a CSV as they
finish, on the real default model. An interrupted run leaves a valid file holding exactly the
rows it finished; a re-run appends only the missing rows (header once, no row twice); a partial
last line left by a killed writer is cut off; text comes back byte for byte."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import SENTIMENT, TEXTS, chat

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers df.llm
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
# Texts a careless CSV writer or reader changes: NA-like words, leading zeros, separators,
# quotes, line breaks of both kinds, non-ASCII, leading and trailing spaces.
TRICKY = ["NA", "01234", 'a,"b"\nc', "é\r\nx ", " null", "", "1e3", "True"]


def strict_rows(path: Path) -> list[list[str]]:
    """The file parsed by Python's csv module in strict mode (a half-written line fails)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "the file ends in the middle of a line"
    text = data.decode("utf-8", "surrogatepass")
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


def stop_after(n: int):
    """A ``progress=`` callable that raises KeyboardInterrupt (Ctrl-C) once ``n`` rows are done."""

    def progress(event: ll.Progress) -> None:
        if event.done >= n:
            raise KeyboardInterrupt

    return progress


@pytest.fixture(scope="module")
def prompts(model):
    return [chat(model, f"Name an animal that starts with the letter {c}.") for c in "ABCDEF"]


# -- interrupted, resumed, repaired ---------------------------------------------------------
def test_interrupted_run_leaves_a_valid_csv_and_a_rerun_appends_only_missing_rows(
    ctx2, prompts, tmp_path
):
    path = tmp_path / "answers.csv"
    with pytest.raises(BatchInterrupted) as info:
        ll.generate_parallel(ctx2, prompts, max_tokens=6, sink=path, progress=stop_after(2))
    finished = {r.row: r for r in info.value.results if r.finish_reason != "cancelled"}
    assert 2 <= len(finished) < len(prompts)

    rows = strict_rows(path)
    header = ["row", "model", "text", "finish_reason", "n_tokens", "error", "prompt_hash"]
    assert rows[0] == header
    assert {int(r[0]) for r in rows[1:]} == set(finished)  # exactly the finished rows
    table = ll.annotation_sink_csv(path).read()
    for row, text in zip(table.row, table.text, strict=True):
        assert text == str(finished[row])
    first = path.read_bytes()

    seen: list[int] = []
    again = ll.generate_parallel(
        ctx2, prompts, max_tokens=6, sink=ll.annotation_sink_csv(path), on_result=seen.append
    )
    assert path.read_bytes().startswith(first)  # the first run's lines are untouched
    rows = strict_rows(path)
    assert sum(r[0] == "row" for r in rows) == 1  # the header once
    assert sorted(int(r[0]) for r in rows[1:]) == list(range(len(prompts)))  # each row once
    table = ll.annotation_sink_csv(path).read().set_index("row")
    for res in again:
        if res.row not in finished:
            assert table.loc[res.row, "text"] == str(res)
            assert table.loc[res.row, "n_tokens"] == res.n_tokens

    ll.generate_parallel(ctx2, prompts, max_tokens=6, sink=path)  # complete: nothing to add
    assert len(strict_rows(path)) == len(prompts) + 1


def test_changed_prompts_are_new_rows(ctx2, prompts, tmp_path):
    path = tmp_path / "answers.csv"
    ll.generate_parallel(ctx2, prompts[:2], max_tokens=4, sink=path)
    ll.generate_parallel(ctx2, [prompts[0], prompts[3]], max_tokens=4, sink=path)
    table = ll.annotation_sink_csv(path).read()
    assert list(table.row) == [0, 1, 1]  # row 1 ran another prompt: a row of its own
    assert table.prompt_hash.nunique() == 3


def test_partial_last_line_of_a_killed_writer_is_cut_off(ctx2, prompts, tmp_path):
    path = tmp_path / "answers.csv"
    ll.generate_parallel(ctx2, prompts[:3], max_tokens=4, sink=path)
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    # the last row's line, as a process killed in the middle of writing it leaves it
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        ll.generate_parallel(ctx2, prompts[:3], max_tokens=4, sink=path)
    assert path.read_bytes() == whole  # cut off, then the row written again, whole
    strict_rows(path)


def test_a_half_written_header_is_replaced(ctx2, prompts, tmp_path):
    path = tmp_path / "answers.csv"
    path.write_bytes(b'"row","mod')
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        ll.generate_parallel(ctx2, prompts[:1], max_tokens=4, sink=path)
    rows = strict_rows(path)
    assert rows[0][:2] == ["row", "model"] and len(rows) == 2


def test_other_files_are_refused_before_anything_runs(ctx2, prompts, tmp_path):
    path = tmp_path / "answers.csv"
    ll.generate_parallel(ctx2, prompts[:1], max_tokens=4, sink=path)
    before = path.read_bytes()
    seen: list = []
    with pytest.raises(InvalidParameterError, match=r"has the columns .* give another file"):
        ll.classify(ctx2, TEXTS[:2], SENTIMENT, sink=path, on_result=seen.append, progress=False)
    assert seen == [] and path.read_bytes() == before

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes, not a CSV")  # no line break: must not be 'repaired'
    with pytest.raises(InvalidParameterError, match="not a CSV file"):
        ll.generate_parallel(ctx2, prompts[:1], max_tokens=4, sink=notes)
    assert notes.read_bytes() == b"my notes, not a CSV"
    with pytest.raises(InvalidParameterError, match="folder"):
        ll.annotation_sink_csv(tmp_path)
    with pytest.raises(InvalidParameterError, match="CSV file path"):
        ll.generate_parallel(ctx2, prompts[:1], sink=3)


# -- every entry point ----------------------------------------------------------------------
def test_classify_writes_labels_and_probabilities_exactly(ctx2, tmp_path):
    path = tmp_path / "labels.csv"
    texts = TEXTS * 3
    cancel = threading.Event()

    def progress(event: ll.Progress) -> None:
        if event.done >= 2:
            cancel.set()

    with pytest.raises(BatchInterrupted) as info:
        ll.classify(ctx2, texts, SENTIMENT, sink=path, cancel=cancel, progress=progress)
    done = [r.row for r in info.value.results if r.finish_reason != "cancelled"]
    assert 2 <= len(done) < len(texts)
    assert sorted(int(r[0]) for r in strict_rows(path)[1:]) == done

    out = ll.classify(ctx2, texts, SENTIMENT, sink=path, progress=False)
    table = ll.annotation_sink_csv(path).read().sort_values("row", ignore_index=True)
    assert list(table.columns) == ["row", "model", "label", *SENTIMENT, "error", "prompt_hash"]
    assert list(table.label) == list(out.label)
    for label in SENTIMENT:  # floats round-trip exactly
        assert list(table[label]) == list(out[label])
    assert table.error.isna().all()


def test_extract_writes_fields_and_errors(ctx2, tmp_path):
    path = tmp_path / "people.csv"
    values = ll.extract(ctx2, ["Anna is 30.", ""], SCHEMA, max_tokens=24, sink=path)
    table = ll.annotation_sink_csv(path).read().sort_values("row", ignore_index=True)
    assert list(table.columns) == ["row", "model", "name", "error", "prompt_hash"]
    assert table.name[0] == values[0]["name"] and table.error[0] is None
    assert table.name[1] is None and table.error[1] == values[1].error


def test_explore_writes_annotations_and_text_round_trips(tmp_path):
    path = tmp_path / "annotations.csv"
    data = pd.DataFrame({"text": TEXTS[:3], "gold": TRICKY[:3]}, index=TRICKY[3:6])
    models = {"smol": "default"}
    result = ll.explore(models, data=data, truth="gold", labels=SENTIMENT, sink=path)
    table = ll.annotation_sink_csv(path).read()
    columns = ["sample_id", "model_id", "label", "truth"]
    assert list(table.columns) == [*columns, "prompt_hash"]
    pd.testing.assert_frame_equal(table[columns], result.annotations.astype(object))
    assert list(table.sample_id) == TRICKY[3:6] and list(table.truth) == TRICKY[:3]
    assert pd.read_csv(path, dtype=str, keep_default_na=False).truth.tolist() == TRICKY[:3]

    ll.explore(models, data=data, truth="gold", labels=SENTIMENT, sink=path, batch_size=2)
    assert len(ll.annotation_sink_csv(path).read()) == 3  # nothing missing, nothing added


def test_accessors_write_rows_by_index_label(ctx2, tmp_path):
    frame = pd.DataFrame({"text": TEXTS[:3]}, index=TRICKY[:3])
    path = tmp_path / "gen.csv"
    answers = frame.llm.generate("{text}", max_tokens=4, sink=path, progress=False)
    table = ll.annotation_sink_csv(path).read().set_index("index")
    assert sorted(table.index) == sorted(TRICKY[:3])
    for label, answer in answers.items():
        assert table.loc[label, "text"] == str(answer)

    path = tmp_path / "labels.csv"
    labels = frame.llm.classify("{text}", SENTIMENT, sink=path, progress=False)
    table = ll.annotation_sink_csv(path).read().set_index("index")
    assert table.label.to_dict() == labels.to_dict()

    path = tmp_path / "fields.csv"
    fields = frame.llm.extract("{text}", SCHEMA, sink=path, max_tokens=24, progress=False)
    table = ll.annotation_sink_csv(path).read().set_index("index")
    assert table.name.to_dict() == fields.name.to_dict()


def test_every_kind_of_text_round_trips(ctx2, tmp_path):
    """Row texts the writer must quote: the accessor writes each rendered error message and
    index label; the prompts' hashes and labels come back as they went in."""
    frame = pd.DataFrame({"text": [" "] * len(TRICKY)}, index=TRICKY)  # every row fails
    path = tmp_path / "tricky.csv"
    out = frame.llm.generate("{text}", sink=path, progress=False)
    table = ll.annotation_sink_csv(path).read()
    assert sorted(table["index"]) == sorted(TRICKY)
    assert set(table.error) == {r.error for r in out}
    assert table.text.isna().all()
