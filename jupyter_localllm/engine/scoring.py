"""Label scoring: the log-probability of every candidate label as the continuation of each
prompt, instead of generating text and parsing it.

:meth:`~jupyter_localllm.engine.runner.GenerationContext.score_labels` runs it through the
one step loop of generation (:mod:`~jupyter_localllm.engine.decoding`): each row is a scoring
request of the :class:`~jupyter_localllm.engine.scheduler.Scheduler`, decoded in a slot on top
of the shared prompt prefix (decoded once), the rows of a step in one batch. A label's first
token is scored from the prompt's own logits. Where a label's later tokens must be scored,
they are decoded after the prompt in the row's own sequence (a branch: every row's in the same
step) and rolled back with ``seq_rm`` before the next, so no KV is copied and every label sees
exactly the prompt's cache. :class:`LabelScorer` holds the maths: which branches to decode
and how the logits read become each label's score.

Two scorings (see :func:`label_steps`):

``"constrained"``
    the probability that decoding constrained to the label set produces the label: at each
    point where labels part, the model's probabilities renormalised over the labels' next
    tokens. Tokens that no other label shares are certain once the label has begun, so labels
    whose first tokens differ cost nothing beyond the prompt.
``"joint"``
    the full sequence probability ``P(t1) P(t2|t1) …`` of each label's tokens; every token
    after the first costs a decode step, and longer labels are penalised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from ..types import Result
    from .runner import GenerationContext

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "MAX_LABEL_TOKENS",
    "SCORINGS",
    "LabelScorer",
    "Step",
    "check_label_sizes",
    "check_scoring",
    "label_steps",
    "score_labels",
]

SCORINGS = ("constrained", "joint")
# How many labels, and how long, label scoring takes: every label may cost a decode per wave
# of rows and a vocabulary-sized softmax per row and token, and where labels share a first
# token the planning is quadratic in their number (10,000 labels: minutes and 10 GB).
MAX_LABELS = 1000
MAX_LABEL_CHARS = 500  # checked before tokenizing
MAX_LABEL_TOKENS = 64


@dataclass(frozen=True)
class Step:
    """One term of a label's score: the log-probability at ``depth`` (tokens of the label
    already decoded after the prompt) of the label's next token, or, at the label's end, of
    stopping there."""

    depth: int
    token: int | None
    """The label's token at ``depth``; None for the end of a label that a longer one
    continues."""
    among: tuple[int, ...] | None
    """Tokens to renormalise over (the labels' continuations here); None for the plain
    log-softmax over the vocabulary."""


def check_scoring(scoring: str) -> None:
    """Raise :class:`InvalidParameterError` unless ``scoring`` is one of :data:`SCORINGS`."""
    if scoring not in SCORINGS:
        raise InvalidParameterError(
            f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}."
        )


def check_label_sizes(labels: Sequence[str]) -> None:
    """Raise :class:`InvalidParameterError` naming the limit when there are more than
    :data:`MAX_LABELS` labels or one is longer than :data:`MAX_LABEL_CHARS` characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidParameterError(
            f"Got {len(labels)} labels, more than the {MAX_LABELS} label scoring takes (each "
            "is scored for every row); group them into fewer labels, or classify in two steps."
        )
    longest = max(labels, key=len, default="")
    if len(longest) > MAX_LABEL_CHARS:
        raise InvalidParameterError(
            f"The label {longest[:40]!r}... has {len(longest)} characters, more than the "
            f"{MAX_LABEL_CHARS} a label may have; use a short name for it."
        )


def label_steps(label_tokens: Sequence[Sequence[int]], scoring: str) -> list[list[Step]]:
    """The terms that make up each label's score under ``scoring`` (see the module notes).

    In ``"constrained"`` scoring a point where only one label token can follow contributes
    nothing and is skipped; where a label ends but a longer label goes on, the label's end
    has the probability of every token that does not continue the longer ones.
    """
    check_scoring(scoring)
    labels = [tuple(t) for t in label_tokens]
    complete = set(labels)
    plans = []
    for lab in labels:
        steps = []
        for depth in range(len(lab) + 1):
            node = lab[:depth]
            nexts = tuple(
                sorted({o[depth] for o in labels if len(o) > depth and o[:depth] == node})
            )
            if depth < len(lab):
                if scoring == "joint" or node in complete:
                    # where a shorter label may also end, the options (its end and these
                    # tokens) hold all the mass: the plain log-softmax is already normalised
                    steps.append(Step(depth, lab[depth], None))
                elif len(nexts) > 1:
                    steps.append(Step(depth, lab[depth], nexts))
            elif scoring == "constrained" and nexts:
                steps.append(Step(depth, None, nexts))
        plans.append(steps)
    return plans


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits - np.logaddexp.reduce(logits)


def _step_logprob(step: Step, logp: np.ndarray) -> float:
    """``step``'s term from the log-probabilities ``logp`` at its depth."""
    if step.among is None:
        return float(logp[step.token])
    mass = float(np.exp(logp[list(step.among)]).sum())
    if step.token is None:  # stopping: every token that continues no longer label
        return float(np.log(max(1.0 - mass, 1e-30)))
    return float(logp[step.token] - np.log(mass))


def score_labels(
    gctx: GenerationContext,
    prompts: Sequence[Sequence[int]],
    label_tokens: Sequence[Sequence[int]],
    **options: Any,
) -> tuple[np.ndarray, dict[int, Result]]:
    """``gctx.score_labels(prompts, label_tokens, **options)``, as a function: see
    :meth:`~jupyter_localllm.engine.runner.GenerationContext.score_labels` for the options."""
    return gctx.score_labels(prompts, label_tokens, **options)


class LabelScorer:
    """The label-scoring maths of one run: ``label_tokens`` (each non-empty) under
    ``scoring``. The step loop (:mod:`~jupyter_localllm.engine.decoding`) decodes each row as
    a scoring request whose branches are :attr:`branches`, hands the logits it reads to
    :meth:`add` and takes the row's scores from :meth:`finish` (see the module notes)."""

    def __init__(self, label_tokens: Sequence[Sequence[int]], scoring: str):
        longest = max(map(len, label_tokens), default=0)
        if len(label_tokens) > MAX_LABELS or longest > MAX_LABEL_TOKENS:
            raise InvalidParameterError(
                f"Got {len(label_tokens)} labels of up to {longest} tokens; label scoring takes "
                f"at most {MAX_LABELS} labels of at most {MAX_LABEL_TOKENS} tokens each."
            )
        self.label_tokens = label_tokens
        self.steps = label_steps(label_tokens, scoring)
        """Each label's terms (:func:`label_steps`)."""
        self.depth = [max((st.depth for st in label), default=0) for label in self.steps]
        """Tokens of each label decoded after the prompt: up to its deepest scored point."""
        self.need = max(self.depth, default=0)
        """KV cells a row needs after its prompt."""
        runs = [tuple(lab[:d]) for lab, d in zip(label_tokens, self.depth, strict=True) if d]
        # once each, in label order (a run that starts a longer one is decoded on its own:
        # with flash attention its logits depend a little on the tokens decoded with it)
        self.branches = list(dict.fromkeys(runs))
        """The token runs decoded after each prompt, each rolled back before the next."""
        self._offset = [
            self._offset_of(tuple(lab[:d])) for lab, d in zip(label_tokens, self.depth, strict=True)
        ]
        self._read: dict[int, list[np.ndarray]] = {}

    def _offset_of(self, run: tuple[int, ...]) -> int:
        """Where the logits after ``run``'s first token are among a row's reads (0: after the
        prompt, 1: after the first branch's first token, ...)."""
        offset = 1
        for branch in self.branches if run else ():
            if branch == run:
                return offset
            offset += len(branch)
        return 0

    def add(self, row: int, logits: Iterable[np.ndarray]) -> None:
        """Keep the log-probabilities of ``logits`` read for ``row``: after its prompt first,
        then after each token of each branch, in order."""
        self._read.setdefault(row, []).extend(_log_softmax(lg) for lg in logits)

    def finish(self, row: int) -> np.ndarray:
        """The scores of ``row``'s labels, from what :meth:`add` kept (then forgotten)."""
        read = self._read.pop(row)
        out = np.empty(len(self.steps))
        for j, label in enumerate(self.steps):
            offset = self._offset[j]
            after = [read[0], *read[offset : offset + self.depth[j]]]
            out[j] = sum(_step_logprob(st, after[st.depth]) for st in label)
        return out

    def forget(self) -> None:
        """Drop what rows that never finished left (an interrupted run)."""
        self._read.clear()
