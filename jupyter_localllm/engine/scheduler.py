"""Continuous batching: which request runs in which slot, and what goes into each decode step.

The :class:`Scheduler` is pure bookkeeping over token ids — it never calls llama.cpp — so it is
tested with hand-made "model outputs" the way vLLM tests its scheduler. The runner
(:mod:`jupyter_localllm.engine.runner`) turns its :class:`StepPlan` into one ``llama_decode``
and feeds the sampled tokens back with :meth:`Scheduler.update_from_output`.

KV layout: every slot (sequence id) holds the shared prompt prefix at positions
``[0, prefix_len)``, followed by its own request's prompt suffix and generated tokens. By
default each sequence has its own stream of cells (``kv_unified=False``): the prefix is copied
into every stream and ``slot_capacity`` is one stream's share. With a unified cache the prefix
is stored once and the slots draw on one pool of ``kv_capacity`` cells. A finished request
releases only its own positions, so the next request admitted to that slot starts on top of
the prefix without recomputing it.

Two kinds of request share the loop (as vLLM's ``EngineCore.step`` serves generation and
pooling alike): a generating request samples a token after its prompt and decodes it, step
after step; a scoring request (``branches`` given) reads the logits after its prompt, then
decodes each branch — a run of tokens after the prompt, every token's logits asked for — in
its own sequence and has it rolled back (:attr:`SlotWork.rollback`) before the next, and
finishes when the last branch is read (label scoring: :mod:`~jupyter_localllm.engine.scoring`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..types import Result
from .sampling import SamplingParams
from .text import TextAccumulator

__all__ = [
    "Request",
    "Scheduler",
    "SlotWork",
    "StepPlan",
    "common_prefix_length",
]


@dataclass
class Request:
    """One prompt to run: its tokens, its sampling parameters and its own seed — or, for a
    scoring request, the ``branches`` to read after it."""

    index: int
    tokens: Sequence[int]
    params: SamplingParams | None
    """Sampling parameters of a generating request (None for a scoring one)."""
    seed: int = 0
    branches: Sequence[Sequence[int]] | None = None
    """A scoring request: token runs decoded one after another after the prompt, each rolled
    back before the next (may be empty: only the prompt's logits are read)."""

    @property
    def cells_after(self) -> int:
        """KV cells the request may use after its prompt."""
        if self.branches is None:
            return self.params.max_tokens
        return max(map(len, self.branches), default=0)


@dataclass
class _Slot:
    request: Request
    n_prefilled: int  # prompt tokens (after the shared prefix) already in the KV cache
    budget: int  # KV cells reserved for this request
    text: TextAccumulator
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled, not yet decoded
    branch: int = 0  # scoring: the branch being read
    branch_done: int = 0  # scoring: its tokens already decoded

    @property
    def suffix_len(self) -> int:
        return len(self.request.tokens)

    def chunk(self, i: int, room: int, prefix_len: int, branches_ok: bool) -> SlotWork | None:
        """The next piece of prompt (or, scoring, of branch when ``branches_ok``) slot ``i``
        reads, at most ``room`` tokens; None when it reads nothing."""
        start = self.n_prefilled
        if start < self.suffix_len:
            end = min(self.suffix_len, start + room)
            tokens = self.request.tokens[start:end]
            return SlotWork(i, tokens, prefix_len + start, end == self.suffix_len)
        branches = self.request.branches
        if branches is None or not branches_ok or self.branch >= len(branches):
            return None
        branch, start = branches[self.branch], self.branch_done
        end = min(len(branch), start + room)
        base = prefix_len + self.suffix_len
        rollback = base if end == len(branch) else None
        return SlotWork(i, branch[start:end], base + start, True, True, rollback)


@dataclass
class SlotWork:
    """Tokens one slot contributes to a step."""

    slot: int
    tokens: Sequence[int]
    start_pos: int
    wants_logits: bool
    """The logits after the last token are read (sampled from, or scored)."""
    all_logits: bool = False
    """Every token's logits are read (a scoring request's branch)."""
    rollback: int | None = None
    """Once its logits are read, the slot's cells from this position on are removed (the
    end of a branch)."""


@dataclass
class StepPlan:
    """What the next ``llama_decode`` holds, in slot order, and the ``(src, dst)`` slot
    moves to make in the KV cache before it."""

    work: list[SlotWork]
    moves: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Total tokens in the step."""
        return sum(len(w.tokens) for w in self.work)


def common_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every list."""
    if not token_lists:
        return 0
    first = token_lists[0]
    n = min(len(t) for t in token_lists)
    for other in token_lists[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


class Scheduler:
    """Assigns requests to ``n_slots`` sequence slots and plans each decode step.

    ``prefix_len`` tokens are already in every slot; requests carry only their suffix.
    ``kv_capacity`` is the number of KV cells left for suffixes and generated tokens across
    all slots; ``slot_capacity`` (default: all of them) is what one slot may use — smaller
    when every sequence has its own share of the cache. ``token_bytes`` and ``is_eog``
    describe the vocabulary. With ``contiguous=True`` the running requests are kept in slots
    ``0..k-1``: when one ends and no request takes its slot, the last one moves into it. A
    batch over per-sequence streams is decoded in one piece only when its sequence ids are
    consecutive (llama.cpp splits it at every gap, a pass over the weights per piece; measured
    0.5 s per step for 25 scattered rows against 0.33 s for 48 consecutive ones).
    """

    def __init__(
        self,
        *,
        n_slots: int,
        n_batch: int,
        prefix_len: int,
        kv_capacity: int,
        token_bytes: Callable[[int], bytes],
        is_eog: Callable[[int], bool],
        slot_capacity: int | None = None,
        contiguous: bool = False,
        deterministic: bool = False,
    ):
        self.deterministic = deterministic
        """Steps shaped so a row's numbers do not depend on its neighbours: prompt pieces of
        equal size, never one token alone, never in a step with generated tokens."""
        self.n_slots = n_slots
        self.contiguous = contiguous
        self.n_batch = n_batch
        self.prefix_len = prefix_len
        self.kv_capacity = kv_capacity
        self.slot_capacity = min(kv_capacity, slot_capacity or kv_capacity)
        self._token_bytes = token_bytes
        self._is_eog = is_eog
        self.waiting: deque[Request] = deque()
        self.slots: list[_Slot | None] = [None] * n_slots
        self.finished: dict[int, Result] = {}
        self._reserved = 0

    # -- requests --------------------------------------------------------------------------
    def add_request(self, request: Request) -> Result | None:
        """Queue ``request``; returns an error result at once when it can never fit."""
        if len(request.tokens) == 0:
            return self._finish_early(request, "the prompt adds no tokens to the shared prefix")
        if request.branches is not None:
            if len(request.tokens) + request.cells_after > self.slot_capacity:
                return self._finish_early(
                    request,
                    f"the prompt has {self.prefix_len + len(request.tokens)} tokens, more than "
                    "the context holds with the labels; use a larger n_ctx or a shorter prompt",
                )
        elif len(request.tokens) + 1 > self.slot_capacity:
            n_prompt = self.prefix_len + len(request.tokens)
            return self._finish_early(
                request,
                f"the prompt has {n_prompt} tokens, more than the context holds "
                f"({self.prefix_len + self.slot_capacity} tokens per sequence); use a larger n_ctx "
                "or a shorter prompt",
            )
        self.waiting.append(request)
        return None

    def _finish_early(self, request: Request, message: str) -> Result:
        result = Result.failed(
            message, row=request.index, n_prompt_tokens=self.prefix_len + len(request.tokens)
        )
        self.finished[request.index] = result
        return result

    def has_unfinished_requests(self) -> bool:
        """True while requests wait or run."""
        return bool(self.waiting) or any(s is not None for s in self.slots)

    # -- planning --------------------------------------------------------------------------
    def _admit(self) -> None:
        free = [i for i, slot in enumerate(self.slots) if slot is None]
        admitted: list[tuple[Request, int]] = []
        while self.waiting and len(admitted) < len(free):
            request = self.waiting[0]
            budget = min(len(request.tokens) + request.cells_after, self.slot_capacity)
            if self._reserved + budget > self.kv_capacity:
                break  # wait for cells; FIFO keeps the order fair
            self.waiting.popleft()
            self._reserved += budget
            admitted.append((request, budget))
        # Longest prompts in the lowest slots: llama.cpp decodes per-sequence streams in pieces
        # of consecutive sequences taking equal token counts, so a sorted wave of prompts is one
        # piece per distinct length instead of one per gap.
        # (Scoring requests keep their order: the rows' scores then do not depend on their
        # neighbours' lengths.)
        if all(request.branches is None for request, _ in admitted):
            admitted.sort(key=lambda item: -len(item[0].tokens))
        for i, (request, budget) in zip(free, admitted, strict=False):
            self.slots[i] = _Slot(
                request=request,
                n_prefilled=0,
                budget=budget,
                text=TextAccumulator(request.params.stop if request.params else ()),
            )

    def _compact(self) -> list[tuple[int, int]]:
        """Move the last running requests into the free slots below them."""
        moves = []
        slots = self.slots
        while None in slots:
            low = slots.index(None)
            high = max((i for i, s in enumerate(slots) if s is not None), default=-1)
            if high < low:
                break
            slots[low], slots[high] = slots[high], None
            moves.append((high, low))
        return moves

    def schedule(self) -> StepPlan:
        """Plan the next step: one token per generating slot, then chunks of the slots still
        reading their prompt or (scoring) a branch, in slot order, never more than ``n_batch``
        tokens; the work is listed in slot order (llama.cpp takes consecutive sequences
        together)."""
        self._admit()
        moves = self._compact() if self.contiguous else []
        work: list[SlotWork] = []
        room = self.n_batch
        if self.deterministic:
            prompts = self._even_prompt_work(room)
            if prompts:
                return StepPlan(prompts, moves)
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.next_token is not None and room > 0:
                pos = self.prefix_len + slot.suffix_len + len(slot.generated) - 1
                work.append(SlotWork(i, (slot.next_token,), pos, True))
                room -= 1
        # Branches wait until every prompt of the step's rows is read, so a wave of scoring
        # rows decodes its prompts, then each branch, the same however n_batch cuts them.
        branches_ok = not any(s is not None and s.n_prefilled < s.suffix_len for s in self.slots)
        for i, slot in enumerate(self.slots):
            if room <= 0:
                break
            if slot is None or slot.next_token is not None:
                continue
            piece = slot.chunk(i, room, self.prefix_len, branches_ok)
            if piece is not None:
                work.append(piece)
                room -= len(piece.tokens)
        work.sort(key=lambda w: w.slot)
        return StepPlan(work, moves)

    def _even_prompt_work(self, room: int) -> list[SlotWork]:
        """Deterministic mode: as many prompt tokens from each slot still reading its prompt
        (llama.cpp then decodes the step in one piece per run of consecutive sequences, not in
        the pieces of equal length it cuts a mixed step into), never leaving a slot a single
        token for later: one token in a sequence takes other attention kernels than two."""
        reading = [
            (i, slot.suffix_len - slot.n_prefilled)
            for i, slot in enumerate(self.slots)
            if slot is not None and slot.n_prefilled < slot.suffix_len
        ]
        if not reading:
            return []
        low = min(left for _, left in reading)
        size = min(low, room)
        if low - size == 1:
            size -= 1
        group = [(i, left) for i, left in reading if left == size or left >= size + 2]
        work = []
        for i, left in group[: max(1, room // size)]:
            start = self.slots[i].n_prefilled
            tokens = self.slots[i].request.tokens[start : start + size]
            work.append(SlotWork(i, tokens, self.prefix_len + start, left == size))
        return work

    def update_from_output(
        self, plan: StepPlan, sampled: dict[int, int]
    ) -> tuple[list[tuple[int, Result]], list[tuple[int, str]]]:
        """Record a decoded step and the tokens sampled for slots that asked for logits (the
        caller reads a scoring slot's logits itself and samples nothing for it).

        Returns ``(finished, deltas)``: ``(slot, result)`` for requests that ended this step
        (their slot is free now; the caller clears its KV positions; a scored request's
        result has no text), and ``(request index, new text)`` pieces for streaming.
        """
        finished: list[tuple[int, Result]] = []
        deltas: list[tuple[int, str]] = []
        for w in plan.work:
            slot = self.slots[w.slot]
            if slot is None:
                continue
            if slot.n_prefilled < slot.suffix_len:
                slot.n_prefilled += len(w.tokens)
            elif slot.request.branches is not None:
                slot.branch_done += len(w.tokens)
                if w.rollback is not None:
                    slot.branch, slot.branch_done = slot.branch + 1, 0
            else:
                slot.next_token = None  # the pending token is now in the cache
            if slot.request.branches is not None:
                if slot.n_prefilled == slot.suffix_len and slot.branch == len(
                    slot.request.branches
                ):
                    finished.append((w.slot, self._release(w.slot, "stop", deltas)))
                continue
            if not w.wants_logits:
                continue
            token = sampled[w.slot]
            reason = self._accept(slot, token, deltas)
            if reason is not None:
                finished.append((w.slot, self._release(w.slot, reason, deltas)))
        return finished, deltas

    def _accept(self, slot: _Slot, token: int, deltas: list[tuple[int, str]]) -> str | None:
        if self._is_eog(token):
            return "eog"
        slot.generated.append(token)
        piece = slot.text.feed(self._token_bytes(token))
        if piece:
            deltas.append((slot.request.index, piece))
        if slot.text.stopped:
            return "stop"
        if len(slot.generated) >= slot.request.params.max_tokens:
            return "length"
        if slot.suffix_len + len(slot.generated) >= slot.budget:
            return "length"  # the context is full for this request
        slot.next_token = token
        return None

    def _release(self, i: int, reason: str, deltas: list[tuple[int, str]]) -> Result:
        slot = self.slots[i]
        assert slot is not None
        tail = slot.text.finish()
        if tail:
            deltas.append((slot.request.index, tail))
        self.slots[i] = None
        self._reserved -= slot.budget
        result = Result(
            slot.text.text,
            finish_reason=reason,
            n_prompt_tokens=self.prefix_len + slot.suffix_len,
            n_tokens=len(slot.generated),
            row=slot.request.index,
        )
        self.finished[slot.request.index] = result
        return result

    def fail_slot(self, i: int, message: str) -> Result:
        """End slot ``i``'s request with an error (e.g. its sampler failed)."""
        slot = self.slots[i]
        assert slot is not None
        self.slots[i] = None
        self._reserved -= slot.budget
        result = Result.failed(
            message, row=slot.request.index, n_prompt_tokens=self.prefix_len + slot.suffix_len
        )
        self.finished[slot.request.index] = result
        return result

    def cancel_all(self, message: str = "cancelled") -> list[int]:
        """End every waiting and running request as cancelled; returns the freed slots."""
        freed = []
        ended = []
        for i, slot in enumerate(self.slots):
            if slot is not None:
                ended.append(self.fail_slot(i, message))
                freed.append(i)
        while self.waiting:
            ended.append(self._finish_early(self.waiting.popleft(), message))
        for res in ended:  # results are immutable: keep cancelled copies
            self.finished[res.row] = res.replace(finish_reason="cancelled")
        return freed
