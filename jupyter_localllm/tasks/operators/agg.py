"""``sem_agg``: one answer per group of rows (or for the whole frame), by folding.

The rows of a group are packed into chunks that fit the context (a token budget from the
context's size, less the answer's ``max_tokens`` and the instruction), each chunk is answered,
and the answers are packed and answered again until one chunk holds a group's all: a
hierarchical fold (LOTUS's ``sem_agg``). Each level of every group is one batched generate
request, so chunks of all groups run side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ... import defaults
from ...errors import InvalidParameterError
from ...session.executors import Plan, execute
from ...types import Result
from ..options import check_count
from ..prompts import render_prompt, resolve_format
from ..rows import FrameRows
from .common import columns_rows, operator_info, resolve

if TYPE_CHECKING:
    from ...engine.runner import GenerationContext
    from ...session.jobs import Job
    from ...session.pipeline import BatchRequest
    from ...types import Results

__all__ = ["AggOptions", "agg_plan", "sem_agg"]

LEAF_HEAD = "{instruction}\n\nThe data, one item per line:\n"
FOLD_HEAD = "{instruction}\n\nAnswers for parts of the data, one per line; combine them:\n"
_SEPARATOR_TOKENS = 4  # "- " and a newline around each item, counted generously
_MARGIN = 16


@dataclass(frozen=True)
class AggOptions:
    """How :func:`agg_plan` folds."""

    max_tokens: int = defaults.MAX_TOKENS
    """The longest answer of a chunk (and the final one)."""
    max_input_tokens: int | None = None
    """The items' tokens one prompt may hold; ``None``: what the context allows."""
    system_prompt: str | None = None
    format: str = "auto"
    cache: bool | None = None

    def __post_init__(self) -> None:
        check_count("max_tokens", self.max_tokens)
        if self.max_input_tokens is not None:
            check_count("max_input_tokens", self.max_input_tokens)


def _budget(context: GenerationContext, instruction: str, options: AggOptions) -> int:
    """Tokens of items one prompt may hold; refused when two answers would not fit, since
    then a fold could never shrink."""
    fmt = resolve_format(context.model, options.format)
    head = render_prompt(
        context.model, fmt, FOLD_HEAD.format(instruction=instruction), None, options.system_prompt
    )
    overhead = len(context.model.tokenize(head)) + options.max_tokens + _MARGIN
    budget = context.max_row_cells() - overhead
    if options.max_input_tokens is not None:
        budget = min(budget, options.max_input_tokens)
    if budget < 2 * (options.max_tokens + _SEPARATOR_TOKENS):
        raise InvalidParameterError(
            f"Only {budget} tokens of data fit one prompt, fewer than two answers of "
            f"max_tokens={options.max_tokens}; give a larger n_ctx or max_input_tokens, or a "
            "smaller max_tokens."
        )
    return budget


def _chunks(sizes: list[int], budget: int) -> list[list[int]]:
    """Items (by their token counts) packed in order into chunks within ``budget``."""
    chunks: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(sizes):
        size = min(size, budget) + _SEPARATOR_TOKENS
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += size
    return chunks


class _Fold:
    """The items of every group still being folded, level by level."""

    def __init__(self, context: GenerationContext, groups: dict[Any, list[str]], budget: int):
        self.context, self.budget = context, budget
        self.items = groups
        self.level = 0
        self.answers: dict[Any, Result] = {}
        self.truncated = 0

    def _fit(self, text: str) -> tuple[str, int]:
        tokens = self.context.model.tokenize(text, add_special=False)
        if len(tokens) <= self.budget:
            return text, len(tokens)
        self.truncated += 1
        return self.context.model.detokenize(tokens[: self.budget]), self.budget

    def prompts(self, instruction: str) -> tuple[list[str], list[tuple[Any, bool]]]:
        """This level's prompts and, for each, its group and whether it is the last."""
        head = (LEAF_HEAD if self.level == 0 else FOLD_HEAD).format(instruction=instruction)
        prompts, owners = [], []
        for key, items in self.items.items():
            fitted = [self._fit(t) for t in items]
            chunks = _chunks([n for _, n in fitted], self.budget)
            for chunk in chunks:
                body = "\n".join("- " + fitted[i][0].replace("\n", " ") for i in chunk)
                prompts.append(head + body)
                owners.append((key, len(chunks) == 1))
        return prompts, owners

    def take(self, owners: list[tuple[Any, bool]], results: Results) -> None:
        """The level's answers: final ones kept, the others the next level's items."""
        following: dict[Any, list[str]] = {}
        for (key, last), res in zip(owners, results, strict=True):
            if last:
                self.answers[key] = res
            elif res.ok:
                following.setdefault(key, []).append(str(res))
        for key, _ in owners:
            if key not in self.answers and key not in following:
                self.answers[key] = Result.failed("every part of this group failed", row=0)
        self.items = following
        self.level += 1


def _groups(frame: pd.DataFrame, rows: FrameRows, by: Any) -> dict[Any, list[str]]:
    """Each group's texts in row order (rows that cannot run left out)."""
    if by is None:
        positions = {"all": np.arange(len(rows.texts))}
    else:
        positions = frame.groupby(by, sort=True, observed=True, dropna=False).indices
    return {
        key: [rows.texts[i] for i in pos if rows.texts[i] is not None]
        for key, pos in positions.items()
    }


def agg_plan(
    context: GenerationContext,
    frame: pd.DataFrame,
    instruction: str,
    by: Any,
    options: AggOptions,
    **sampling: Any,
) -> Plan[pd.Series]:
    """The run of :func:`sem_agg`: one generate request per level of the fold. Its value
    is a Series of :class:`~jupyter_localllm.Result` answers by group key."""
    from ..generation import generation_request

    shown, rows = columns_rows(frame, instruction, "instruction")
    budget = _budget(context, shown, options)
    groups = _groups(frame, rows, by)
    fmt = resolve_format(context.model, options.format)

    def steps() -> Generator[BatchRequest, Results, pd.Series]:
        fold = _Fold(context, {k: v for k, v in groups.items() if v}, budget)
        levels = []
        while fold.items:
            prompts, owners = fold.prompts(shown)
            chats = [
                render_prompt(context.model, fmt, p, None, options.system_prompt) for p in prompts
            ]
            request = generation_request(
                context,
                chats,
                clean=True,
                cache=options.cache,
                max_tokens=options.max_tokens,
                **sampling,
            )
            request.function = "agg"
            levels.append(len(prompts))
            fold.take(owners, (yield request))
        empty = Result.failed("no row of this group could run", row=0)
        answers = [fold.answers.get(key, empty) for key in groups]
        out = pd.Series(answers, index=_index(list(groups), by), dtype=object, name="llm")
        out.attrs["llm"] = operator_info(
            "agg",
            context,
            rows,
            groups=len(groups),
            levels=levels,
            budget=budget,
            truncated=fold.truncated,
        )
        return out

    total = max(1, sum(len(_chunks([1] * len(v), budget)) for v in groups.values()))
    return Plan(steps(), total=total, desc="agg", context=context)


def _index(keys: list[Any], by: Any) -> pd.Index:
    if by is None:
        return pd.Index(keys)
    if isinstance(by, (list, tuple)) and len(by) > 1:
        return pd.MultiIndex.from_tuples(keys, names=list(by))
    keys = [k[0] if isinstance(k, tuple) and len(k) == 1 else k for k in keys]
    return pd.Index(keys, name=by[0] if isinstance(by, (list, tuple)) else by)


def sem_agg(
    frame: pd.DataFrame,
    instruction: str,
    *,
    by: Any = None,
    model: Any = None,
    n_seq_max: int | None = None,
    max_tokens: int = defaults.MAX_TOKENS,
    max_input_tokens: int | None = None,
    system_prompt: str | None = None,
    format: str = "auto",
    cache: bool | None = None,
    progress: Any = None,
    cancel: threading.Event | None = None,
    background: bool = False,
    cluster: Any = None,
    **sampling: Any,
) -> pd.Series | Job:
    """One answer per group of ``frame``'s rows (``by``: a column or columns, as for
    ``groupby``), or for the whole frame (``by=None``: one answer indexed ``"all"``).

    ``instruction`` names the columns it reads in braces (``"Summarise the main events in
    these {title}s"``); each row's values are an item. Items are folded (see the module
    notes): packed into prompts within the context's budget (``max_input_tokens`` caps it),
    answered with at most ``max_tokens`` tokens each, the answers packed and answered again
    until one prompt holds them all; each level is one batched generate request. Returns a
    Series of :class:`~jupyter_localllm.Result` by group; ``attrs["llm"]`` lists the
    prompts per level (``levels``) and rows left out (``failed``). Sampling keywords
    (``temperature``, ``seed``, ...), ``cache`` (each prompt's answer, so a re-run answers
    only what changed) and the rest as for :func:`~jupyter_localllm.sem_filter`.
    """
    options = AggOptions(max_tokens, max_input_tokens, system_prompt, format, cache)
    context = resolve(model, n_seq_max)
    plan = agg_plan(context, frame, instruction, by, options, **sampling)
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)
