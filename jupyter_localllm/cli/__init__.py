"""The command line: ``jupyter-localllm run | demo | hardware | models | log`` (also
``python -m jupyter_localllm ...``).

A front-end beside the notebook, over the tasks: ``run`` (in :mod:`.run`) runs the DataFrame
tasks that ``df.llm`` runs (:mod:`~jupyter_localllm.tasks.frames`) over a CSV, Parquet or JSON
Lines file, on the defaults of :mod:`~jupyter_localllm.defaults`. Exit codes: 0 done, 1 a
failure while running, 2 bad input (one line on stderr), 128 + the signal's number when a
signal stopped it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP). Error lines advise the command's own
options, never the Python keywords the library's messages name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from collections.abc import Sequence

import click

from ..errors import (
    AmbiguousModelError,
    GrammarError,
    InsufficientMemoryError,
    InvalidModelFileError,
    InvalidParameterError,
    LocalLLMError,
    ModelLoadError,
    ModelNotFoundError,
    PromptError,
)
from . import basic
from .log import log
from .run import max_tokens_option, model_option, run
from .spec import BadInput, RunFailed

__all__ = ["main"]

# What the user can fix by changing the command (the rest is a failure while running).
_BAD_INPUT_ERRORS = (
    AmbiguousModelError,
    GrammarError,
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotFoundError,
    PromptError,
)

# The library's advice names Python keywords; these are the command's options for them.
_OPTIONS = {"n_seq_max": "--n-seq-max", "max_tokens": "--max-tokens", "seed": "--seed"}
_MEMORY_ADVICE = (
    "run with a smaller --n-seq-max (fewer rows at once) or --max-tokens, or a smaller "
    "model (-m), or close other programs"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=False)
@click.version_option(package_name="jupyter-localllm")
def cli() -> None:
    """Run local GGUF language models over tables, in parallel."""


@cli.command()
@model_option
@max_tokens_option
def demo(model: str, max_tokens: int) -> int:
    """Answer a few questions with the default model, then label a news sample."""
    return basic.demo(model, max_tokens)


@cli.command()
def hardware() -> int:
    """Show this machine's hardware profile."""
    return basic.hardware()


@cli.command()
def models() -> int:
    """List cached and Ollama models."""
    return basic.models()


cli.add_command(run)
cli.add_command(log)


def main(argv: Sequence[str] | None = None, prog_name: str = "jupyter-localllm") -> int:
    """Entry point of ``jupyter-localllm`` and ``python -m jupyter_localllm``: the exit code."""
    from ..session.runlog import front_end

    try:
        with front_end("cli"):  # the run log names the command as the runs' front-end
            code = cli.main(
                args=list(argv) if argv is not None else None,
                prog_name=prog_name,
                standalone_mode=False,
            )
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _fail(exc.format_message() + hint, 2)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except (click.Abort, KeyboardInterrupt) as exc:  # a signal before the batch started
        return _fail("interrupted", getattr(exc, "exit_code", 130))
    except BadInput as exc:
        return _fail(str(exc), 2)
    except LocalLLMError as exc:
        return _fail(cli_advice(exc), 2 if isinstance(exc, _BAD_INPUT_ERRORS) else 1)
    except (RunFailed, OSError) as exc:  # a full disk, a file that went away while running
        return _fail(str(exc), 1)
    return code if isinstance(code, int) else 0


def cli_advice(exc: LocalLLMError) -> str:
    """``exc``'s message with its advice (after the first ``"; "``) in the command's terms:
    keywords the command has as options renamed, advice naming any other keyword replaced
    (by what the command offers against a lack of memory, or dropped)."""
    facts, sep, advice = str(exc).partition("; ")
    if not sep:
        return facts
    for keyword, option in _OPTIONS.items():
        advice = re.sub(rf"\b{keyword}\b", option, advice)
    if not re.search(rf"\b\w+=|\b({'|'.join(_api_keywords())})\b", advice):
        return f"{facts}; {advice}"
    memory = isinstance(exc, InsufficientMemoryError) or (
        isinstance(exc, ModelLoadError) and "context" in facts
    )
    return f"{facts}; {_MEMORY_ADVICE}" if memory else f"{facts.rstrip('.')}."


def _api_keywords() -> list[str]:
    """The keyword parameters of the public API that look like code (``n_ctx``,
    ``check_memory``): advice naming one is advice the command cannot follow."""
    import inspect

    import jupyter_localllm as api

    public = ("model_load", "context_create", "generate_parallel", "classify", "extract")
    names: set[str] = set()
    for name in public:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            names.update(inspect.signature(getattr(api, name)).parameters)
    names.update(field.name for field in dataclasses.fields(api.SamplingParams))
    return sorted(n for n in names if "_" in n.strip("_") and n not in _OPTIONS)


def _fail(message: str, code: int) -> int:
    """Print ``message`` as one line on stderr and return ``code``."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return code
