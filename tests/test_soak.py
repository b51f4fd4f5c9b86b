"""Soak: a long annotation run interrupted three times and resumed the way a notebook user
does it (run the cell again), against an uninterrupted run; native memory must not grow."""

from __future__ import annotations

import gc

import pandas as pd
import psutil
import pytest

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted

ROWS = 2000
MIB = 2**20


def _stop_at(rows_done: int):
    def stop(event: ll.Progress) -> None:
        if event.done >= rows_done:
            raise KeyboardInterrupt

    return stop


@pytest.mark.slow
def test_2000_rows_interrupted_three_times_and_resumed(model, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(tmp_path))
    ctx = ll.context_create(model, n_seq_max=16)
    words = [f"item {i}" for i in range(ROWS)]
    df = pd.DataFrame({"w": words})
    run = dict(model=ctx, max_tokens=2, out="y")
    proc = psutil.Process()
    gc.collect()
    rss_start = proc.memory_info().rss
    kept = 0
    for rows_done in (400, 1100, 1700):
        with pytest.raises(BatchInterrupted) as info:
            df.llm.generate("Repeat: {w}", cache=True, progress=_stop_at(rows_done), **run)
        finished = [r for r in info.value.results if r.finish_reason != "cancelled"]
        assert len(finished) >= rows_done and df["y"].notna().sum() == len(finished) > kept
        kept = len(finished)
    resumed = df.llm.generate("Repeat: {w}", cache=True, progress=False, **run)
    gc.collect()
    grown = proc.memory_info().rss - rss_start

    fresh = pd.DataFrame({"w": words})
    reference = fresh.llm.generate(
        "Repeat: {w}", model=ctx, max_tokens=2, cache=False, progress=False
    )
    assert [str(v) for v in df["y"]] == [str(v) for v in reference]
    assert [str(v) for v in resumed] == [str(v) for v in reference]
    assert all(v.error is None for v in resumed)
    assert grown < 100 * MIB, f"RSS grew {grown / MIB:.0f} MiB over the interrupted runs"
