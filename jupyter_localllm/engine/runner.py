"""The engine loop: a :class:`GenerationContext` runs batches of requests through the
:class:`~jupyter_localllm.engine.scheduler.Scheduler`, one ``llama_decode`` per step.

It owns the llama.cpp context (created lazily and sized from the work when ``n_ctx`` is not
given) and the shared prompt prefix kept in the KV cache between calls, so a second call with
the same instructions does not recompute them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import BatchInterrupted, DecodeError, InvalidParameterError, LocalLLMError
from ..types import Progress, Result
from .checks import check_int
from .llama import MAX_SEQUENCES, Batch, Context, Model, Sampler
from .sampling import SamplingParams, derive_seed
from .scheduler import Request, Scheduler, common_prefix_length

__all__ = ["GenerationContext", "RunStats"]

_CTX_ROUND = 256  # auto-sized contexts grow in steps of this many cells
_PROGRESS_INTERVAL = 0.1  # seconds between progress events while no row finishes


@dataclass
class RunStats:
    """Timings and token counts of the last run on a context."""

    rows: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    """Prompt tokens of all rows, as if each were processed alone."""
    prefix_tokens: int = 0
    """Tokens of the shared prefix (held once in the cache)."""
    prefix_tokens_decoded: int = 0
    """Prefix tokens decoded in this run (0 when the cached prefix was reused)."""
    decoded_prompt_tokens: int = 0
    """Prompt tokens actually decoded (prefix once + each row's own part)."""
    generated_tokens: int = 0
    wall: float = 0.0
    decode_time: float = 0.0
    """Seconds inside llama_decode."""
    n_ctx: int = 0
    n_slots: int = 0


@dataclass
class RunPlan:
    """What :meth:`GenerationContext._plan` decided for a run."""

    valid: list[int]
    prefix: list[int]
    prefix_len: int
    n_slots: int
    ctx: Context
    slot_capacity: int
    """KV cells each row may use after the shared prefix."""


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class GenerationContext:
    """A model's context for generation: up to ``n_seq_max`` rows decoded together.

    Created by :func:`jupyter_localllm.context_create`. ``n_ctx=None`` sizes the KV cache
    from each call's work (longest prompt + max_tokens per slot, plus the shared prefix once)
    and grows it when a later call needs more. One thread drives it at a time; concurrent
    callers wait on :attr:`lock`.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int | None = None,
        n_seq_max: int = 1,
        n_batch: int = 512,
        n_threads: int | None = None,
        kv_unified: bool = False,
    ):
        model._require_open()
        if n_ctx is not None:
            check_int("n_ctx", n_ctx, 16, None)
        check_int("n_seq_max", n_seq_max, 1, MAX_SEQUENCES)
        check_int("n_batch", n_batch, 1, None)
        if n_batch < n_seq_max:
            raise InvalidParameterError(
                f"n_batch ({n_batch}) must be at least n_seq_max ({n_seq_max}) so every "
                "parallel row gets a token in each step."
            )
        if n_threads is not None:
            check_int("n_threads", n_threads, 1, 1024)
        self.model = model
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self._requested_n_batch = n_batch
        self.n_threads = n_threads
        self.fixed_n_ctx = n_ctx
        self.kv_unified = bool(kv_unified)
        self.lock = threading.RLock()
        self.last_run = RunStats()
        self._ctx: Context | None = None
        self._batch: Batch | None = None
        self._prefix: list[int] = []
        if n_ctx is not None:
            self._open(n_ctx)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int | None:
        """KV cells rows may use: the ``n_ctx`` asked for (llama.cpp may round its cache up),
        or the auto-sized context's (None until one exists)."""
        if self.fixed_n_ctx is not None:
            return self.fixed_n_ctx
        return self._ctx.n_ctx if self._ctx is not None else None

    def _open(self, n_ctx: int) -> Context:
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = Context(
            self.model,
            n_ctx=n_ctx,
            n_seq_max=self.n_seq_max,
            n_batch=self._requested_n_batch,
            n_threads=self.n_threads,
            kv_unified=self.kv_unified,
        )
        # llama.cpp caps n_batch at n_ctx; plan steps with the size it really accepts.
        self.n_batch = self._ctx.n_batch
        self._batch = Batch(self.n_batch, self.n_seq_max, self.model.n_vocab)
        self._prefix = []
        return self._ctx

    def close(self) -> None:
        """Free the llama.cpp context (the model stays loaded)."""
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
        return (
            f"<GenerationContext model={self.model.name!r} n_ctx={n_ctx} "
            f"n_seq_max={self.n_seq_max} n_batch={self.n_batch} kv_unified={self.kv_unified}>"
        )

    def _ensure_context(self, prefix_len: int, per_slot: int, n_slots: int) -> Context:
        if self.fixed_n_ctx is not None:
            return self._ctx or self._open(self.fixed_n_ctx)
        if self.kv_unified:  # one cache shared by all rows, the prefix stored once
            need = max(512, _round_up(prefix_len + n_slots * per_slot, _CTX_ROUND))
            if self._ctx is None or self._ctx.n_ctx < need:
                self._open(need)
            return self._ctx
        # one stream per sequence, each holding the prefix and one row
        need_seq = _round_up(prefix_len + per_slot, 64)
        if self._ctx is None or self._ctx.n_ctx_seq < need_seq:
            self._open(max(512, _round_up(need_seq * self.n_seq_max, _CTX_ROUND)))
        return self._ctx

    def _seq_cells(self) -> int:
        """KV cells one sequence may use."""
        ctx = self._ctx
        if self.kv_unified:
            return min(ctx.n_ctx, self.fixed_n_ctx or ctx.n_ctx)
        if self.fixed_n_ctx is not None:
            return min(ctx.n_ctx_seq, max(1, self.fixed_n_ctx // self.n_seq_max))
        return ctx.n_ctx_seq

    # -- prefix cache ----------------------------------------------------------------------
    def _set_prefix(
        self, ctx: Context, prefix: Sequence[int], n_slots: int, stats: RunStats
    ) -> None:
        """Make sequences 0..n_slots-1 hold exactly ``prefix``, decoding only what the cached
        prefix in sequence 0 lacks. Between runs only sequence 0 holds cells."""
        keep = common_prefix_length([self._prefix, prefix])
        if keep < len(self._prefix):
            ctx.seq_rm(0, keep, -1)
        self._prefix = list(prefix[:keep])
        batch = self._batch
        for start in range(keep, len(prefix), self.n_batch):
            chunk = prefix[start : start + self.n_batch]
            batch.clear()
            batch.add(chunk, start, 0, want_last_logits=False)
            t0 = time.perf_counter()
            ctx.decode(batch)
            stats.decode_time += time.perf_counter() - t0
            stats.steps += 1
        self._prefix = list(prefix)
        stats.prefix_tokens_decoded = len(prefix) - keep
        if prefix:
            for seq in range(1, n_slots):
                ctx.seq_cp(0, seq, -1, -1)  # unified cache: tags the cells, copies nothing

    def _end_run(self, ctx: Context, n_slots: int, keep: Sequence[int] | None) -> None:
        """Back to the between-runs state: only sequence 0 holds cells, the cached prefix
        (``keep``, a single row's whole prompt, when given)."""
        for seq in range(1, n_slots):
            ctx.seq_rm(seq, -1, -1)
        if keep is not None:
            ctx.seq_rm(0, len(keep), -1)
            self._prefix = list(keep)
        else:
            ctx.seq_rm(0, len(self._prefix), -1)

    def reset_cache(self) -> None:
        """Forget the cached prefix and empty the KV cache."""
        with self.lock:
            if self._ctx is not None:
                self._ctx.memory_clear()
            self._prefix = []

    # -- running ---------------------------------------------------------------------------
    def _plan(
        self,
        prompts: Sequence[Sequence[int]],
        invalid: Mapping[int, str],
        cells_per_row: Callable[[int, int], int],
        results: dict[int, Result],
        stats: RunStats,
    ) -> RunPlan:
        """Shared set-up of a run: error results for rows that cannot run, the shared prefix,
        the slot count, and a context big enough for ``cells_per_row(row, own_tokens)``."""
        valid = [i for i, p in enumerate(prompts) if len(p) > 0 and i not in invalid]
        for i in sorted(set(range(len(prompts))) - set(valid)):
            message = invalid.get(i, "the prompt is empty; give some text")
            results[i] = Result.failed(message, row=i)
        # Every row keeps at least one token of its own: its logits start the answer. A single
        # row shares only what is cached, and is decoded whole like llama.cpp's own examples.
        prefix_len = 0
        if len(valid) == 1:
            prefix_len = common_prefix_length([self._prefix, prompts[valid[0]]])
            prefix_len = min(prefix_len, len(prompts[valid[0]]) - 1)
        elif valid:
            prefix_len = common_prefix_length([prompts[i] for i in valid])
            prefix_len = min(prefix_len, min(len(prompts[i]) for i in valid) - 1)
        n_slots = max(1, min(self.n_seq_max, len(valid)))
        per_slot = max((cells_per_row(i, len(prompts[i]) - prefix_len) for i in valid), default=1)
        ctx = self._ensure_context(prefix_len, per_slot, n_slots)
        seq_cells = self._seq_cells()
        if prefix_len >= seq_cells:
            prefix_len = 0  # cannot share it; every row will report its length
        prefix = list(prompts[valid[0]][:prefix_len]) if valid else []
        stats.n_ctx, stats.n_slots, stats.prefix_tokens = self.n_ctx, n_slots, prefix_len
        stats.prompt_tokens = sum(len(p) for p in prompts)
        return RunPlan(valid, prefix, prefix_len, n_slots, ctx, seq_cells - prefix_len)

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
        its rows' random streams. A KeyboardInterrupt (or
        ``cancel`` being set) stops between steps, leaves the context usable and raises
        :class:`BatchInterrupted` holding the partial results.
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
        with self.lock:
            return self._run(
                prompts,
                per_row,
                on_progress,
                on_result,
                on_text,
                cancel,
                invalid or {},
                list(seed_rows) if seed_rows is not None else range(n),
            )

    def _run(
        self, prompts, per_row, on_progress, on_result, on_text, cancel, invalid, seed_rows
    ) -> list[Result]:
        t_start = time.perf_counter()
        stats = RunStats(rows=len(prompts))
        self.last_run = stats
        results: dict[int, Result] = {}
        plan = self._plan(
            prompts, invalid, lambda i, own: own + per_row[i].max_tokens, results, stats
        )
        valid, prefix, prefix_len, n_slots = plan.valid, plan.prefix, plan.prefix_len, plan.n_slots
        ctx, slot_capacity = plan.ctx, plan.slot_capacity
        sched = Scheduler(
            n_slots=n_slots,
            n_batch=self.n_batch,
            prefix_len=prefix_len,
            kv_capacity=slot_capacity if self.kv_unified else slot_capacity * n_slots,
            slot_capacity=slot_capacity,
            token_bytes=self.model.token_bytes,
            is_eog=self.model.is_eog,
        )
        for i in valid:
            p = per_row[i]
            early = sched.add_request(
                Request(i, prompts[i][prefix_len:], p, derive_seed(p.seed, seed_rows[i]))
            )
            if early is not None:
                results[i] = early
        samplers: dict[int, Sampler | None] = {}
        emitted = {"done": 0, "at": 0.0}

        def emit(force: bool) -> None:
            now = time.perf_counter()
            if on_progress is None or not (force or now - emitted["at"] >= _PROGRESS_INTERVAL):
                return
            emitted["at"] = now
            errors = sum(1 for r in results.values() if r.error is not None)
            on_progress(
                Progress(len(results), len(prompts), errors, stats.generated_tokens, now - t_start)
            )

        def finish(res: Result) -> None:
            results[res.row] = res
            sampler = samplers.pop(res.row, None)
            if sampler is not None:
                sampler.close()
            if on_result is not None:
                on_result(res)

        try:
            for res in list(results.values()):
                if on_result is not None:
                    on_result(res)
            emit(True)
            if sched.has_unfinished_requests():
                self._set_prefix(ctx, prefix, n_slots, stats)
            batch = self._batch
            while sched.has_unfinished_requests():
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                plan = sched.schedule()
                if not plan.work:  # nothing fits: cannot happen once a slot is free
                    raise DecodeError("The scheduler found no work; this is a bug.", -1)
                batch.clear()
                out_index = {}
                for w in plan.work:
                    idx = batch.add(w.tokens, w.start_pos, w.slot, want_last_logits=w.wants_logits)
                    if w.wants_logits:
                        out_index[w.slot] = idx
                t0 = time.perf_counter()
                ctx.decode(batch)
                stats.decode_time += time.perf_counter() - t0
                stats.steps += 1
                sampled, failed = {}, []
                for slot, idx in out_index.items():
                    req = sched.slots[slot].request
                    try:
                        sampled[slot] = self._sample(ctx, samplers, req, idx)
                    except LocalLLMError as exc:
                        failed.append((slot, str(exc)))
                for slot, message in failed:
                    ctx.seq_rm(slot, prefix_len, -1)
                    finish(sched.fail_slot(slot, message))
                    plan.work = [w for w in plan.work if w.slot != slot]
                done, deltas = sched.update_from_output(plan, sampled)
                stats.generated_tokens += len(sampled)
                if on_text is not None:
                    for index, text in deltas:
                        on_text(index, text)
                for slot, res in done:
                    if len(valid) > 1:  # a single row's prompt stays cached (see _end_run)
                        ctx.seq_rm(slot, prefix_len, -1)
                    finish(res)
                emit(bool(done or failed))
        except BaseException as exc:
            for slot in sched.cancel_all():
                ctx.seq_rm(slot, prefix_len, -1)
            self._end_run(ctx, n_slots, None)
            for index, res in sched.finished.items():
                results.setdefault(index, res)
            for sampler in samplers.values():
                if sampler is not None:
                    sampler.close()
            stats.wall = time.perf_counter() - t_start
            if isinstance(exc, DecodeError):
                self.reset_cache()  # the cache may hold half a step
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, BatchInterrupted):
                ordered = [results[i] for i in range(len(prompts))]
                raise BatchInterrupted(
                    f"Interrupted after {sum(r.ok for r in ordered)} of {len(prompts)} rows; "
                    "the finished rows are in .results.",
                    ordered,
                ) from exc
            raise
        single_ok = len(valid) == 1 and results[valid[0]].ok
        self._end_run(ctx, n_slots, prompts[valid[0]] if single_ok else None)
        stats.wall = time.perf_counter() - t_start
        stats.decoded_prompt_tokens = stats.prefix_tokens_decoded + sum(
            len(prompts[i]) - prefix_len for i in valid
        )
        emit(True)
        return [results[i] for i in range(len(prompts))]

    def _sample(
        self, ctx: Context, samplers: dict[int, Sampler | None], req: Request, idx: int
    ) -> int:
        p = req.params
        if req.index not in samplers:
            plain_greedy = p.greedy and p.repeat_penalty == 1.0 and p.grammar is None
            samplers[req.index] = None if plain_greedy else Sampler(self.model, p, req.seed)
        sampler = samplers[req.index]
        if sampler is None:
            return ctx.greedy_token(idx)  # argmax in numpy: same token, no vocab-sized copy
        return sampler.sample(ctx, idx)
