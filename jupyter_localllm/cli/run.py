"""``jupyter-localllm run INPUT --out OUTPUT``: a prompt over every row of a table, written
as new columns; an interrupted run keeps its finished rows and a re-run resumes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pandas as pd

from .spec import BadInput, RunSpec, load_schema, parse_labels, template_of
from .tables import check_format, check_writable, read_table, write_table

__all__ = ["execute", "run"]

INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--out", "out_path", required=True, metavar="OUTPUT", help="File to write.")
@click.option("-t", "--template", help='Prompt with {column} placeholders, e.g. "Sum up: {text}".')
@click.option("-c", "--column", help="Use this column as the prompt (default: text).")
@click.option("--labels", metavar="A,B,C", help="Classify each row into one of these labels.")
@click.option("--schema", metavar="FILE", help="Extract the fields of this JSON schema.")
@click.option("-m", "--model", default="default", show_default=True, help="Model reference.")
@click.option("--n-seq-max", type=click.IntRange(1), help="Rows run in parallel [default: 8].")
@click.option("--max-tokens", type=click.IntRange(1), help="Most tokens per answer [256].")
@click.option("--seed", type=int, help="Random seed (each row derives its own).")
@click.option("--cluster", metavar="ADDRESS", help="Run on this Dask scheduler.")
@click.option("--column-out", metavar="NAME", help="Name of the output column (see above).")
def run(input_path: str, out_path: str, **options: str | int | None) -> int:
    """Run a prompt over every row of INPUT and write OUTPUT: INPUT's columns and new ones.

    INPUT and OUTPUT are .csv, .parquet or .jsonl files. The prompt is --template, or the
    --column (default: text) as it is. Each prompt goes to the model as a chat message.

    \b
    The new columns (NAME is --column-out):
      generate (default)  NAME (llm_output): the answer
      --labels A,B,C      NAME (label): the most probable label, by label scoring
      --schema FILE       one column per top-level property of the schema (named
                          NAME_property with --column-out), generated as JSON under it
      and NAME_error (llm_output_error, label_error, extract_error): why a row failed.

    Ctrl-C writes the rows finished so far to OUTPUT and exits with 130. Running the same
    command again resumes: only the rows that OUTPUT lacks (no value and no error, or an
    input that changed) are computed. Delete OUTPUT to compute every row again (after
    changing the prompt, the model or the options). --max-tokens and --seed apply to
    generate and extract. Bad input exits with 2.
    """
    spec = RunSpec(
        input=Path(input_path),
        out=Path(out_path),
        template=template_of(options["template"], options["column"]),
        labels=parse_labels(options["labels"]),
        schema=load_schema(options["schema"]),
        model=str(options["model"]),
        n_seq_max=options["n_seq_max"],
        max_tokens=options["max_tokens"],
        seed=options["seed"],
        cluster=options["cluster"],
        column_out=options["column_out"],
    )
    return execute(spec)


def execute(spec: RunSpec) -> int:
    """Run ``spec``: compute the rows OUTPUT lacks, write OUTPUT, say what was done."""
    from .runners import Interrupted, check_cluster, compute

    frame = _checked_input(spec)
    check_cluster(spec)
    added = _previous(spec, frame)
    todo = frame.index[added.isna().all(axis=1)]
    taken = len(frame) - len(todo)
    try:
        with _progress_bar(len(todo), spec.task) as report:
            computed = compute(spec, frame.loc[todo], report) if len(todo) else None
        interrupted = False
    except Interrupted as stop:
        computed, interrupted = stop.table, True
    if computed is not None:
        added.loc[computed.index, spec.columns] = computed[spec.columns]
    write_table(pd.concat([frame, added], axis=1), spec.out)
    n_computed = 0 if computed is None else len(computed)
    _report(spec, added, n_computed, taken, interrupted)
    return INTERRUPTED if interrupted else 0


def _checked_input(spec: RunSpec) -> pd.DataFrame:
    """INPUT, after checking the paths, the template's columns and the new columns' names."""
    from ..notebook.templates import check_fields

    check_format(spec.out, "OUTPUT")
    if spec.out.resolve() == spec.input.resolve():
        raise BadInput("OUTPUT must be another file than INPUT (a re-run reads both)")
    frame = read_table(spec.input, "INPUT")
    check_writable(spec.out)
    try:
        check_fields(spec.template, list(frame.columns))
    except ValueError as exc:
        raise BadInput(f"INPUT {spec.input}: {exc}") from None
    clash = [name for name in spec.columns if name in frame.columns]
    if clash:
        raise BadInput(
            f"INPUT {spec.input} already has a column {clash[0]!r}; name the new columns "
            "with --column-out"
        )
    return frame


def _previous(spec: RunSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The new columns, holding OUTPUT's values from an earlier run where its row is
    finished and its input is the same (empty everywhere when there is no OUTPUT)."""
    from ..notebook.templates import template_fields

    empty = [None] * len(frame)
    added = pd.DataFrame(dict.fromkeys(spec.columns, empty), index=frame.index, dtype=object)
    if not spec.out.exists():
        return added
    before = read_table(spec.out, "OUTPUT")
    fields = template_fields(spec.template)
    missing = [name for name in [*spec.columns, *fields] if name not in before.columns]
    if missing:
        raise BadInput(
            f"OUTPUT {spec.out} exists but has no column {missing[0]!r}, so it is not an "
            "earlier output of this command; delete it or choose another --out"
        )
    n = min(len(before), len(frame))
    same = pd.Series(True, index=frame.index[:n])
    for name in fields:
        pairs = zip(_texts(before[name].iloc[:n]), _texts(frame[name].iloc[:n]), strict=True)
        same &= pd.Series([a == b for a, b in pairs], index=same.index)
    kept = before[spec.columns].iloc[:n].astype(object)
    kept = kept.where(kept.notna(), None).set_axis(frame.index[:n])
    added.loc[same[same].index] = kept[same.to_numpy()]
    return added


def _texts(values: pd.Series) -> list[str | None]:
    """``values`` as text to compare an input between runs (``None`` where missing)."""
    return [None if pd.api.types.is_scalar(v) and pd.isna(v) else str(v) for v in values]


@contextlib.contextmanager
def _progress_bar(total: int, desc: str) -> Iterator:
    """The progress callback: a tqdm bar on stderr, drawn from the first event on (so an
    error while loading the model stays one line)."""
    from tqdm import tqdm

    bars: list[tqdm] = []

    def report(event) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=desc, unit="row", file=sys.stderr))
        bars[0].update(event.done - bars[0].n)

    try:
        yield report
    finally:
        for bar in bars:
            bar.close()


def _report(
    spec: RunSpec, added: pd.DataFrame, computed: int, taken: int, interrupted: bool
) -> None:
    """One line: what was written, computed now and taken from the previous run."""
    done = int(added.notna().any(axis=1).sum())
    errors = int(added[spec.error_column].notna().sum())
    counts = f"{computed} computed now, {taken} taken from the previous run, {errors} errors"
    if interrupted:
        print(
            f"Interrupted: wrote {done} of {len(added)} rows to {spec.out} ({counts}); run the "
            f"same command again to compute the other {len(added) - done}.",
            file=sys.stderr,
        )
    else:
        print(f"Wrote {len(added)} rows to {spec.out} ({counts}).")
