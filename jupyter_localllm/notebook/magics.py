"""IPython magics: ``%llm`` (model management), ``%%llm`` (a cell as a prompt) and
``%llm_batch`` (a prompt over a DataFrame column).

Each magic parses its line into typed arguments, runs a handler over the public API and
returns a display object. Mistakes (an unknown subcommand, a bad flag, no model loaded, a
missing variable) are one :class:`~IPython.core.error.UsageError` line, never a traceback.
"""

from __future__ import annotations

import builtins
import keyword
import re
import shlex
import string
import time
import types
from argparse import ArgumentTypeError
from collections.abc import Callable, Mapping
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from .. import defaults
from ..errors import BatchInterrupted, LocalLLMError, column_not_found
from ..tasks.rows import render, template_fields
from .config import get_settings
from .escaping import markdown_code, safe_markdown

__all__ = ["LLMMagics", "LLMResponse"]

_FORMATS = ("markdown", "text", "json", "code")
# IPython's own names in the user namespace (besides those in shell.user_ns_hidden): the
# history (In, Out, _, __, ___, _i, _ii, _iii, _oh, _dh, _ih, _N, _iN) and its helpers.
_IPYTHON_NAMES = frozenset(
    {"In", "Out", "get_ipython", "exit", "quit", "display", "_", "__", "___", "_i", "_ii"}
    | {"_iii", "_oh", "_dh", "_ih"}
)
_HISTORY_NAME = re.compile(r"_i?\d+")
_STREAM_INTERVAL = 0.1  # seconds between display updates while streaming (≤ 10/s)


class LLMResponse:
    """A model's answer as a display object: text/plain plus text/markdown (or JSON), with
    the model, token count and speed in the output's metadata."""

    def __init__(
        self,
        text: str,
        *,
        fmt: str = "markdown",
        model: str = "",
        n_tokens: int = 0,
        seconds: float = 0.0,
        data: Any = None,
        prompt_tokens: int = 0,
        history: int | None = None,
    ):
        self.text, self.fmt, self.model, self.data = text, fmt, model, data
        self.n_tokens, self.seconds = n_tokens, seconds
        self.prompt_tokens = prompt_tokens
        self.history = history
        """Past exchanges sent before the message (``None``: not a chat cell)."""

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second."""
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        bundle: dict[str, Any] = {"text/plain": self.text}
        if self.fmt == "markdown":
            bundle["text/markdown"] = safe_markdown(self.text)  # no raw HTML from a model
        elif self.fmt == "code":
            bundle["text/markdown"] = markdown_code(self.text, "python")
        elif self.fmt == "json" and self.data is not None:
            bundle["application/json"] = self.data
        meta = {
            "jupyter_localllm": {
                "model": self.model,
                "tokens": self.n_tokens,
                "tokens_per_s": round(self.tokens_per_s, 1),
                "prompt_tokens": self.prompt_tokens,
            }
        }
        if self.history is not None:
            meta["jupyter_localllm"]["history"] = self.history
        return bundle, meta

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def _parser(prog: str, description: str) -> MagicArgumentParser:
    # MagicArgumentParser raises UsageError (one line) instead of exiting.
    return MagicArgumentParser(prog=prog, description=description, add_help=False)


def _int_or_auto(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (a non-number reads "invalid int value")."""

    def parse(value: str) -> int:
        number = int(value)
        if number < low:
            raise ArgumentTypeError(f"must be at least {low}, got {number}")
        return number

    parse.__name__ = "int"
    return parse


def _load_parser() -> MagicArgumentParser:
    p = _parser("%llm load", "Load a model (default: %config LocalLLM.default_model).")
    p.add_argument("ref", nargs="?", help="'default', a path, a cache name, ollama:NAME, hf://…")
    p.add_argument("--alias", "-a", help="name to use it by (default: the reference)")
    p.add_argument(
        "--n-ctx", type=_int_at_least(16), help="context size (default: sized from the work)"
    )
    p.add_argument("--n-gpu-layers", type=_int_or_auto, help="layers on the GPU, or auto")
    p.add_argument("--n-seq-max", type=_int_at_least(1), help="rows run in parallel by batch calls")
    return p


def _alias_parser(name: str, what: str) -> MagicArgumentParser:
    p = _parser(f"%llm {name}", what)
    p.add_argument("alias")
    return p


def _cell_parser() -> MagicArgumentParser:
    p = _parser("%%llm", "Send the cell to the model as the user's message.")
    p.add_argument("-m", "--model", help="alias of a loaded model (default: the default one)")
    p.add_argument("-s", "--system", help="system prompt")
    p.add_argument("--max-tokens", type=_int_at_least(1))
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("-f", "--format", choices=_FORMATS, default="markdown")
    p.add_argument("--out", help="store the answer in this variable")
    p.add_argument("--no-interpolate", action="store_true", help="send {braces} as they are")
    p.add_argument("--no-stream", action="store_true", help="show the answer only at the end")
    p.add_argument("--chat", action="store_true", help="continue the conversation with this model")
    p.add_argument("--no-chat", action="store_true", help="send this cell alone")
    return p


def _batch_parser() -> MagicArgumentParser:
    p = _parser("%llm_batch", "Run a prompt over every row of a DataFrame column.")
    p.add_argument("source", help="DF.COLUMN")
    p.add_argument(
        "--template", "-t", help='prompt with {column} placeholders (default "{COLUMN}")'
    )
    p.add_argument("--out", "-o", required=True, help="column to write the results into")
    p.add_argument("-m", "--model", help="alias of a loaded model")
    p.add_argument("-s", "--system", help="system prompt")
    p.add_argument("--labels", help='classify into these comma-separated labels: "A,B,C"')
    p.add_argument("--calibrate", action="store_true", help="with --labels: contextual calibration")
    p.add_argument("--max-tokens", type=_int_at_least(1))
    p.add_argument("--n-seq-max", type=_int_at_least(1))
    p.add_argument("--background", action="store_true", help="run as a job; the kernel stays free")
    p.add_argument("--cluster", help="run on the Dask cluster at this scheduler address")
    return p


_HELP = """\
%llm load [REF] [--alias NAME] [--n-ctx N] [--n-gpu-layers N|auto] [--n-seq-max N]
%llm use ALIAS        make ALIAS the default model
%llm models           loaded models (size, context, memory)
%llm list             models you can load (packaged, cached, Ollama)
%llm unload ALIAS     free a model
%llm status           hardware and loaded models
%llm panel            model, progress and hardware panels
%llm reset [ALIAS]    forget the %%llm --chat conversation (with ALIAS, else all)
%llm help             this text

%%llm [-m ALIAS] [-s SYSTEM] [--max-tokens N] [--temperature T] [--seed S]
      [-f markdown|text|json|code] [--out VAR] [--no-interpolate] [--no-stream]
      [--chat | --no-chat]
    The cell is the user message; {var} inserts a variable, {{ and }} are braces.
    --chat (or %config LocalLLM.chat = True) sends the latest exchanges with this model
    first (%config LocalLLM.max_history, default 2; the oldest go when the context is full).

%llm_batch DF.COLUMN --out NEWCOL [--template "... {COLUMN} ..."] [-m ALIAS]
      [-s SYSTEM] [--labels "A,B,C" [--calibrate]] [--max-tokens N] [--n-seq-max N]
      [--background]     (a job: rows land in NEWCOL as they finish; the kernel stays free)
      [--cluster ADDRESS] (the rows run on the Dask cluster's workers, e.g. tcp://host:8786)

Settings: %config LocalLLM (default_model, n_ctx, n_seq_max, n_gpu_layers, max_tokens,
temperature, seed, progress, cache, chat, max_history)."""


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"Could not read the line ({exc}); check its quotes.") from None


@magics_class
class LLMMagics(Magics):
    """The ``%llm``, ``%%llm`` and ``%llm_batch`` magics (``%load_ext jupyter_localllm``)."""

    # -- %llm / %%llm ---------------------------------------------------------------------
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> Any:
        """``%llm SUBCOMMAND`` manages models (``%llm help`` lists them); ``%%llm [options]``
        sends the cell to a model and shows the answer as it is generated."""
        try:
            if cell is not None:
                return self._cell(line, cell)
            words = _split(line)
            command = words[0] if words else "help"
            handler = self._subcommands().get(command)
            if handler is None:
                raise UsageError(
                    f"Unknown subcommand {command!r}; use one of {', '.join(self._subcommands())}."
                )
            return handler(words[1:])
        except LocalLLMError as exc:
            raise UsageError(str(exc)) from None

    def _subcommands(self) -> dict[str, Callable[[list[str]], Any]]:
        return {
            "load": self._load,
            "use": self._use,
            "models": self._models,
            "list": self._list,
            "unload": self._unload,
            "status": self._status,
            "panel": self._panel,
            "reset": self._reset,
            "help": self._help,
        }

    def _load(self, argv: list[str]) -> None:
        from ..session.manager import get_manager

        args = _load_parser().parse_args(argv)
        settings = get_settings()
        ref = args.ref or settings.default_model
        options = settings.load_options()
        if args.n_gpu_layers is not None:
            options["n_gpu_layers"] = args.n_gpu_layers
        manager = get_manager()
        t0 = time.perf_counter()
        model = manager.load(
            ref, alias=args.alias, n_ctx=args.n_ctx, n_seq_max=args.n_seq_max, **options
        )
        alias = args.alias or ref
        default = " (the default model)" if manager.default_alias == alias else ""
        print(
            f"Loaded {model.name} as {alias!r}{default}: {model.size_bytes / 2**20:.0f} MiB, "
            f"{time.perf_counter() - t0:.1f} s."
        )

    def _use(self, argv: list[str]) -> None:
        self._alias_command(
            argv, "use", "Make a loaded model the default.", "{!r} is now the default model."
        )

    def _alias_command(self, argv: list[str], name: str, what: str, done: str) -> None:
        """``%llm use|unload ALIAS``: the manager's method of that name on the alias."""
        from ..session.manager import get_manager

        args = _alias_parser(name, what).parse_args(argv)
        getattr(get_manager(), name)(args.alias)
        print(done.format(args.alias))

    def _models(self, argv: list[str]) -> Any:
        from ..session.manager import get_manager

        _parser("%llm models", "Loaded models.").parse_args(argv)
        table = get_manager().table()
        if table.empty:
            print("No model is loaded; run %llm load default.")
            return None
        return table.drop(columns="path")

    def _list(self, argv: list[str]) -> Any:
        from .. import models

        _parser("%llm list", "Models you can load.").parse_args(argv)
        return models.discover_models()

    def _unload(self, argv: list[str]) -> None:
        self._alias_command(argv, "unload", "Free a loaded model.", "Unloaded {!r}.")

    def _status(self, argv: list[str]) -> None:
        from IPython.display import display

        from ..hardware import hardware_profile

        _parser("%llm status", "Hardware and loaded models.").parse_args(argv)
        display(hardware_profile())
        table = self._models([])
        if table is not None:
            display(table)

    def _panel(self, argv: list[str]) -> Any:
        _parser("%llm panel", "Model, progress and hardware panels.").parse_args(argv)
        import jupyter_localllm

        if not hasattr(jupyter_localllm, "dashboard"):
            raise UsageError("The panels are not available in this version.")
        return jupyter_localllm.dashboard()

    def _help(self, argv: list[str]) -> None:
        print(_HELP)

    def _reset(self, argv: list[str]) -> None:
        from .conversation import conversations

        p = _parser("%llm reset", "Forget the %%llm --chat conversations.")
        p.add_argument("alias", nargs="?", help="only the conversation with this model")
        args = p.parse_args(argv)
        count = conversations().reset(args.alias)
        whose = f"with {args.alias!r}" if args.alias else "with every model"
        print(f"Forgot the conversation {whose} ({count} exchanges).")

    # -- %%llm ----------------------------------------------------------------------------
    def _cell(self, line: str, cell: str) -> LLMResponse | None:
        from IPython.display import display

        from ..session.manager import get_manager
        from ..tasks.generation import generate
        from .conversation import cell_prompt, chat_mode, conversations

        args = _cell_parser().parse_args(_split(line))
        chat = chat_mode(args)
        if args.out is not None:  # checked before the model runs, so no answer is lost
            _check_variable_name(args.out, self.shell.user_ns, self.shell.user_ns_hidden, "--out")
        text = cell if args.no_interpolate else self._interpolate(cell)
        if not text.strip():
            raise UsageError("The cell is empty; write the message to send below %%llm.")
        manager = get_manager()
        alias = manager.entry(args.model).alias  # "No model is loaded; …" when none
        deterministic = get_settings().deterministic
        ctx = manager.context(args.model, n_seq_max=1, deterministic=deterministic)
        sampling = get_settings().sampling(
            max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
        )
        if args.format == "json":
            return self._cell_json(ctx, text, args, sampling)
        t0 = time.perf_counter()
        prompt, history = cell_prompt(ctx, alias, text, args.system, sampling, chat)
        stream = None if args.no_stream else _StreamDisplay(display, args.format)
        result = generate(ctx, prompt, clean=defaults.CLEAN, stream=stream, **sampling)
        if stream is not None:
            stream.close()
        answer = str(result).strip()
        if chat:
            conversations().add(alias, text, answer, keep=get_settings().max_history)
        if args.format == "code":
            answer = _code_of(answer)
            self.shell.set_next_input(answer, replace=False)
        self._store(args.out, answer)
        return LLMResponse(
            answer,
            fmt=args.format,
            model=ctx.model.name,
            n_tokens=result.n_tokens,
            seconds=time.perf_counter() - t0,
            prompt_tokens=result.n_prompt_tokens,
            history=history,
        )

    def _cell_json(self, ctx: Any, text: str, args: Any, sampling: dict) -> LLMResponse:
        """``%%llm -f json``: the answer as a JSON object, grammar-constrained."""
        import json

        from ..tasks.extraction import extract

        t0 = time.perf_counter()
        (value,) = extract(
            ctx,
            [text],
            {"type": "object"},
            instruction="Answer with a JSON object.",
            system_prompt=args.system,
            progress=False,
            **sampling,
        )
        if not isinstance(value, dict):
            raise UsageError(f"The model gave no valid JSON: {value.error}.")
        self._store(args.out, value)
        return LLMResponse(
            json.dumps(value, indent=2, ensure_ascii=False),
            fmt="json",
            model=ctx.model.name,
            seconds=time.perf_counter() - t0,
            data=value,
        )

    def _store(self, name: str | None, value: Any) -> None:
        if name is not None:  # checked by _cell before the model ran
            self.shell.user_ns[name] = value

    def _interpolate(self, cell: str) -> str:
        """``{name}`` from the user's namespace, once; ``{{``/``}}`` are literal braces."""
        from ..errors import InvalidParameterError

        try:
            fields = template_fields(cell)
        except InvalidParameterError as exc:
            raise UsageError(f"{exc} Or use --no-interpolate.") from None
        ns = self.shell.user_ns
        missing = [f for f in fields if re.split(r"[.\[]", f, maxsplit=1)[0] not in ns]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            raise UsageError(
                f"Not defined in the notebook: {names}; define it, write {{{{ and }}}} for "
                "literal braces, or use --no-interpolate."
            )
        formatter = string.Formatter()

        def lookup(field: str) -> Any:
            try:
                return formatter.get_field(field, (), ns)[0]
            except (AttributeError, KeyError, IndexError, TypeError) as exc:
                raise UsageError(f"Could not evaluate {{{field}}}: {exc!r}.") from None

        return render(cell, lookup)

    # -- %llm_batch -----------------------------------------------------------------------
    @line_magic
    def llm_batch(self, line: str) -> Any:
        """``%llm_batch DF.COLUMN --out NEWCOL [options]``: generate (or classify with
        ``--labels``) for every row, writing into ``DF[NEWCOL]`` as rows finish; with
        ``--background`` the run is a job (returned) and the kernel stays free."""
        try:
            return self._batch(line)
        except BatchInterrupted:
            raise  # Ctrl-C: the finished rows are in the column and in .results
        except LocalLLMError as exc:
            raise UsageError(str(exc)) from None

    def _batch(self, line: str) -> Any:
        from ..session.manager import get_manager

        args = _batch_parser().parse_args(_split(line))
        frame, name, column = self._source(args.source)
        get_manager().entry(args.model)  # a clear line when no model is loaded
        template = args.template or "{" + column + "}"
        options = dict(
            out=args.out,
            system_prompt=args.system,
            model=args.model,
            n_seq_max=args.n_seq_max,
            background=args.background,
            cluster=args.cluster,
        )
        t0 = time.perf_counter()
        if args.labels:
            labels = [x.strip() for x in args.labels.split(",") if x.strip()]
            values = frame.llm.classify(template, labels, calibrate=args.calibrate, **options)
        else:
            values = frame.llm.generate(template, max_tokens=args.max_tokens, **options)
        if args.background:
            return values
        if args.labels:
            errors = int(values.isna().sum())
        else:
            errors = int(sum(getattr(v, "error", None) is not None for v in values))
        print(
            f"Wrote {len(values)} rows to {name}[{args.out!r}] in "
            f"{time.perf_counter() - t0:.1f} s ({errors} errors)."
        )
        return None

    def _source(self, source: str) -> tuple[Any, str, str]:
        """The DataFrame, its name and the column named by ``DF.COLUMN``."""
        import pandas as pd

        import jupyter_localllm.notebook.accessor  # noqa: F401  (registers df.llm)

        name, dot, column = source.partition(".")
        if not dot or not column:
            raise UsageError(f"Name the column as DF.COLUMN, got {source!r}.")
        frame = self.shell.user_ns.get(name)
        if frame is None:
            raise UsageError(f"No DataFrame named {name!r} in the notebook.")
        if not isinstance(frame, pd.DataFrame):
            raise UsageError(f"{name!r} is a {type(frame).__name__}, not a DataFrame.")
        if not any(str(c) == column for c in frame.columns):  # a label 0 is DF.0
            raise UsageError(str(column_not_found(column, frame.columns, name)))
        return frame, name, column


def _check_variable_name(
    name: str, user_ns: Mapping[str, Any], hidden: Mapping[str, Any], option: str
) -> None:
    """Raise a one-line :class:`UsageError` unless a magic may bind ``name`` in the user's
    namespace: it must be an identifier and no keyword, and binding it must not shadow a
    builtin, a dunder, one of IPython's own names (``In``, ``Out``, ``_``, ``_i3``, ...) or a
    module the notebook imported (``pd``): each of those would break later cells."""
    why = None
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{option} needs a variable name, got {name!r}.")
    if name.startswith("__") and name.endswith("__"):
        why = "is a special (dunder) name of Python"
    elif name in _IPYTHON_NAMES or name in hidden or _HISTORY_NAME.fullmatch(name):
        why = "is one of IPython's own names (its history and helpers)"
    elif hasattr(builtins, name):
        why = f"would shadow Python's builtin {name}"
    elif isinstance(user_ns.get(name), types.ModuleType):
        why = f"would replace the module {user_ns[name].__name__} imported in the notebook"
    if why is not None:
        raise UsageError(f"{option} {name} {why}; choose another variable name.")


class _StreamDisplay:
    """Shows the answer while it is generated: one display, updated at most 10 times a
    second, cleared at the end (the final answer is the magic's return value)."""

    def __init__(self, display: Callable[..., Any], fmt: str):
        self.text = ""
        self.fmt = fmt
        self.updates = 0
        self._last = 0.0
        self._handle = display(self._bundle(), raw=True, display_id=True)

    def _bundle(self) -> dict[str, str]:
        if self.fmt == "markdown":
            return {"text/plain": self.text, "text/markdown": safe_markdown(self.text)}
        return {"text/plain": self.text}

    def __call__(self, piece: str) -> None:
        self.text += piece
        now = time.perf_counter()
        if now - self._last >= _STREAM_INTERVAL:
            self._last = now
            self._update()

    def _update(self) -> None:
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)
            self.updates += 1

    def close(self) -> None:
        """Clear the streamed text; the magic's return value shows the answer."""
        self.text = ""
        self._update()


def _code_of(answer: str) -> str:
    """The code inside the first fenced block of ``answer`` (the answer when it has none)."""
    match = re.search(r"```[\w+-]*\n(.*?)(```|$)", answer, re.S)
    return match.group(1).strip() if match else answer
