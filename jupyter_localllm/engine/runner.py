"""The engine's front door: a :class:`GenerationContext` runs batches of requests through the
one step loop (:mod:`~jupyter_localllm.engine.decoding`, driving the
:class:`~jupyter_localllm.engine.scheduler.Scheduler`, one decode per step): generating rows
(:meth:`GenerationContext.run`) and scoring rows (:meth:`GenerationContext.score_labels`) alike.

It owns the backend context (created lazily and sized from the work when ``n_ctx`` is not
given) and the shared prompt prefix kept in the KV cache between calls, so a second call with
the same instructions does not recompute them. The set-up and tear-down that generation and
label scoring share is a :class:`KVSession`, from :meth:`GenerationContext.start_run`.

The backend is reached only through the model's factories (``new_context``, ``new_batch``,
``new_sampler``; see :mod:`~jupyter_localllm.engine.backend`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import hardware
from ..errors import (
    GrammarError,
    InsufficientMemoryError,
    InvalidParameterError,
)
from ..types import Progress, Result
from .backend import MAX_SEQUENCES, UINT32_MAX, check_int
from .decoding import GenerationRun
from .determinism import MIN_PIECE, pinned_kernels, prompt_stream
from .grammar import check_model_grammar
from .kvsession import KVSession, RunStats
from .memory import (
    TOO_LONG_MEMORY,
    TOO_LONG_POSITIONS,
    TOO_LONG_TRAINED,
    cells_that_fit,
    check_context_memory,
    position_limit,
    text_problem,
    train_context,
)
from .runlock import RunLock
from .sampling import SamplingParams, derive_seed
from .scheduler import Request, common_prefix_length
from .scoring import LabelScorer

if TYPE_CHECKING:
    from .backend import BackendBatch, BackendContext, BackendModel

__all__ = ["GenerationContext", "KVSession", "RunStats"]

_CTX_ROUND = 256  # auto-sized contexts grow in steps of this many cells
# The most an auto-sized context asks for (the backend then says whether memory allows it).
_MAX_AUTO_CTX = UINT32_MAX // _CTX_ROUND * _CTX_ROUND
# A run is prompt-bound when its rows' own prompt tokens are at least this many times the
# tokens they may decode after them (max_tokens, or a label's tokens). Measured on the seed
# workload and two others at 16 rows per step (README, "What it does"): on per-row streams
# llama.cpp cuts a wave of prompts of different lengths into ubatches of equal tokens per row,
# a cascade of small decodes (13% slower on a 0.5B model with 5-token answers); a shared cache
# decodes the wave whole, but its generation steps are 4-12% slower, which wins once the rows
# decode more than about a quarter of their prompt's tokens.
_PROMPT_BOUND = 4


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class GenerationContext:
    """A model's context for generation: up to ``n_seq_max`` rows decoded together.

    Created by :func:`jupyter_localllm.context_create`. ``n_ctx=None`` sizes the KV cache
    from each call's work (longest prompt + max_tokens per slot, plus the shared prefix) and
    grows it when a later call needs more. KV layout: ``kv_unified=False`` gives each sequence
    its own stream of ``n_ctx / n_seq_max`` cells (localLLM's split; the fastest attention on
    CPUs), ``True`` one cache all rows share, and ``None`` (the default) chooses per run: one
    shared cache when the run is prompt-bound (several rows, whose own prompt tokens are at
    least four times the tokens they may decode after them: llama.cpp decodes a wave of
    prompts of different lengths whole there, on per-row streams in a cascade of small pieces)
    or when a fixed ``n_ctx`` split ``n_seq_max`` ways is too small for a row that the whole
    ``n_ctx`` holds (so that row runs instead of failing); else a stream per row. (In a shared
    cache with flash attention a row's numerics depend on how many tokens its neighbours put
    in the same decode; in its own stream far less.)
    ``flash_attn`` (default on) uses llama.cpp's fused attention (faster; on CPUs its results
    depend a little on how prompts are split into decodes, see
    :func:`~jupyter_localllm.context_create`). One thread drives it at a time;
    concurrent callers wait on :attr:`lock`.
    """

    def __init__(
        self,
        model: BackendModel,
        *,
        n_ctx: int | None = None,
        n_seq_max: int = 1,
        n_batch: int = 512,
        n_threads: int | None = None,
        kv_unified: bool | None = None,
        flash_attn: bool | None = None,
        deterministic: bool = False,
    ):
        model.require_open()
        flash_attn, kv_unified = pinned_kernels(model, flash_attn, kv_unified, deterministic)
        if n_ctx is not None:
            check_int("n_ctx", n_ctx, 16, UINT32_MAX)
        check_int("n_seq_max", n_seq_max, 1, MAX_SEQUENCES)
        check_int("n_batch", n_batch, 1, UINT32_MAX)
        if n_batch < n_seq_max:
            raise InvalidParameterError(
                f"n_batch ({n_batch}) must be at least n_seq_max ({n_seq_max}) so every "
                "parallel row gets a token in each step."
            )
        if n_threads is None:
            n_threads = hardware.physical_cores()  # the one thread policy
        check_int("n_threads", n_threads, 1, 1024)
        if not isinstance(flash_attn, bool):
            raise InvalidParameterError(f"flash_attn must be True or False, got {flash_attn!r}.")
        self.model = model
        self.n_seq_max = n_seq_max
        self.n_streams = n_seq_max
        """Sequences the open cache holds: ``n_seq_max``, fewer in deterministic mode when a
        fixed ``n_ctx`` split ``n_seq_max`` ways is too small for a run's rows."""
        self.n_batch = self._requested_n_batch = n_batch  # n_batch: what the context accepts
        self.n_threads = n_threads
        self.fixed_n_ctx = n_ctx
        self.kv_layout = None if kv_unified is None else bool(kv_unified)
        """The layout asked for: True (shared), False (a stream per sequence), None (per run)."""
        self.kv_unified = bool(kv_unified)
        """The layout of the cache in use (of the next one while none is open)."""
        self.flash_attn = bool(flash_attn)
        """Whether llama.cpp's flash attention is on."""
        self.deterministic = deterministic
        """Whether a row's text depends only on its prompt, sampling and seed (see
        :func:`~jupyter_localllm.context_create`)."""
        self.lock = RunLock()
        self.last_run = RunStats()
        self._longest_piece: int | None = None
        self._ctx: BackendContext | None = None
        self._batch: BackendBatch | None = None
        self._prefix: list[int] = []
        model.add_user(self)  # the model refuses to close while self.lock is held
        if n_ctx is not None:
            self._open(n_ctx)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int | None:
        """KV cells rows may use: the ``n_ctx`` asked for (the backend may round its cache
        up), or the auto-sized context's (None until one exists)."""
        if self.fixed_n_ctx is not None:
            return self.fixed_n_ctx
        return self._ctx.n_ctx if self._ctx is not None else None

    def _open(
        self, n_ctx: int, unified: bool | None = None, streams: int | None = None
    ) -> BackendContext:
        self.n_streams = streams or self.n_seq_max
        if self.fixed_n_ctx is None:
            n_ctx = min(n_ctx, _MAX_AUTO_CTX)
        if self._ctx is not None:  # free it first: the new one may need its memory
            self._ctx.close()
            self._ctx, self._prefix = None, []
        self.kv_unified = bool(self.kv_layout) if unified is None else unified
        if not self.model.offloads_to_gpu:  # a CPU cache too big gets the process killed
            check_context_memory(
                self.model.metadata,
                n_ctx,
                n_vocab=self.model.n_vocab,
                n_seq_max=self.n_streams,
                n_batch=self._requested_n_batch,
                kv_unified=self.kv_unified,
            )
        self._ctx = self.model.new_context(
            n_ctx=n_ctx,
            n_seq_max=self.n_streams,
            n_batch=self._requested_n_batch,
            n_threads=self.n_threads,
            kv_unified=self.kv_unified,
            flash_attn=self.flash_attn,
        )
        # llama.cpp caps n_batch at n_ctx; plan steps with the size it really accepts.
        self.n_batch = self._ctx.n_batch
        self._batch = self.model.new_batch(self.n_batch, self.n_streams)
        self._prefix = []
        return self._ctx

    def close(self) -> None:
        """Free the backend context (the model stays loaded). Waits for a run in another
        thread; raises :class:`ContextBusyError` from a callback of a run on it."""
        with self.lock:
            if self._ctx is not None:
                self._ctx.close()
            self._ctx = None
            self._prefix = []

    def __enter__(self) -> GenerationContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        n_ctx = self.n_ctx if self.n_ctx is not None else "auto"
        layout = "auto" if self.kv_layout is None else self.kv_layout
        return (
            f"<GenerationContext model={self.model.name!r} n_ctx={n_ctx} "
            f"n_seq_max={self.n_seq_max} n_batch={self.n_batch} kv_unified={layout} "
            f"flash_attn={self.flash_attn}>"
        )

    def _ensure_context(
        self, prefix_len: int, per_slot: int, n_slots: int, prompt_bound: bool
    ) -> BackendContext:
        if self.fixed_n_ctx is not None:
            unified = self._fixed_layout(prefix_len + per_slot, n_slots, prompt_bound)
            streams = self._fixed_streams(prefix_len + per_slot, unified)
            if self._ctx is None or unified != self.kv_unified or streams != self.n_streams:
                self._open(self.fixed_n_ctx, unified, streams)
            return self._ctx
        shared = self.kv_layout if self.kv_layout is not None else n_slots > 1 and prompt_bound
        if shared:
            # one cache shared by all rows, the prefix stored once
            need = max(512, _round_up(prefix_len + n_slots * per_slot, _CTX_ROUND))
            if self._ctx is None or not self.kv_unified or self._ctx.n_ctx < need:
                self._open(need, True)
            return self._ctx
        # one stream per sequence, each holding the prefix and one row
        need_seq = _round_up(prefix_len + per_slot, 64)
        if self._ctx is None or self.kv_unified or self._ctx.n_ctx_seq < need_seq:
            self._open(max(512, _round_up(need_seq * self.n_seq_max, _CTX_ROUND)), False)
        return self._ctx

    def _fixed_layout(self, need: int, n_slots: int, prompt_bound: bool) -> bool:
        """The layout for a run on the fixed ``n_ctx`` whose rows need ``need`` cells each:
        the one asked for, or (auto) a shared cache when a row does not fit its share or the
        run is prompt-bound, else a stream per sequence."""
        if self.kv_layout is not None:
            return self.kv_layout
        share = self.fixed_n_ctx // self.n_seq_max
        fits_whole = need <= self.fixed_n_ctx
        return n_slots > 1 and fits_whole and (share < need or prompt_bound)

    def _fixed_streams(self, need: int, unified: bool) -> int:
        """Sequences of a fixed ``n_ctx`` cache whose rows need ``need`` cells each:
        ``n_seq_max``; in deterministic mode (a stream per row) as many as hold such a row,
        so that no row is refused or cut because of ``n_seq_max`` (its text may not depend
        on it)."""
        if unified or not self.deterministic:
            return self.n_seq_max
        return max(1, min(self.n_seq_max, self.fixed_n_ctx // max(1, need)))

    def _seq_cells(self) -> int:
        """KV cells one sequence may use."""
        ctx = self._ctx
        if self.kv_unified:
            return min(ctx.n_ctx, self.fixed_n_ctx or ctx.n_ctx)
        if self.fixed_n_ctx is not None:
            return min(ctx.n_ctx_seq, max(1, self.fixed_n_ctx // self.n_streams))
        return ctx.n_ctx_seq

    def reset_cache(self) -> None:
        """Forget the cached prefix and empty the KV cache."""
        with self.lock:
            self.clear_cache()

    def clear_cache(self) -> None:
        """:meth:`reset_cache` for the thread running on the context (holding its lock)."""
        if self._ctx is not None:
            self._ctx.memory_clear()
        self._prefix = []

    # -- what fits -------------------------------------------------------------------------
    def max_row_cells(self) -> int:
        """The most KV cells one row may use (see :meth:`row_limit`)."""
        return self.row_limit()[0]

    def row_limit(self) -> tuple[int, str]:
        """The most KV cells one row may use, and why (the end of a too-long row's message):
        the fixed ``n_ctx``, else the context length the model was trained for (a context
        sized from the work grows no further); on a model that reads positions from a learned
        table (GPT-2, StarCoder, BERT: :func:`~jupyter_localllm.engine.memory.position_limit`)
        never past that table, even in a larger fixed ``n_ctx`` (llama.cpp aborts there)."""
        meta = getattr(self.model, "metadata", None) or {}
        table = position_limit(meta)
        if table is not None and table < (self.fixed_n_ctx or _MAX_AUTO_CTX):
            return table, TOO_LONG_POSITIONS
        if self.fixed_n_ctx is not None:
            return self.fixed_n_ctx, "n_ctx; shorten it"
        trained = train_context(meta)
        return min(trained or _MAX_AUTO_CTX, _MAX_AUTO_CTX), TOO_LONG_TRAINED

    def text_problem(self, text: str) -> str | None:
        """Why ``text`` cannot fit a row of this context, known without tokenizing it, else
        None: a text of megabytes is refused at once instead of tokenized."""
        limit = self.max_row_cells()
        if len(text) > 4 * limit and self._longest_piece is None:
            model = self.model
            self._longest_piece = max(
                len(model.token_bytes(t, special=True)) for t in range(model.n_vocab)
            )
        return text_problem(len(text), limit, self._longest_piece or 4)

    # -- runs ------------------------------------------------------------------------------
    def _shared_prefix_len(self, prompts: Sequence[Sequence[int]], valid: list[int]) -> int:
        """Tokens the ``valid`` rows share. Every row keeps at least one token of its own: its
        logits start the answer. A single row shares only what is cached, and is decoded whole
        like llama.cpp's own examples."""
        own = MIN_PIECE if self.deterministic else 1
        if len(valid) == 1:
            shared = common_prefix_length([self._prefix, prompts[valid[0]]])
            shared = min(shared, len(prompts[valid[0]]) - own)
        elif valid:
            shared = common_prefix_length([prompts[i] for i in valid])
            shared = min(shared, min(len(prompts[i]) for i in valid) - own)
        else:
            return 0
        return 0 if shared < own else shared

    def start_run(
        self,
        prompts: Sequence[Sequence[int]],
        invalid: Mapping[int, str],
        cells_per_row: Callable[[int, int], int],
    ) -> KVSession:
        """Set up a run over the tokenized ``prompts`` (call it holding :attr:`lock`, and hold
        that until the session ends): error results for the rows that cannot run (empty, too
        long, or listed in ``invalid`` with their message), the shared prefix, the slot count,
        and a context big enough for ``cells_per_row(row, own_tokens)`` cells per row after the
        prefix. A context sized from the work is sized from the rows that fit: a row longer
        than :meth:`max_row_cells`, or than what the memory available holds, is an error row
        and the others run (their answers cut at the context's end); so is a row past a
        learned position table in a larger fixed ``n_ctx``. Starts a fresh :attr:`last_run`."""
        t_start = time.perf_counter()
        stats = RunStats(rows=len(prompts))
        self.last_run = stats
        limit, why = self.row_limit()
        if limit == self.fixed_n_ctx:
            limit = None  # the scheduler says what a sequence of the fixed n_ctx holds
        for _attempt in range(4):
            layout = self._layout(prompts, invalid, cells_per_row, limit, why)
            errors, valid, prefix_len, n_slots, per_slot, prompt_bound = layout
            try:
                ctx = self._ensure_context(prefix_len, per_slot, n_slots, prompt_bound)
                break
            except InsufficientMemoryError as exc:
                fit = int(getattr(exc, "n_ctx_fit", 0))
                shrunk = cells_that_fit(fit, prefix_len, n_slots, self.n_seq_max, self.kv_unified)
                if limit is None or self.fixed_n_ctx is not None or shrunk >= limit:
                    raise
                limit, why = shrunk, TOO_LONG_MEMORY
        seq_cells = self._seq_cells()
        n_slots = min(n_slots, self.n_streams)
        # a row's positions end where a learned position table does, whatever the cache holds
        table = position_limit(getattr(self.model, "metadata", None) or {})
        row_cells = min(seq_cells, table or seq_cells)
        if prefix_len >= row_cells:
            prefix_len = 0  # cannot share it; every row will report its length
        prefix = list(prompts[valid[0]][:prefix_len]) if valid else []
        stats.n_ctx, stats.n_slots, stats.prefix_tokens = self.n_ctx, n_slots, prefix_len
        stats.prompt_tokens = sum(len(p) for p in prompts)
        capacity = seq_cells - prefix_len
        return KVSession(
            owner=self,
            ctx=ctx,
            batch=self._batch,
            valid=valid,
            errors=errors,
            prefix=prefix,
            n_slots=n_slots,
            slot_capacity=row_cells - prefix_len,
            kv_capacity=capacity if self.kv_unified else capacity * n_slots,
            stats=stats,
            t_start=t_start,
        )

    def _layout(
        self,
        prompts: Sequence[Sequence[int]],
        invalid: Mapping[int, str],
        cells_per_row: Callable[[int, int], int],
        limit: int | None,
        why: str,
    ) -> tuple[dict[int, Result], list[int], int, int, int, bool]:
        """``(errors, valid rows, prefix length, slots, cells per slot, prompt-bound)`` of a
        run whose rows may use at most ``limit`` cells each (None: no limit here; ``why``
        says where the limit comes from)."""
        errors: dict[int, Result] = {}
        for i, p in enumerate(prompts):
            if i in invalid or not p:
                message = invalid.get(i, "the prompt is empty; give some text")
                errors[i] = Result.failed(message, row=i)
            elif limit is not None and len(p) + 1 > limit:
                message = f"the prompt of {len(p)} tokens does not fit the context of {limit} "
                errors[i] = Result.failed(f"{message}tokens ({why})", row=i, n_prompt_tokens=len(p))
        valid = [i for i in range(len(prompts)) if i not in errors]
        prefix_len = self._shared_prefix_len(prompts, valid)
        n_slots = max(1, min(self.n_seq_max, len(valid)))
        own = {i: len(prompts[i]) - prefix_len for i in valid}
        room = limit - prefix_len if limit is not None else None
        cells = {i: cells_per_row(i, own[i]) for i in valid}
        if room is not None:  # an answer past the limit is cut there, as with a fixed n_ctx
            cells = {i: min(c, room) for i, c in cells.items()}
        per_slot = max(cells.values(), default=1)
        after = sum(cells[i] - own[i] for i in valid)  # tokens the rows may decode after
        prompt_bound = after * _PROMPT_BOUND <= sum(own.values())
        return errors, valid, prefix_len, n_slots, per_slot, prompt_bound

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_result: Callable[[Result], None] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        cancel: threading.Event | None = None,
        invalid: Mapping[int, str] | None = None,
        seed_rows: Sequence[int] | None = None,
    ) -> list[Result]:
        """Generate for each tokenized prompt; results come back in input order.

        A row that cannot run (empty, too long, or listed in ``invalid`` with its error
        message) is an error result in its place; the others go on. Row ``i`` samples with
        the seed derived from ``seed_rows[i]`` (default ``i``): a subset of a larger input keeps
        its rows' random streams (on a deterministic context the seed is derived from the
        row's prompt instead: :func:`~jupyter_localllm.engine.determinism.prompt_stream`). A
        KeyboardInterrupt (or
        ``cancel`` being set) stops between steps, leaves the context usable and raises
        KeyboardInterrupt (the rows finished so far went to ``on_result``).
        """
        n = len(prompts)
        per_row = [params] * n if isinstance(params, SamplingParams) else list(params)
        if len(per_row) != n:
            raise InvalidParameterError(
                f"Got {len(per_row)} sampling parameter sets for {n} prompts; give one or one "
                "per prompt."
            )
        if n == 0:
            return []
        seeds = list(seed_rows) if seed_rows is not None else range(n)
        shared = isinstance(params, SamplingParams)
        invalid = self._check_grammars(per_row, invalid or {}, shared=shared)
        shield = self.lock.shield
        with self.lock, self.lock.running():
            kv = self.start_run(prompts, invalid, lambda i, own: own + per_row[i].max_tokens)
            p = kv.prefix_len
            if self.deterministic:  # a row's stream follows its prompt, not its place
                seeds = [prompt_stream(tokens) for tokens in prompts]
            requests = (
                Request(i, prompts[i][p:], per_row[i], derive_seed(per_row[i].seed, seeds[i]))
                for i in kv.valid
            )
            return GenerationRun(
                self,
                kv,
                prompts,
                requests,
                on_progress=shield(on_progress),
                on_result=shield(on_result),
                on_text=shield(on_text),
                cancel=cancel,
            ).run()

    def _check_grammars(
        self, per_row: list[SamplingParams], invalid: Mapping[int, str], shared: bool
    ) -> Mapping[int, str]:
        """Check each grammar once before anything runs (a grammar llama.cpp cannot finish
        aborts the process): a bad grammar raises :class:`GrammarError` when all rows share
        it, else the rows that use it fail in their place."""
        grammars = {p.grammar for p in per_row if p.grammar is not None}
        bad: dict[str, str] = {}
        for grammar in grammars:
            try:
                check_model_grammar(self.model, grammar)
            except GrammarError as exc:
                if shared or len(per_row) == 1:
                    raise
                bad[grammar] = str(exc).rstrip(".")
        if not bad:
            return invalid
        rows = {i: bad[p.grammar] for i, p in enumerate(per_row) if p.grammar in bad}
        return {**rows, **invalid}

    def score_labels(
        self,
        prompts: Sequence[Sequence[int]],
        label_tokens: Sequence[Sequence[int]],
        *,
        invalid: Mapping[int, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        first: Iterable[int] = (),
        on_wave: Callable[[list[int], np.ndarray], None] | None = None,
        scoring: str = "constrained",
    ) -> tuple[np.ndarray, dict[int, Result]]:
        """Log-probabilities ``[row, label]`` of each label after each tokenized prompt, under
        ``scoring`` (``"constrained"`` or ``"joint"``, see :mod:`~jupyter_localllm.engine.scoring`).

        Returns the matrix (NaN on rows that could not run) and the error results of those rows
        by row index. ``label_tokens`` must each be non-empty. Rows in ``first`` are scored
        before the others; ``on_wave(rows, scores)`` gets each wave's rows and their scores as
        it ends; a wave is the rows scored in one step of the loop. Rows are scored in the
        same step loop as generation (each a scoring request of the scheduler). A
        KeyboardInterrupt (or ``cancel`` being set) stops between steps, leaves the context
        usable and propagates.
        """
        scorer = LabelScorer(label_tokens, scoring)
        if len(prompts) == 0:
            return np.full((0, len(label_tokens)), np.nan), {}
        shield = self.lock.shield
        with self.lock, self.lock.running():
            kv = self.start_run(prompts, invalid or {}, lambda i, own: own + scorer.need)
            early = set(first)
            rows = sorted(kv.valid, key=lambda i: i not in early)  # stable: else input order
            p = kv.prefix_len
            requests = (Request(i, prompts[i][p:], None, branches=scorer.branches) for i in rows)
            run = GenerationRun(
                self,
                kv,
                prompts,
                requests,
                on_progress=shield(on_progress),
                cancel=cancel,
                scorer=scorer,
                on_scores=shield(on_wave),
            )
            results = run.run()
        return run.scores, {r.row: r for r in results if r.error is not None}
