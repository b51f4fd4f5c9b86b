"""Chat templates: render a conversation with the model's own Jinja template (stored in the
GGUF as ``tokenizer.chat_template``), the way Hugging Face transformers renders it."""

from __future__ import annotations

import ctypes
import datetime
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from ..errors import InvalidParameterError, PromptError

__all__ = ["CHATML_TEMPLATE", "RENDER_TIME_S", "normalize_messages", "render_chat"]

# Used when a GGUF carries no template (base models): the widespread ChatML layout.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_ROLES = ("system", "user", "assistant", "tool", "developer")


def normalize_messages(messages: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a list of ``{"role", "content"}`` dicts; a plain string is one user turn.

    Raises :class:`InvalidParameterError` naming the first malformed message.
    """
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise InvalidParameterError(
            'messages must be a non-empty list of {"role": ..., "content": ...} dicts or a string.'
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidParameterError(
                f'Message {i} must be a dict with "role" and "content" keys, got {m!r}.'
            )
        if m["role"] not in _ROLES:
            raise InvalidParameterError(
                f"Message {i} has role {m['role']!r}; use one of {', '.join(_ROLES)}."
            )
        if not isinstance(m["content"], str):
            raise InvalidParameterError(
                f"Message {i} content must be a string, got {type(m['content']).__name__}."
            )
        out.append(dict(m))
    return out


# A chat template renders in milliseconds. One that runs for seconds or builds millions of
# characters is a bomb (nested range() loops, 'x' * 10**9): it gets a budget, not the kernel.
RENDER_TIME_S = 5.0
MIN_SIZE_BUDGET = 1 << 22  # characters (or items) any value or the output may reach, at least
_INT_BITS = 65_536  # the biggest integer '*' or '**' may make
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice", "tojson"})
_FORMAT_FIELD = re.compile(r"%[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?|\{[^{}]*\}")
_budget = threading.local()  # the render running in this thread: its limit


class TemplateBudgetExceeded(Exception):
    """Raised inside a render that went over its size or time budget (turned into a
    :class:`PromptError` by :func:`render_chat`)."""


def _limit() -> int:
    return getattr(_budget, "size", MIN_SIZE_BUDGET)


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict, set)) and len(value) > _limit():
        raise TemplateBudgetExceeded(f"{what} of {len(value):,} characters or items")
    return value


def _check_ints(args: Any, what: str) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > _limit():
            raise TemplateBudgetExceeded(f"{what} with the number {arg:,}")


def _check_format(fmt: Any, args: Any, what: str) -> None:
    """Refuse %- and {}-format widths past the budget (they allocate before any check)."""
    if not isinstance(fmt, str):
        return
    for field in _FORMAT_FIELD.finditer(fmt):
        _check_ints((int(n) for n in re.findall(r"\d+", field.group())), what)
        if "*" in field.group():
            _check_ints(args if isinstance(args, tuple) else (args,), what)


def _estimate(name: str, obj: Any, args: tuple) -> int:
    """The size ``obj.name(*args)`` or the filter ``name`` could reach, for the calls whose
    result can dwarf their inputs (0 when not one of them)."""
    if name == "join" and args and hasattr(args[0], "__len__"):
        sep = obj if isinstance(obj, str) else (args[1] if len(args) > 1 else "")
        items = args[0]
        known = sum(len(str(i)) for i in items) if isinstance(items, (list, tuple)) else 0
        return len(str(sep)) * len(items) + known
    if name == "replace" and len(args) >= 2 and isinstance(obj, str):
        old, new = str(args[0]), str(args[1])
        return len(obj) + (len(obj) // max(len(old), 1) + 1) * len(new)
    return 0


class _Namespace(Namespace):
    """``namespace()``, whose attributes are held to the size budget (the one way a template
    carries a value from one loop pass to the next)."""

    def __setitem__(self, name: str, value: Any) -> None:
        Namespace.__setitem__(self, name, _check_size(value, "a namespace value"))


class _BudgetSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every value that can grow held to the size budget."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``*``, ``**``, ``%`` and ``+``, refused before they would pass the budget."""
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                sized = isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple))
                if sized and len(seq) * max(n, 0) > _limit():
                    raise TemplateBudgetExceeded(
                        f"a repetition of {len(seq) * n:,} characters or items"
                    )
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and left.bit_length() + right.bit_length() > _INT_BITS:
                raise TemplateBudgetExceeded("a product of more than 65,536 bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * left.bit_length() > _INT_BITS:
                raise TemplateBudgetExceeded("a power of more than 65,536 bits")
        elif operator == "%":
            _check_format(left, right, "a %-format")
        return _check_size(super().call_binop(context, operator, left, right), "a value")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call from the template: numbers past the budget (widths, counts) are refused,
        and so is a result past it."""
        _check_ints((*args, *kwargs.values()), "a call")
        target = getattr(__obj, "__wrapped__", __obj)  # str.format as the sandbox wraps it
        name, owner = getattr(target, "__name__", ""), getattr(target, "__self__", None)
        if name in ("format", "format_map") and isinstance(owner, str):
            _check_format(owner, args, "a format")
        for value in (*args, *kwargs.values()):
            _check_size(value, "an argument")
        if _estimate(name, owner, args) > _limit():
            raise TemplateBudgetExceeded(f"a {name}() of about {_estimate(name, owner, args):,}")
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a result")


def _budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        # A filter's first argument(s) may be the context or environment; the value comes next.
        skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
        value, params = (args[skip], args[skip + 1 :]) if len(args) > skip else (None, ())
        if name in _WIDTH_FILTERS:
            _check_ints((*params, *kwargs.values()), f"the {name} filter")
        if name == "format":
            _check_format(value, params, "the format filter")
        if _estimate(name, value, (value, *params) if name == "join" else params) > _limit():
            raise TemplateBudgetExceeded(f"the {name} filter's result")
        return _check_size(func(*args, **kwargs), f"the {name} filter's result")

    return run


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = _BudgetSandbox(trim_blocks=True, lstrip_blocks=True)
    env.filters = {name: _budgeted_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # lipsum(n=10**6) writes megabytes; no chat template uses it
    env.globals["namespace"] = _Namespace
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def _raise_template_error(message: str) -> None:
    raise InvalidParameterError(f"The chat template refused the messages: {message}")


def render_chat(
    template: str | None,
    messages: str | Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    origin: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` with a Jinja chat ``template`` (ChatML when ``None``).

    ``origin`` (the model file the template came from) is named in errors. Rendering has a
    budget: :data:`RENDER_TIME_S` seconds, and no value or output past
    ``max(MIN_SIZE_BUDGET, 4 x the messages' size)``; a template past it raises
    :class:`PromptError`.
    """
    source = f"The chat template of {origin}" if origin else "The chat template"
    try:
        compiled = _compile(template or CHATML_TEMPLATE)
    except (jinja2.TemplateError, RecursionError, MemoryError) as exc:
        raise InvalidParameterError(
            f"{source} does not compile ({_one_line(exc)}); pass template= with a valid one."
        ) from exc
    normalized = normalize_messages(messages)
    size = sum(len(m["content"]) for m in normalized) + len(bos_token) + len(eos_token)
    limit = max(MIN_SIZE_BUDGET, 4 * size)
    try:
        with _Deadline(RENDER_TIME_S):
            return _render(
                compiled,
                limit,
                messages=normalized,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                **extra,
            )
    except (
        TemplateBudgetExceeded,
        _RenderTimeout,
        MemoryError,
        RecursionError,
        OverflowError,
    ) as e:
        raise PromptError(f"{source} {_bomb(e, limit)}; pass template= with another one.") from e
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        if isinstance(exc, InvalidParameterError):
            raise
        raise InvalidParameterError(
            f"{source} failed on these messages ({_one_line(exc)}); check their roles and order."
        ) from exc


def _render(compiled: jinja2.Template, limit: int, **variables: Any) -> str:
    """The template's output, with every value and the output itself held to ``limit``."""
    _budget.size = limit
    try:
        parts, total = [], 0
        for part in compiled.generate(**variables):
            total += len(part)
            if total > limit:
                raise TemplateBudgetExceeded(f"an output of over {limit:,} characters")
            parts.append(part)
        return "".join(parts)
    finally:
        _budget.size = MIN_SIZE_BUDGET


def _bomb(exc: BaseException, limit: int) -> str:
    if isinstance(exc, _RenderTimeout):
        return f"ran for over {RENDER_TIME_S:g} s without finishing (a loop bomb?)"
    if isinstance(exc, RecursionError):
        return "recursed too deep (a macro or loop calling itself without end)"
    if isinstance(exc, MemoryError):
        return "ran out of memory"
    if isinstance(exc, OverflowError):
        return f"made a value too big to hold ({_one_line(exc)})"
    return f"went over its size budget of {limit:,} ({exc})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


class _RenderTimeout(BaseException):
    """Raised in the rendering thread by :class:`_Deadline` (a BaseException, so that no
    ``except Exception`` in a template's Python helpers swallows it)."""


class _Deadline:
    """Raise :class:`_RenderTimeout` in this thread once ``seconds`` have passed.

    Rendering is Python bytecode that Jinja compiled from the template; an asynchronous
    exception set by the watchdog thread stops it at its next instruction. The C-level
    operations that could run long ('x' * n, huge formats) are refused by the sandbox first.
    One watchdog thread serves every render (a thread per render would cost more than the
    render), waking a few times a second while renders run and ending when idle.
    """

    _cond = threading.Condition()
    _running: ClassVar[dict[int, _Deadline]] = {}
    _watchdog: ClassVar[threading.Thread | None] = None

    def __init__(self, seconds: float) -> None:
        self.thread_id = threading.get_ident()
        self.deadline = time.monotonic() + seconds
        self.fired = False

    def __enter__(self) -> _Deadline:
        cls = type(self)
        with cls._cond:
            cls._running[id(self)] = self
            if cls._watchdog is None:
                cls._watchdog = threading.Thread(target=cls._watch, name="chat-template-watchdog")
                cls._watchdog.daemon = True
                cls._watchdog.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with self._cond:
            self._running.pop(id(self), None)
            if self.fired:
                _set_async_exc(self.thread_id, None)  # not yet delivered: drop it here
        if self.fired and exc_type is None:
            raise _RenderTimeout

    @classmethod
    def _watch(cls) -> None:
        idle_since = time.monotonic()
        with cls._cond:
            while True:
                now = time.monotonic()
                for key, entry in list(cls._running.items()):
                    if now >= entry.deadline:
                        entry.fired = True
                        del cls._running[key]
                        _set_async_exc(entry.thread_id, _RenderTimeout)
                if cls._running:
                    idle_since = now
                elif now - idle_since > 10.0:
                    cls._watchdog = None
                    return
                cls._cond.wait(0.1)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
    )
