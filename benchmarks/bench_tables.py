"""The README's tables from ``bench_parallel.py``'s results: the engine comparison and the
deterministic mode's cost (each a markdown table; the figures are computed by ``bench``)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def cost_markdown(tables: list[pd.DataFrame]) -> str:
    """The deterministic mode's cost from :func:`bench` tables (those that ran (d) and its
    (c) twin)."""
    lines = [
        "| model | workload | default mode engine | wall s | deterministic wall s "
        "| deterministic / default (rounds) |",
        "|---|---|---|---|---|---|",
    ]
    for table in tables:
        cost = table.attrs.get("deterministic")
        if cost:
            lines.append(
                f"| {table.attrs['model']} | {table.attrs['workload']} | {cost['default']} "
                f"| {cost['wall_default']:.1f} | {cost['wall_det']:.1f} "
                f"| {cost['median']:.2f} ({cost['lo']:.2f}–{cost['hi']:.2f}) |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def markdown(tables: list[pd.DataFrame]) -> str:
    """The README's benchmark table from :func:`bench` tables."""
    lines = [
        "| model | workload | engine | wall s | × (a) Llama loop | × (b) generate loop "
        "| × (b) at the limit | × (s) llama-server | wall/ideal (rounds) "
        "| wall/ideal, full batches | tail s | same text as (a) | same text as (b) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(row, col):
        return f"{row[col]:.2f}" if col in row and np.isfinite(row[col]) else "–"

    def share(value):
        return f"{value:.0%}" if np.isfinite(value) else "–"

    def spread(row):  # the rounds' lowest and highest: the VM's drift shows here
        if not np.isfinite(row.get("wall_ideal_lo", np.nan)):
            return ""
        return f" ({row.wall_ideal_lo:.2f}–{row.wall_ideal_hi:.2f})"

    for table in tables:
        first = True
        for label, row in table.iterrows():
            lines.append(
                f"| {table.attrs['model'] if first else ''} "
                f"| {table.attrs['workload'] if first else ''} | {label} | {row.wall:.1f} "
                f"| {ratio(row, 'x_llama')} | {ratio(row, 'x_loop')} "
                f"| {ratio(row, 'x_loop_limit')} | {ratio(row, 'x_server')} "
                f"| {ratio(row, 'wall_ideal')}{spread(row)} | {ratio(row, 'wall_full')} "
                f"| {ratio(row, 'tail')} | {share(row.agree)} | {share(row.agree_b)} |"
            )
            first = False
    return "\n".join(lines) + "\n"
