"""``jupyter-localllm log``: the run log (:mod:`~jupyter_localllm.session.runlog`) from the
command line: list the recent runs, show one, export its rows, clear it."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["log"]

_LIST_COLUMNS = ["run_id", "time", "front_end", "function", "status", "model", "n_rows"]
_LIST_COLUMNS += ["n_done", "n_errors", "n_tokens", "seconds"]


@click.group(invoke_without_command=True)
@click.option(
    "-n", "--limit", type=click.IntRange(1), default=20, show_default=True, help="Runs listed."
)
@click.pass_context
def log(ctx: click.Context, limit: int) -> int:
    """List the recent runs (newest first); see the subcommands for more."""
    if ctx.invoked_subcommand is not None:
        return 0
    from ..session.runlog import default_log_path, runs

    table = runs(limit)
    if table.empty:
        click.echo(f"No runs logged in {default_log_path()}.")
        return 0
    click.echo(table[_LIST_COLUMNS].to_string(index=False))
    return 0


@log.command()
@click.argument("run_id")
def show(run_id: str) -> int:
    """Show a run's record and its rows."""
    from ..session.runlog import run

    rows = run(run_id)
    for name, value in rows.attrs["run"].items():
        click.echo(f"{name}: {value}")
    columns = ["row", "finish_reason", "n_tokens", "seed", "output", "error"]
    if not rows.empty:
        click.echo("")
        click.echo(rows[columns].to_string(index=False, max_colwidth=60))
    return 0


@log.command()
@click.argument("run_id")
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .csv or .jsonl file.",
)
def export(run_id: str, out: Path) -> int:
    """Write a run's rows to a CSV or JSON Lines file."""
    from ..session.runlog import run

    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise click.BadParameter("give a file ending in .csv or .jsonl", param_hint="--out")
    rows = run(run_id)
    if out.suffix.lower() == ".csv":
        rows.to_csv(out, index=False)
    else:
        rows.to_json(out, orient="records", lines=True, force_ascii=False)
    click.echo(f"Wrote {len(rows)} rows of run {rows.attrs['run']['run_id']} to {out}.")
    return 0


@log.command()
def clear() -> int:
    """Delete every logged run."""
    from ..session.runlog import runs_clear

    click.echo(f"Deleted {runs_clear()} runs.")
    return 0
