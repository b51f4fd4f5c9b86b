"""The generation tasks and the localLLM-style model API: ``model_load``, ``context_create``,
``apply_chat_template``, ``tokenize``/``detokenize``, ``generate``, ``generate_parallel`` and
``quick_llama``. Names mirror the R package localLLM so its tutorials translate line by line;
sampling keywords follow llama-cpp-python. Batch calls are short builders of a
:class:`~jupyter_localllm.session.pipeline.BatchRequest`; the session runs them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import defaults, hardware
from ..engine.backend import MAX_SEQUENCES, UINT32_MAX, BackendModel, check_int
from ..engine.factory import set_verbosity
from ..engine.runner import GenerationContext
from ..engine.sampling import SamplingParams
from ..errors import InvalidParameterError, PromptError
from ..session.executors import execute, single
from ..session.manager import get_manager, model_load, open_context
from ..session.pipeline import BatchRequest, resolve_sampling
from ..session.sinks import RESULT_FIELDS, rows_to_sink
from ..types import Progress, Result, Results
from .prompts import chat_prompts, model_chat

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = [
    "apply_chat_template",
    "check_context",
    "context_create",
    "detokenize",
    "generate",
    "generate_parallel",
    "generation_request",
    "hardware_profile",
    "model_load",
    "quick_llama",
    "tokenize",
]

hardware_profile = hardware.hardware_profile
SamplingArg = SamplingParams | Sequence[SamplingParams | Mapping[str, Any]] | None


def context_create(
    model: BackendModel,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_seq_max: int = 1,
    *,
    n_batch: int = 512,
    kv_unified: bool | None = None,
    flash_attn: bool | None = None,
    verbosity: int | None = None,
    deterministic: bool | None = None,
) -> GenerationContext:
    """A context for generating with ``model``: ``n_seq_max`` rows run in parallel.

    ``n_ctx=None`` sizes the KV cache from each call's work (grown when needed); give a
    number to fix it. Each sequence gets its own share of the cache (``n_ctx / n_seq_max``
    tokens, as in localLLM): attention then only reads a row's own tokens, which is the
    fastest layout on CPUs; the prompt prefix shared by all rows is decoded once and copied
    into each share. With ``kv_unified=None`` (the default) a run uses one shared cache
    instead when a fixed ``n_ctx`` split that way is too small for a row that the whole
    ``n_ctx`` holds (the row runs rather than failing), or when the run is prompt-bound: its
    rows' own prompt tokens are at least four times the tokens they may decode after them
    (short answers, label scoring). llama.cpp decodes a wave of prompts of different lengths
    whole in a shared cache, and on per-row streams in a cascade of small pieces (the 0.5B
    benchmark model's seed workload: 13% faster shared; generation steps are 4-12% slower
    there). ``kv_unified=False`` always splits (localLLM's behaviour: rows too long for their
    share fail), ``kv_unified=True`` always shares (the prefix stored once; less memory for
    long shared prefixes, slower attention with many rows). ``flash_attn`` (on by
    default, as llama-server's ``-fa auto`` on CPUs) uses llama.cpp's fused attention: 7-27%
    faster batched decoding on this project's CPU benchmarks, and in a shared cache it skips
    other rows' cells. Its CPU kernel accumulates short decodes in 16-bit floats, so a
    log-probability depends a little on how the prompt was split into decodes (a cached
    prefix or not: 0.2 nats on average for the default 135M model's labels) — as large as the
    16-bit KV cache's own error against a 32-bit one (0.23), which every setting has; with a
    stream per row that split depends on the row alone, in a shared cache on its neighbours
    too. ``flash_attn=False`` is llama-cpp-python's ``Llama`` default, whose results do not
    depend on the split.
    ``n_threads`` defaults to the physical cores.

    ``deterministic=True`` (default :data:`~jupyter_localllm.defaults.DETERMINISTIC`) makes a
    row's text depend only on its prompt, the model file, the sampling settings and its seed:
    not on ``n_seq_max``, the other rows, loop versus batch, the cached prefix or Dask
    partitions. It turns flash attention off, keeps a KV stream per row (so ``flash_attn=True``
    or ``kv_unified=True`` with it is an error), needs a model loaded with
    ``use_extra_bufts=False`` and decodes prompts apart from generated tokens (README,
    "Reproducibility", for its cost).
    """
    if verbosity is not None:
        set_verbosity(verbosity)
    check_model(model)
    return open_context(
        model,
        n_ctx=n_ctx,
        n_seq_max=n_seq_max,
        n_batch=n_batch,
        n_threads=n_threads,
        kv_unified=kv_unified,
        flash_attn=flash_attn,
        deterministic=defaults.DETERMINISTIC if deterministic is None else deterministic,
    )


def apply_chat_template(
    model: BackendModel,
    messages: str | Sequence[Mapping[str, Any]],
    *,
    template: str | None = None,
    add_assistant: bool = True,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` (dicts with ``role`` and ``content``, or one user string) as a
    prompt with the model's own chat template (or ``template``), ending with the assistant's
    turn opened when ``add_assistant``."""
    check_model(model)
    return model_chat(
        model, messages, template=template, add_assistant=add_assistant, **template_kwargs
    )


def tokenize(model: BackendModel, text: str, *, add_special: bool = True) -> list[int]:
    """Token ids of ``text`` (control-token text such as ``<|im_start|>`` becomes its token;
    ``add_special`` adds BOS when the model wants it)."""
    check_model(model)
    if not isinstance(text, str):
        raise InvalidParameterError(f"text must be a string, got {type(text).__name__}.")
    return model.tokenize(text, add_special=add_special)


def detokenize(model: BackendModel, tokens: Sequence[int], *, special: bool = False) -> str:
    """The text of ``tokens``; ``special=True`` renders control tokens as their text."""
    check_model(model)
    return model.detokenize(list(tokens), special=special)


def generate(
    context: GenerationContext,
    prompt: str,
    *,
    sampling: SamplingParams | None = None,
    clean: bool = defaults.GENERATE_CLEAN,
    stream: Callable[[str], Any] | None = None,
    **sampling_kwargs: Any,
) -> Result:
    """Generate a continuation of ``prompt`` (apply a chat template first for chat models).

    Sampling: ``sampling=SamplingParams(...)`` and/or its fields as keywords (``max_tokens``
    100, ``temperature`` 0 = greedy, ``top_k``, ``top_p``, ``min_p``, ``repeat_penalty``,
    ``repeat_last_n``, ``seed`` 1234, ``stop``, ``grammar``); the same call gives the same
    text every time, also when sampling with a fixed ``seed``. ``stream`` is called with each
    new piece of text as it is generated. ``clean=True`` strips chat control tokens and
    ``<think>`` blocks (off by default, as in localLLM; see :mod:`~jupyter_localllm.defaults`).
    Returns a :class:`Result` (a ``str`` with ``finish_reason``, ``n_prompt_tokens`` and
    ``n_tokens``). Raises :class:`PromptError` for an empty or too long
    prompt. The run shows in the session's activity (JupyterLab's status bar) while it runs;
    Ctrl-C (a kernel interrupt) stops it with :class:`BatchInterrupted`.
    """
    params = SamplingParams.from_kwargs(sampling, **sampling_kwargs)
    check_context(context)
    request = BatchRequest(
        context,
        [prompt],
        sampling=params,
        clean=clean,
        cache=False,
        stream=(lambda _row, piece: stream(piece)) if stream is not None else None,
        function="generate",
        log_params={**params.as_dict(), "clean": clean},
    )
    # through the foreground executor, so the run (a %%llm cell too) shows in the status bar
    (result,) = execute(single(request, desc="generate"), progress=False)
    if result.error is not None:
        raise PromptError(result.error[0].upper() + result.error[1:] + ".")
    return result


def generation_request(
    context: GenerationContext,
    prompts: Sequence[Any],
    *,
    sampling: SamplingArg = None,
    clean: bool = defaults.GENERATE_CLEAN,
    cache: bool | None = None,
    errors: Mapping[int, str] | None = None,
    **sampling_kwargs: Any,
) -> BatchRequest:
    """The request of :func:`generate_parallel` (for front-ends and tasks that build on it):
    ``errors`` marks rows known to be bad, with their messages."""
    check_context(context)
    if isinstance(prompts, str):
        raise InvalidParameterError(
            "prompts must be a list of strings; for one prompt use generate()."
        )
    params = resolve_sampling(sampling, sampling_kwargs)
    shown = (
        params.as_dict()
        if isinstance(params, SamplingParams)
        else {"sampling": [p.as_dict() for p in params]}
    )
    return BatchRequest(
        context,
        list(prompts),
        sampling=params,
        clean=clean,
        cache=cache,
        errors=dict(errors or {}),
        log_params={**shown, "clean": clean, "n_seq_max": context.n_seq_max},
    )


def generate_parallel(
    context: GenerationContext,
    prompts: Sequence[str],
    *,
    sampling: SamplingArg = None,
    clean: bool = defaults.GENERATE_CLEAN,
    progress: bool | Callable[[Progress], Any] | None = None,
    on_error: str = "return",
    on_result: Callable[[Result], Any] | None = None,
    cancel: threading.Event | None = None,
    cache: bool | None = None,
    background: bool = False,
    cluster: Any = None,
    sink: Any = None,
    **sampling_kwargs: Any,
) -> Results | Job:
    """Generate for every prompt, ``context.n_seq_max`` at a time with continuous batching.

    Sampling as in :func:`generate`; ``sampling`` may also be a list with one
    :class:`SamplingParams` (or dict) per prompt. Results come back in input order. A row
    that fails (empty, longer than the context) is a :class:`Result` whose text starts with
    ``"Error: "`` and whose ``error`` holds the message; the batch goes on
    (``on_error="raise"`` raises :class:`PromptError` instead). Each row gets its own seed
    derived from ``seed`` and its position, so its output does not depend on the other rows.
    ``progress``: ``True`` a progress bar, ``None`` one in interactive sessions, ``False``
    none, or a callable receiving :class:`Progress` events. ``on_result`` is called with each
    row's result as soon as it finishes. A KeyboardInterrupt (or setting ``cancel``) raises
    :class:`BatchInterrupted` whose ``results`` hold the finished rows.

    ``cache``: finished rows are stored on disk as they finish and reused by later calls with
    the same model file, parameters, ``n_seq_max`` and prompt, so a re-run computes only
    missing rows (``None`` follows ``$LOCALLLM_RESULT_CACHE``, on by default; ``False`` turns
    it off). The returned :class:`Results` list carries ``hashes`` of inputs and outputs.

    ``background=True`` returns a :class:`Job` at once and runs in a thread (the kernel
    stays free): ``job.result()`` gives the :class:`Results`, ``job.partial()`` the rows
    finished so far, ``job.cancel()`` stops it; in a notebook its progress panel has a Cancel
    button. Jobs on the same context run one after the other.

    ``cluster`` (a ``distributed.Client`` or a scheduler address) runs the rows in
    partitions on the Dask cluster's workers, each loading the model file once (it must be
    at the same path there); seeds, order, errors, progress and interrupts work as here.

    ``sink`` (a CSV path or :func:`~jupyter_localllm.annotation_sink_csv`) appends each row
    to the file as it finishes (``row``, ``model``, ``text``, ``finish_reason``,
    ``n_tokens``, ``error``, ``prompt_hash``); a re-run appends only the rows it lacks.
    """
    if on_error not in ("return", "raise"):
        raise InvalidParameterError(f'on_error must be "return" or "raise", got {on_error!r}.')
    request = generation_request(
        context, prompts, sampling=sampling, clean=clean, cache=cache, **sampling_kwargs
    )
    plan = rows_to_sink(single(request, desc="generate"), sink, RESULT_FIELDS)
    if on_result is not None:
        plan = plan.also_on_result(lambda _row, res: on_result(res))
    if on_error == "raise":
        plan = plan.then(_raise_first_error)
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)


def _raise_first_error(results: Results) -> Results:
    bad = next((r for r in results if r.error is not None), None)
    if bad is not None:
        raise PromptError(f"Row {bad.row} failed: {bad.error}.")
    return results


# -- checks --------------------------------------------------------------------------------
def check_model(model: Any) -> None:
    """Raise :class:`InvalidParameterError` unless ``model`` is an open model."""
    if not isinstance(model, BackendModel):
        raise InvalidParameterError(
            f"Expected a model from model_load(), got {type(model).__name__}."
        )
    model.require_open()


def check_context(context: Any) -> None:
    """Raise :class:`InvalidParameterError` unless ``context`` came from context_create()."""
    if not isinstance(context, GenerationContext):
        raise InvalidParameterError(
            f"Expected a context from context_create(), got {type(context).__name__}."
        )


def quick_llama(
    prompt: str | Sequence[str],
    *,
    model: str = defaults.DEFAULT_MODEL,
    system_prompt: str | None = "You are a helpful assistant.",
    auto_format: bool = True,
    n_ctx: int | None = None,
    n_seq_max: int = defaults.N_SEQ_MAX,
    n_gpu_layers: int | str = "auto",
    clean: bool = defaults.CLEAN,
    progress: bool | Callable[[Progress], Any] | None = None,
    stream: Callable[[str], Any] | None = None,
    **sampling: Any,
) -> Result | list[Result]:
    """One call from text to answer: loads ``model`` once (kept in the session's model
    manager with its context, so later calls start at once), wraps each prompt in the model's
    chat template with ``system_prompt`` (``auto_format=False`` sends it as is), and generates.

    A string gives one :class:`Result`; a list runs through :func:`generate_parallel`,
    ``n_seq_max`` at a time, and gives a list in the same order. Other keywords are sampling
    options of :func:`generate`; the defaults (``max_tokens``, ``n_seq_max``, ``clean``) are
    the table's (:mod:`~jupyter_localllm.defaults`).
    """
    if n_ctx is not None:
        check_int("n_ctx", n_ctx, 16, UINT32_MAX)
    check_int("n_seq_max", n_seq_max, 1, MAX_SEQUENCES)
    manager = get_manager()
    loaded = manager.load(model, n_gpu_layers=n_gpu_layers)
    single_prompt = isinstance(prompt, str)
    prompts = [prompt] if single_prompt else list(prompt)
    if auto_format:
        prompts = chat_prompts(loaded, prompts, system_prompt)
    alias = str(model)
    if single_prompt:
        ctx = manager.context(alias, n_seq_max=1, n_ctx=n_ctx)
        return generate(ctx, prompts[0], clean=clean, stream=stream, **sampling)
    if stream is not None:
        raise InvalidParameterError("stream= works with one prompt; pass a string.")
    ctx = manager.context(alias, n_seq_max=n_seq_max, n_ctx=n_ctx)
    return generate_parallel(ctx, prompts, clean=clean, progress=progress, **sampling)
