"""``jupyter-localllm run INPUT --out OUTPUT``: a prompt over every row of a table, written
as new columns; an interrupted run keeps its finished rows and a re-run resumes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pandas as pd

from .. import defaults
from ..tasks.rows import check_fields, render, template_fields
from .output import cell_text, check_writable, write_output
from .recipe import changes, make_recipe, read_recipe, recipe_path, write_recipe
from .signals import StopSignals
from .spec import BadInput, RunSpec, load_schema, parse_labels, template_of
from .tables import Table, check_encoding, check_format, read_table

__all__ = ["execute", "run"]

# The options ``run`` and the other commands share (one declaration, one help text).
model_option = click.option(
    "-m", "--model", default=defaults.DEFAULT_MODEL, show_default=True, help="Model reference."
)
max_tokens_option = click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=defaults.MAX_TOKENS,
    show_default=True,
    help="Most tokens per answer.",
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--out", "out_path", required=True, metavar="OUTPUT", help="File to write.")
@click.option("-t", "--template", help='Prompt with {column} placeholders, e.g. "Sum up: {text}".')
@click.option("-c", "--column", help="Use this column as the prompt (default: text).")
@click.option("--labels", metavar="A,B,C", help="Classify each row into one of these labels.")
@click.option("--schema", metavar="FILE", help="Extract the fields of this JSON schema.")
@model_option
@click.option(
    "--n-seq-max",
    type=click.IntRange(1),
    default=defaults.N_SEQ_MAX,
    show_default=True,
    help="Rows run in parallel.",
)
@max_tokens_option
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=defaults.SEED,
    show_default=True,
    help="Random seed (each row derives its own).",
)
@click.option(
    "--deterministic/--no-deterministic",
    default=defaults.DETERMINISTIC,
    show_default=True,
    help="A row's text depends only on its prompt, the model, the sampling options and its "
    "seed, not on --n-seq-max, its neighbours or the cluster (slower; README, Reproducibility).",
)
@click.option("--cluster", metavar="ADDRESS", help="Run on this Dask scheduler.")
@click.option("--column-out", metavar="NAME", help="Name of the output column (see above).")
@click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    help="INPUT's text encoding (CSV, JSON Lines) when it has no byte-order mark.",
)
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

    INPUT's own columns are written back unchanged: CSV cells are text (NA, 01234 and true
    stay as written), JSON Lines values and Parquet types are kept. Text files are read as
    --encoding unless a byte-order mark names theirs; OUTPUT text files are UTF-8.

    Ctrl-C, SIGTERM and SIGHUP write the rows finished so far to OUTPUT and exit with 130,
    143 and 129. Running the same command again resumes: only the rows that OUTPUT lacks
    (no value and no error, or an input that changed) are computed. OUTPUT.localllm.json
    records what made OUTPUT (task, template, labels or schema, --max-tokens, --seed, the
    model file's SHA-256): when one of them changed, every row is computed again.
    --max-tokens and --seed apply to generate and extract. Bad input exits with 2, a
    failure while running with 1.
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
        deterministic=bool(options["deterministic"]),
        cluster=options["cluster"],
        column_out=options["column_out"],
        encoding=check_encoding(str(options["encoding"])),
    )
    return execute(spec)


def execute(spec: RunSpec) -> int:
    """Run ``spec``: compute the rows OUTPUT lacks, write OUTPUT, say what was done."""
    from .runners import Interrupted, compute

    with StopSignals() as stop:
        table = _checked_input(spec)
        recipe = make_recipe(spec)
        frame = table.frame
        added = _previous(spec, frame, recipe)
        todo = frame.index[added.isna().all(axis=1)]
        taken = len(frame) - len(todo)
        try:
            with _progress_bar(len(todo), spec.task) as report:
                computed = compute(spec, frame.loc[todo], report, stop) if len(todo) else None
            interrupted = False
        except Interrupted as ended:
            computed, interrupted = ended.table, True
        stop.hold()  # from here on a signal waits: OUTPUT is written whole
        if computed is not None:
            added.loc[computed.index, spec.columns] = computed[spec.columns]
        _write(spec, table, added, recipe)
        n_computed = 0 if computed is None else len(computed)
        _report(spec, added, n_computed, taken, interrupted)
        return stop.exit_code if interrupted else 0


def _write(spec: RunSpec, table: Table, added: pd.DataFrame, recipe: dict) -> None:
    """OUTPUT, then its recipe; an old recipe that no longer holds goes first, so a kill
    between the two leaves OUTPUT without a record (recomputed), never with a wrong one."""
    if read_recipe(spec.out) != recipe:
        recipe_path(spec.out).unlink(missing_ok=True)
    write_output(table, added, spec.out)
    write_recipe(spec.out, recipe)


def _checked_input(spec: RunSpec) -> Table:
    """INPUT, after checking the paths, the template's columns and the new columns' names."""
    check_format(spec.out, "OUTPUT")
    if spec.out.resolve() == spec.input.resolve():
        raise BadInput("OUTPUT must be another file than INPUT (a re-run reads both)")
    table = read_table(spec.input, "INPUT", spec.encoding)
    check_writable(spec.out)
    frame = table.frame
    try:
        check_fields(spec.template, list(frame.columns))
        if len(frame):  # a placeholder that cannot format INPUT's cells, before the model loads
            render(spec.template, lambda name: frame.at[0, name])
    except ValueError as exc:
        raise BadInput(f"INPUT {spec.input}: {exc}") from None
    clash = [name for name in spec.columns if name in frame.columns]
    if clash:
        raise BadInput(
            f"INPUT {spec.input} already has a column {clash[0]!r}; name the new columns "
            "with --column-out"
        )
    return table


def _previous(spec: RunSpec, frame: pd.DataFrame, recipe: dict) -> pd.DataFrame:
    """The new columns, holding OUTPUT's values from an earlier run of the same recipe where
    its row is finished and its input is the same (empty everywhere when there is no OUTPUT
    or it was made otherwise)."""
    empty = [None] * len(frame)
    added = pd.DataFrame(dict.fromkeys(spec.columns, empty), index=frame.index, dtype=object)
    if not spec.out.exists():
        return added
    before = read_table(spec.out, "OUTPUT").frame
    fields = template_fields(spec.template)
    missing = [name for name in [*spec.columns, *fields] if name not in before.columns]
    if missing:
        raise BadInput(
            f"OUTPUT {spec.out} exists but has no column {missing[0]!r}, so it is not an "
            "earlier output of this command; delete it or choose another --out"
        )
    changed = changes(read_recipe(spec.out), recipe)
    if changed:
        why = (
            f"has no record of how it was made ({recipe_path(spec.out).name})"
            if changed == ["no record"]
            else f"was made with another {' and '.join(changed)}"
        )
        print(f"OUTPUT {spec.out} {why}: computing every row again.", file=sys.stderr)
        return added
    n = min(len(before), len(frame))
    same = pd.Series(True, index=frame.index[:n])
    for name in fields:
        pairs = zip(_texts(before[name].iloc[:n]), _texts(frame[name].iloc[:n]), strict=True)
        same &= pd.Series([a == b for a, b in pairs], index=same.index)
    kept = before[spec.columns].iloc[:n].astype(object)
    # An empty cell (CSV writes a missing value so) is an unfinished one.
    kept = kept.where(kept.notna() & (kept != ""), None).set_axis(frame.index[:n])
    added.loc[same[same].index] = kept[same.to_numpy()]
    return added


def _texts(values: pd.Series) -> list[str | None]:
    """``values`` as the text a CSV cell gives them, to compare an input between runs in any
    two formats (``None`` where missing)."""
    return [cell_text(v) or None for v in values]


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
