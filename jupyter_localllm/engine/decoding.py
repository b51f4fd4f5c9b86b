"""One run on a :class:`~jupyter_localllm.engine.runner.KVSession`: THE decode loop of
continuous batching, for every request kind. Each step plans the work with the
:class:`~jupyter_localllm.engine.scheduler.Scheduler`, decodes it in one batch, samples a token
for every generating row that asked for logits, hands a scoring row's logits to its
:class:`~jupyter_localllm.engine.scoring.LabelScorer` (and rolls its branch back), and hands
finished rows, text pieces, scores and progress events to the caller's callbacks. Interrupts,
progress and the KV bookkeeping of a run come from here alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DecodeError, LocalLLMError
from ..types import Progress, Result
from .scheduler import Request, Scheduler, StepPlan

if TYPE_CHECKING:
    from .backend import BackendSampler
    from .runner import GenerationContext, KVSession
    from .scoring import LabelScorer

__all__ = ["GenerationRun"]

_PROGRESS_INTERVAL = 0.1  # seconds between progress events while no row finishes


class GenerationRun:
    """One :meth:`GenerationContext.run` or :meth:`GenerationContext.score_labels` on a
    :class:`KVSession`: the scheduler, the rows' samplers (or the label scorer), the results so
    far and the caller's callbacks. ``requests`` carry the rows' own tokens (after the shared
    prefix), in the order they are to be admitted; ``scorer`` is given when they score, and
    ``on_scores(rows, scores)`` then gets the rows scored in each step."""

    def __init__(
        self,
        owner: GenerationContext,
        kv: KVSession,
        prompts: Sequence[Sequence[int]],
        requests: Iterable[Request],
        *,
        on_progress: Callable[[Progress], None] | None,
        on_result: Callable[[Result], None] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        cancel: threading.Event | None,
        scorer: LabelScorer | None = None,
        on_scores: Callable[[list[int], np.ndarray], None] | None = None,
    ):
        self.owner, self.kv, self.ctx, self.prompts = owner, kv, kv.ctx, prompts
        self.on_progress, self.on_result, self.on_text = on_progress, on_result, on_text
        self.cancel, self.scorer, self.on_scores = cancel, scorer, on_scores
        self.results = kv.errors  # grows into every row's result
        self.scores = np.full((len(prompts), len(scorer.steps) if scorer else 0), np.nan)
        """A scoring run's scores ``[row, label]`` (NaN on rows not scored)."""
        self.samplers: dict[int, BackendSampler | None] = {}
        self.emitted_at = 0.0
        self.sched = Scheduler(
            n_slots=kv.n_slots,
            n_batch=owner.n_batch,
            prefix_len=kv.prefix_len,
            kv_capacity=kv.kv_capacity,
            slot_capacity=kv.slot_capacity,
            token_bytes=owner.model.token_bytes,
            is_eog=owner.model.is_eog,
            contiguous=not owner.kv_unified,
            deterministic=owner.deterministic,
        )
        for request in requests:
            early = self.sched.add_request(request)
            if early is not None:
                self.results[request.index] = early

    def run(self) -> list[Result]:
        """Run every row to its end; results in input order. A KeyboardInterrupt (or the
        cancel event) ends the run and goes on up as it is: the rows finished went to
        ``on_result``, and the session's run ledger makes the interrupt of the run."""
        try:
            self._start()
            self._loop()
        except BaseException as exc:
            self._tear_down(exc)
            raise
        return self._complete()

    def _start(self) -> None:
        """Report the rows that failed before running, then load the shared prefix."""
        if self.on_result is not None:
            for res in list(self.results.values()):
                self.on_result(res)
        self._emit(True)
        if self.sched.has_unfinished_requests():
            self.kv.load_prefix()

    def _loop(self) -> None:
        """One decode per step until no request waits or runs."""
        sched, cancel = self.sched, self.cancel
        while sched.has_unfinished_requests():
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            plan = sched.schedule()
            self._collect(plan, self._decode(plan))

    def _decode(self, plan: StepPlan) -> dict[int, int]:
        """Put ``plan`` in the batch and decode it; returns the output row of each slot that
        asked for logits."""
        if not plan.work:  # nothing fits: cannot happen once a slot is free
            raise DecodeError("The scheduler found no work; this is a bug.", -1)
        for src, dst in plan.moves:
            self.kv.move(src, dst)
        batch = self.kv.batch
        batch.clear()
        out_index = {}
        for w in plan.work:
            idx = batch.add(
                w.tokens,
                w.start_pos,
                w.slot,
                want_last_logits=w.wants_logits,
                want_all_logits=w.all_logits,
            )
            if w.wants_logits:
                out_index[w.slot] = idx
        self.kv.decode()
        return out_index

    def _read_scores(self, plan: StepPlan, out_index: dict[int, int]) -> None:
        """Hand each scoring slot's logits to the scorer and roll back a branch read whole;
        leaves in ``out_index`` only the slots to sample."""
        slots, scorer, ctx = self.sched.slots, self.scorer, self.ctx
        for w in plan.work:
            if w.slot not in out_index or slots[w.slot].request.branches is None:
                continue
            last = out_index.pop(w.slot)
            first = last - len(w.tokens) + 1 if w.all_logits else last
            scorer.add(slots[w.slot].request.index, map(ctx.logits, range(first, last + 1)))
            if w.rollback is not None:
                ctx.seq_rm(w.slot, w.rollback, -1)

    def _collect(self, plan: StepPlan, out_index: dict[int, int]) -> None:
        """Sample the slots' next tokens, feed them to the scheduler, finish the rows that
        ended and stream their text."""
        sched, kv = self.sched, self.kv
        if self.scorer is not None:
            self._read_scores(plan, out_index)
        sampled, failed = self._sample_all(out_index)
        for slot, message in failed:
            kv.release(slot)
            self._finish(sched.fail_slot(slot, message))
            plan.work = [w for w in plan.work if w.slot != slot]
        done, deltas = sched.update_from_output(plan, sampled)
        kv.stats.generated_tokens += len(sampled)
        if self.on_text is not None:
            for index, text in deltas:
                self.on_text(index, text)
        # a single generated row's prompt stays cached (see KVSession.end)
        several = len(kv.valid) > 1 or self.scorer is not None
        for slot, res in done:
            if several:
                kv.release(slot)
            self._finish(res)
        if self.scorer is not None and done:
            self._scored([res.row for _, res in done])
        self._emit(bool(done or failed))

    def _scored(self, rows: list[int]) -> None:
        """Fill the scores of the ``rows`` scored this step and hand them on."""
        for row in rows:
            self.scores[row] = self.scorer.finish(row)
        if self.on_scores is not None:
            self.on_scores(rows, self.scores[rows])

    def _sample_all(self, out_index: dict[int, int]) -> tuple[dict[int, int], list]:
        """The next token of each slot in ``out_index``, and ``(slot, message)`` for each slot
        whose sampler failed."""
        sampled, failed = {}, []
        slots = self.sched.slots
        for slot, idx in out_index.items():
            try:
                sampled[slot] = self._sample(slots[slot].request, idx)
            except LocalLLMError as exc:
                failed.append((slot, str(exc)))
        return sampled, failed

    def _sample(self, req: Request, idx: int) -> int:
        samplers = self.samplers
        if req.index not in samplers:
            p = req.params
            plain_greedy = p.greedy and p.repeat_penalty == 1.0 and p.grammar is None
            samplers[req.index] = (
                None if plain_greedy else self.owner.model.new_sampler(p, req.seed)
            )
        sampler = samplers[req.index]
        if sampler is None:
            return self.ctx.greedy_token(idx)  # argmax in numpy: same token, no vocab-sized copy
        return sampler.sample(self.ctx, idx)

    def _finish(self, res: Result) -> None:
        self.results[res.row] = res
        sampler = self.samplers.pop(res.row, None)
        if sampler is not None:
            sampler.close()
        if self.on_result is not None:
            self.on_result(res)

    def _emit(self, force: bool) -> None:
        """A progress event: when ``force``d, else at most every ``_PROGRESS_INTERVAL``."""
        if self.on_progress is None:
            return
        now = time.perf_counter()
        if not force and now - self.emitted_at < _PROGRESS_INTERVAL:
            return
        self.emitted_at = now
        errors = sum(1 for r in self.results.values() if r.error is not None)
        done, total, tokens = len(self.results), len(self.prompts), self.kv.stats.generated_tokens
        self.on_progress(Progress(done, total, errors, tokens, now - self.kv.t_start))

    def _complete(self) -> list[Result]:
        """End the session (a single finished row's prompt stays cached); results in order."""
        kv, valid = self.kv, self.kv.valid
        single_ok = len(valid) == 1 and self.results[valid[0]].ok and self.scorer is None
        kv.end(self.prompts[valid[0]] if single_ok else None)
        kv.stats.decoded_prompt_tokens = kv.stats.prefix_tokens_decoded + sum(
            len(self.prompts[i]) - kv.prefix_len for i in valid
        )
        self._emit(True)
        return [self.results[i] for i in range(len(self.prompts))]

    def _tear_down(self, exc: BaseException) -> None:
        """After an exception: cancel the rows left, end the session, free the samplers."""
        self.sched.cancel_all()
        self.kv.end()
        for index, res in self.sched.finished.items():
            self.results.setdefault(index, res)
        for sampler in self.samplers.values():
            if sampler is not None:
                sampler.close()
        if self.scorer is not None:
            self.scorer.forget()
        if isinstance(exc, DecodeError):
            self.owner.clear_cache()  # the cache may hold half a step
