"""``jupyter-localllm run``: the real command in a subprocess, on the packaged default model.

Each test writes a small table (8 to 12 rows), runs the command on it and reads what it wrote:
the new columns for CSV, Parquet and JSON Lines (generate, classify with --labels, extract with
--schema), an interrupt (SIGINT once some rows are done: exit 130, the finished rows written)
and the re-run that computes only the missing rows, and one line with exit code 2 for each kind
of bad input. The result cache is off, so every count is of rows really computed.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

TEXTS = [
    "The striker scored twice as the home side won the cup final.",
    "Shares fell sharply after the bank reported lower profits.",
    "The government announced new elections for the spring.",
    "A new smartphone chip promises longer battery life.",
    "The tennis champion lost in the first round.",
    "Oil prices rose for the third week in a row.",
    "Leaders met in Geneva to discuss the ceasefire.",
    "Researchers released an open source language model.",
]
LABELS = ["Sports", "Business", "World", "Tech"]
SUMMARY = re.compile(r"(\d+) computed now, (\d+) taken from the previous run")


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a run: no result cache, caches in this test's folder."""
    return {
        **os.environ,
        "LOCALLLM_RESULT_CACHE": "0",
        "LOCALLLM_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "jupyter_localllm", "run", *map(str, args)]


def cli(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """Run ``jupyter-localllm run ARGS`` to its end."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(tmp_path),
        timeout=600,
    )


def counts(stream: str) -> tuple[int, int]:
    """(computed now, taken from the previous run) from a run's summary line."""
    found = SUMMARY.findall(stream)
    assert found, f"no summary line in {stream!r}"
    computed, taken = found[-1]
    return int(computed), int(taken)


def news(path: Path, texts: list[str] = TEXTS) -> Path:
    """``texts`` as a table with ``id`` and ``text`` columns, in ``path``'s format."""
    frame = pd.DataFrame({"id": range(len(texts)), "text": texts})
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return path


def test_generate_csv_writes_answers_and_errors_and_a_rerun_computes_nothing(tmp_path):
    texts = [*TEXTS[:7], None]  # the last row has no text: an error in its place
    source = tmp_path / "news.csv"
    pd.DataFrame({"id": range(8), "text": texts}).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    args = (source, "--out", out, "--template", "Summarise in five words: {text}")

    done = cli(tmp_path, *args, "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == (8, 0)
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "text", "llm_output", "llm_output_error"]
    assert table["id"].tolist() == list(range(8))
    answered = table.iloc[:7]
    assert answered["llm_output"].notna().all() and answered["llm_output_error"].isna().all()
    assert pd.isna(table.at[7, "llm_output"])
    assert "blank" in table.at[7, "llm_output_error"]  # CSV cells are text: an empty one

    again = cli(tmp_path, *args, "--max-tokens", "8")
    assert again.returncode == 0, again.stderr
    assert counts(again.stdout) == (0, 8)  # the error row is finished too
    pd.testing.assert_frame_equal(pd.read_csv(out), table)


def test_classify_parquet_writes_one_label_per_row(tmp_path):
    source = news(tmp_path / "news.parquet")
    out = tmp_path / "labelled.parquet"
    done = cli(tmp_path, source, "-o", out, "--labels", ",".join(LABELS), "--column-out", "topic")
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == (8, 0)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["id", "text", "topic", "topic_error"]
    assert table["text"].tolist() == TEXTS
    assert set(table["topic"]) <= set(LABELS)
    assert table["topic_error"].isna().all()


def test_extract_jsonl_writes_a_column_per_schema_property(tmp_path):
    source = news(tmp_path / "news.jsonl")
    schema = {
        "type": "object",
        "properties": {
            "topic": {"type": "string", "enum": [label.lower() for label in LABELS]},
            "positive": {"type": "boolean"},
        },
        "required": ["topic", "positive"],
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    out = tmp_path / "fields.jsonl"
    done = cli(tmp_path, source, "-o", out, "--schema", "schema.json", "--max-tokens", "24")
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == (8, 0)
    table = pd.read_json(out, lines=True)
    assert list(table.columns) == ["id", "text", "topic", "positive", "extract_error"]
    assert table["extract_error"].isna().all(), table["extract_error"].tolist()
    assert set(table["topic"]) <= {label.lower() for label in LABELS}
    assert set(table["positive"]) <= {True, False}


class Stderr:
    """A process's stderr, read in a thread, so the test can wait for its progress bar."""

    def __init__(self, process: subprocess.Popen):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(256), b""):
            self.text += chunk.decode("utf-8", "replace")

    def rows_done(self, total: int) -> int:
        """The last count the progress bar showed (0 before it)."""
        found = re.findall(rf"\b(\d+)/{total}\b", self.text)
        return int(found[-1]) if found else 0

    def finish(self) -> str:
        self._thread.join(timeout=60)
        return self.text


def test_interrupt_writes_the_finished_rows_and_a_rerun_computes_the_rest(tmp_path, ctrl_c):
    texts = [f"Count from {i} to {i + 50}, one number per line." for i in range(12)]
    source = news(tmp_path / "numbers.csv", texts)
    out = tmp_path / "numbers_out.csv"
    args = (source, "-o", out, "--n-seq-max", "1", "--max-tokens", "32")
    process = subprocess.Popen(
        command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(tmp_path)
    )
    stderr = Stderr(process)
    deadline = time.monotonic() + 300  # only a guard against a hang, not a timing check
    while stderr.rows_done(12) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before the interrupt: {stderr.text}"
    process.send_signal(signal.SIGINT)
    process.wait(timeout=300)  # stderr is read by its thread only
    message = stderr.finish()

    assert process.returncode == 130, message
    partial = pd.read_csv(out)
    assert partial["text"].tolist() == texts  # every input row, answers for the finished ones
    finished = partial["llm_output"].notna()
    n_done = int(finished.sum())
    assert 2 <= n_done < 12
    assert partial["llm_output_error"].isna().all()
    said = re.search(r"Interrupted: wrote (\d+) of 12 rows .*\((\d+) computed now", message)
    assert said is not None, message
    assert int(said.group(1)) == int(said.group(2)) == n_done

    again = cli(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert counts(again.stdout) == (12 - n_done, n_done)
    final = pd.read_csv(out)
    assert final["llm_output"].notna().all()
    pd.testing.assert_series_equal(final["llm_output"][finished], partial["llm_output"][finished])


def test_cluster_runs_the_rows_on_a_dask_scheduler(tmp_path):
    distributed = pytest.importorskip("distributed")
    from jupyter_localllm.notebook.accessor import LLMFrameAccessor

    if "cluster" not in inspect.signature(LLMFrameAccessor.classify).parameters:
        pytest.skip("this version's df.llm has no cluster= option")
    source = news(tmp_path / "news.csv")
    out = tmp_path / "on_cluster.csv"
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        address = cluster.scheduler_address
        done = cli(tmp_path, source, "-o", out, "--labels", ",".join(LABELS), "--cluster", address)
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == (8, 0)
    table = pd.read_csv(out)
    assert set(table["label"]) <= set(LABELS) and table["label_error"].isna().all()


@pytest.fixture
def inputs(tmp_path):
    """A folder holding good and bad inputs for the bad-input cases."""
    news(tmp_path / "news.csv")
    (tmp_path / "broken.parquet").write_text("not a parquet file")
    (tmp_path / "notes.txt").write_text("text\nhello\n")
    (tmp_path / "not_json.json").write_text("{'type': 'object'")
    (tmp_path / "no_properties.json").write_text('{"type": "object"}')
    return tmp_path


BAD_INPUTS = {
    "missing column": (["news.csv", "-o", "o.csv", "--column", "body"], "Column 'body'"),
    "missing file": (["absent.csv", "-o", "o.csv"], "does not exist"),
    "unreadable file": (["broken.parquet", "-o", "o.csv"], "cannot read INPUT"),
    "wrong input extension": (["notes.txt", "-o", "o.csv"], "'.txt'"),
    "wrong output extension": (["news.csv", "-o", "o.xlsx"], "'.xlsx'"),
    "schema not JSON": (["news.csv", "-o", "o.csv", "--schema", "not_json.json"], "not JSON"),
    "schema without properties": (
        ["news.csv", "-o", "o.csv", "--schema", "no_properties.json"],
        "'properties'",
    ),
    "unknown model": (["news.csv", "-o", "o.csv", "-m", "no-such-model"], "no-such-model"),
    "one label": (["news.csv", "-o", "o.csv", "--labels", "Sports"], "two distinct labels"),
    "missing --out": (["news.csv"], "--out"),
    # a placeholder that cannot be read or filled: one line, before the model loads
    "unknown conversion": (["news.csv", "-o", "o.csv", "-t", "{text!x}"], "conversion !x"),
    "number spec on text": (["news.csv", "-o", "o.csv", "-t", "{text:d}"], "cannot format"),
    "huge width": (["news.csv", "-o", "o.csv", "-t", "{text:>999999999999}"], "the most is"),
    "huge precision": (["news.csv", "-o", "o.csv", "-t", "{text:.99999999}"], "the most is"),
    "nested spec": (["news.csv", "-o", "o.csv", "-t", "{text:{id}}"], "format spec"),
    "positional": (["news.csv", "-o", "o.csv", "-t", "{0}"], "Column '0'"),
    "empty placeholder": (["news.csv", "-o", "o.csv", "-t", "{} {text}"], "empty"),
    "attribute": (["news.csv", "-o", "o.csv", "-t", "{text.upper}"], "no .attribute"),
    "index": (["news.csv", "-o", "o.csv", "-t", "{text[0]}"], "[index]"),
    "unbalanced": (["news.csv", "-o", "o.csv", "-t", "{text"], "braces"),
    "lone closing": (["news.csv", "-o", "o.csv", "-t", "text}"], "braces"),
    "unknown encoding": (["news.csv", "-o", "o.csv", "--encoding", "nope"], "'nope'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_prints_one_line_and_exits_2(inputs, case):
    args, words = BAD_INPUTS[case]
    done = cli(inputs, *args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert words in lines[0]
    assert "Traceback" not in done.stderr
    assert not (inputs / "o.csv").exists() and not (inputs / "o.xlsx").exists()


def test_the_console_script_and_python_m_know_every_command(tmp_path):
    script = Path(sys.executable).with_name("jupyter-localllm")
    if not script.exists():
        pytest.skip("the package is not installed with its console script here")
    for program in ([str(script)], [sys.executable, "-m", "jupyter_localllm"]):
        shown = subprocess.run(
            [*program, "--help"], capture_output=True, text=True, env=cli_env(tmp_path)
        )
        assert shown.returncode == 0, shown.stderr
        for name in ("run", "demo", "hardware", "models"):
            assert re.search(rf"^\s+{name}\s", shown.stdout, re.MULTILINE), shown.stdout


# --- what made OUTPUT: a re-run resumes only the same recipe --------------------------------


def two_rows(tmp_path: Path) -> Path:
    return news(tmp_path / "two.csv", ["France", "Japan"])


def test_a_changed_template_or_model_computes_every_row_again(tmp_path):
    from gguf_edit import write_copy

    from jupyter_localllm.models import default_model_path

    source, out = two_rows(tmp_path), tmp_path / "out.csv"
    first = ("-o", out, "--max-tokens", "4", "--template", "Name the country of {text}.")
    assert counts(cli(tmp_path, source, *first).stdout) == (2, 0)
    assert counts(cli(tmp_path, source, *first).stdout) == (0, 2)

    other = cli(tmp_path, source, *first[:-1], "Translate to German: {text}")
    assert other.returncode == 0, other.stderr
    assert "was made with another --template/--column: computing every row" in other.stderr
    assert counts(other.stdout) == (2, 0)
    recorded = json.loads((tmp_path / "out.csv.localllm.json").read_text())
    assert recorded["template"] == "Translate to German: {text}"

    second = ("-o", out, "--max-tokens", "4", "--template", "Translate to German: {text}")
    same_bytes = tmp_path / "same.gguf"  # another path, the same file: still the same model
    same_bytes.write_bytes(default_model_path().read_bytes())
    assert counts(cli(tmp_path, source, *second, "-m", same_bytes).stdout) == (0, 2)
    edited = write_copy(default_model_path(), tmp_path / "edited.gguf", {"general.name": "x"})
    changed = cli(tmp_path, source, *second, "-m", edited)
    assert changed.returncode == 0, changed.stderr
    assert "another --model (another model file)" in changed.stderr
    assert counts(changed.stdout) == (2, 0)

    (tmp_path / "out.csv.localllm.json").unlink()  # no record: nothing can be trusted
    unknown = cli(tmp_path, source, *second, "-m", edited)
    assert "has no record of how it was made" in unknown.stderr
    assert counts(unknown.stdout) == (2, 0)


def test_labels_that_read_as_missing_values_are_finished_rows(tmp_path):
    source = two_rows(tmp_path)
    for out in ("out.csv", "out.jsonl", "out.parquet"):
        args = (source, "-o", out, "--labels", "NA,None,null")
        first = cli(tmp_path, *args)
        assert first.returncode == 0 and counts(first.stdout) == (2, 0), first.stderr
        again = cli(tmp_path, *args)
        assert counts(again.stdout) == (0, 2), out


def _mount_small_disk(folder: Path) -> bool:
    """A 64 KiB tmpfs on ``folder`` (root only); ``False`` where it cannot be mounted."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]
    return subprocess.run(mount, capture_output=True).returncode == 0


def _small_files() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))  # Python ignores SIGXFSZ


def test_a_full_disk_names_the_file_and_keeps_the_previous_output(tmp_path):
    disk = tmp_path / "disk"
    mounted = _mount_small_disk(disk)
    try:
        frame = pd.DataFrame({"text": ["France", "Japan"], "notes": ["a", "b"]})
        frame.to_csv(tmp_path / "in.csv", index=False)
        out = disk / "out.csv"
        args = (tmp_path / "in.csv", "-o", out, "--max-tokens", "2")
        assert cli(tmp_path, *args).returncode == 0
        before = out.read_bytes()
        frame["notes"] = ["x" * 60_000, "y" * 60_000]  # not in the prompt: rows are taken
        frame.to_csv(tmp_path / "in.csv", index=False)
        done = subprocess.run(
            command(*args),
            capture_output=True,
            text=True,
            env=cli_env(tmp_path),
            preexec_fn=None if mounted else _small_files,
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error: cannot write "), done.stderr
        assert str(out) in lines[0] and "the previous out.csv is unchanged" in lines[0]
        assert out.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["out.csv", "out.csv.localllm.json"]
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


def test_error_lines_advise_only_options_the_command_has(tmp_path):
    from jupyter_localllm.cli import cli_advice
    from jupyter_localllm.cli.run import run
    from jupyter_localllm.errors import InsufficientMemoryError, ModelLoadError
    from jupyter_localllm.models import check_memory, default_model_path

    with pytest.raises(InsufficientMemoryError) as raised:
        check_memory(default_model_path(), available=1)
    context = ModelLoadError(
        "llama.cpp could not create a context with n_ctx=8192, n_seq_max=8; try a smaller "
        "n_ctx (memory) or n_seq_max."
    )
    options = {name for param in run.params for name in param.opts}
    for error in (raised.value, context):
        line = cli_advice(error)
        assert "check_memory" not in line and "smaller n_ctx" not in line, line
        named = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", line))
        assert named and named <= options, (line, named - options)
