"""What this machine does per decode, and the ideal time of a run from it.

The measurements and the pricing live in :mod:`jupyter_localllm.tasks.throughput` (the demo
notebook uses them too); they are imported here for ``bench_parallel``. Rates are measured on
a context configured as the run being judged (n_ctx, slots, KV layout, flash attention):
prompt processing by tokens per decode, batched decode by batch width. The ideal steps a run's
rows through its slots at those rates (see ``bench_parallel``'s docstring). ``layouts`` is the
table the KV layout and flash attention defaults came from.
"""

from __future__ import annotations

import pandas as pd

from jupyter_localllm.tasks.throughput import (  # noqa: F401 (bench_parallel imports them here)
    PP_SIZES,
    PP_SIZES_ONE_ROW,
    PP_TOTAL,
    decodes_per_row,
    measure_decode_curve,
    measure_pp,
    measure_wave_pp,
    prompt_shape,
    prompt_time,
    rate_at,
    rate_at_depth,
    rates_for,
    row_depth,
    schedule_time,
)


def measure_decode(
    model, n_ctx: int, n_seq: int, kv_unified: bool, depth: int, flash_attn: bool = False
) -> float:
    """Batched decode (tok/s) with all ``n_seq`` sequences in every decode (see
    :func:`measure_decode_curve`)."""
    return measure_decode_curve(model, n_ctx, n_seq, kv_unified, depth, flash_attn, steps=12)[n_seq]


LAYOUT_SLOTS = (1, 8, 16, 48)


def layouts(model, depth: int = 100) -> pd.DataFrame:
    """Batched decode rates (tok/s) for each KV layout with flash attention on and off, at
    ``LAYOUT_SLOTS`` sequences of ``depth`` tokens (256 cells per sequence): the figures the
    defaults (per-sequence streams, flash attention on) were chosen from."""
    rows = {}
    for n in LAYOUT_SLOTS:
        rows[n] = {
            f"{'unified' if unified else 'per-seq'}, FA {'on' if fa else 'off'}": measure_decode(
                model, 256 * n, n, unified, depth, fa
            )
            for unified in (False, True)
            for fa in (True, False)
        }
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("sequences")
    print(f"\n== {model.name}: batched decode, tok/s, by KV layout and flash attention (FA)")
    print(table.to_string(float_format=lambda x: f"{x:.0f}"))
    table.attrs.update(model=model.name)
    return table


def layout_markdown(table: pd.DataFrame) -> str:
    """A :func:`layouts` table as Markdown."""
    cols = list(table.columns)
    lines = [
        f"| {table.attrs['model']}: sequences | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for n, row in table.iterrows():
        lines.append(f"| {n} | " + " | ".join(f"{row[c]:.0f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"
