"""One run's use of a context's KV cache (:class:`KVSession`): the shared prompt prefix
decoded once and kept between calls, the rows' sequences, and the run's timings
(:class:`RunStats`). :class:`~jupyter_localllm.engine.runner.GenerationContext` starts one
per run; generation and label scoring share it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .determinism import MIN_PIECE, pieces
from .scheduler import common_prefix_length

if TYPE_CHECKING:
    from ..types import Result
    from .backend import BackendBatch, BackendContext
    from .runner import GenerationContext

__all__ = ["KVSession", "RunStats"]


@dataclass
class RunStats:
    """Timings and token counts of the last run on a context.

    Attributes: ``rows`` (in the input), ``steps`` (decodes), ``prompt_tokens`` (of all rows,
    as if each were processed alone), ``prefix_tokens`` (the shared prefix, held once in the
    cache), ``prefix_tokens_decoded`` (prefix tokens decoded in this run; 0 when the cached
    prefix was reused), ``decoded_prompt_tokens`` (prompt tokens actually decoded: the prefix
    once and each row's own part), ``generated_tokens``, ``wall`` (seconds), ``decode_time``
    (seconds inside the backend's decode), ``n_ctx`` and ``n_slots`` (sequences used).
    """

    rows: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    prefix_tokens: int = 0
    prefix_tokens_decoded: int = 0
    decoded_prompt_tokens: int = 0
    generated_tokens: int = 0
    wall: float = 0.0
    decode_time: float = 0.0
    n_ctx: int = 0
    n_slots: int = 0


@dataclass(eq=False)
class KVSession:
    """One run's use of a :class:`GenerationContext`'s KV cache: what generation and label
    scoring share. Get one from :meth:`GenerationContext.start_run` and hold the context's
    :attr:`~GenerationContext.lock` until :meth:`end`.

    Rows run in sequences ``0..n_slots-1`` on top of the shared :attr:`prefix`:
    :meth:`load_prefix` puts it in every sequence (decoding only what the cache lacks),
    :meth:`decode` runs :attr:`batch` and counts the step, :meth:`release` drops a row's own
    cells, and :meth:`end` returns to the between-runs state, in which only sequence 0 holds
    cells: the cached prefix.

    Attributes: ``owner`` (the :class:`GenerationContext`), ``ctx`` (its backend context),
    ``batch`` (the reusable batch of ``n_batch`` tokens that :meth:`decode` runs), ``valid``
    (the rows that can run, in input order), ``errors`` (error results, by row, of the rows
    that cannot), ``prefix`` (the tokens every row shares; each row keeps at least one token
    of its own), ``n_slots`` (sequences the rows run in), ``slot_capacity`` (KV cells one row
    may use after the prefix), ``kv_capacity`` (cells all running rows together may use after
    the prefix), ``stats`` (this run's :class:`RunStats`, also the owner's ``last_run``) and
    ``t_start`` (``time.perf_counter()`` when the run started).
    """

    owner: GenerationContext
    ctx: BackendContext
    batch: BackendBatch
    valid: list[int]
    errors: dict[int, Result]
    prefix: list[int]
    n_slots: int
    slot_capacity: int
    kv_capacity: int
    stats: RunStats
    t_start: float

    @property
    def prefix_len(self) -> int:
        """Length of :attr:`prefix`."""
        return len(self.prefix)

    def load_prefix(self) -> None:
        """Make sequences ``0..n_slots-1`` hold exactly :attr:`prefix`, decoding only what the
        cached prefix in sequence 0 lacks. A run of several rows uses the cached prefix only
        when it is exactly this run's: cells decoded in other pieces (part of a longer prefix,
        or under a shorter one) hold slightly different values, so reusing them would make the
        rows' answers depend on earlier runs (a single row shares what it can, as
        llama-server's prompt cache does)."""
        owner, ctx, batch, prefix = self.owner, self.ctx, self.batch, self.prefix
        keep = common_prefix_length([owner._prefix, prefix])
        if len(self.valid) > 1 and owner._prefix != prefix:
            keep = 0
        if owner.deterministic and 0 < len(prefix) - keep < MIN_PIECE:
            keep = 0  # rather than a one-token piece
        if keep < len(owner._prefix):
            ctx.seq_rm(0, keep, -1)
        owner._prefix = list(prefix[:keep])
        for start, end in pieces(keep, len(prefix), owner.n_batch, owner.deterministic):
            batch.clear()
            batch.add(prefix[start:end], start, 0, want_last_logits=False)
            self.decode()
        owner._prefix = list(prefix)
        self.stats.prefix_tokens_decoded = len(prefix) - keep
        if prefix:
            for seq in range(1, self.n_slots):
                ctx.seq_cp(0, seq, -1, -1)  # unified: tags the cells; one stream each: copies

    def decode(self) -> None:
        """Decode :attr:`batch`, counting the step and its time in :attr:`stats`."""
        t0 = time.perf_counter()
        self.ctx.decode(self.batch)
        self.stats.decode_time += time.perf_counter() - t0
        self.stats.steps += 1

    def release(self, seq: int) -> None:
        """Drop the cells of sequence ``seq`` after the prefix (its row is done)."""
        self.ctx.seq_rm(seq, self.prefix_len, -1)

    def move(self, src: int, dst: int) -> None:
        """Move sequence ``src``'s row into the free sequence ``dst`` (both keep the prefix)."""
        self.ctx.seq_cp(src, dst, -1, -1)
        self.ctx.seq_rm(src, self.prefix_len, -1)

    def end(self, keep: Sequence[int] | None = None) -> None:
        """Back to the between-runs state: only sequence 0 holds cells, the cached prefix —
        or ``keep`` (a single row's whole prompt, still in sequence 0) when given. Sets the
        run's wall time."""
        owner, ctx = self.owner, self.ctx
        for seq in range(1, self.n_slots):
            ctx.seq_rm(seq, -1, -1)
        if keep is not None:
            ctx.seq_rm(0, len(keep), -1)
            owner._prefix = list(keep)
        else:
            ctx.seq_rm(0, len(owner._prefix), -1)
        self.stats.wall = time.perf_counter() - self.t_start
