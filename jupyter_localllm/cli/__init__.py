"""The command line: ``jupyter-localllm run | demo | hardware | models`` (also
``python -m jupyter_localllm ...``).

A thin front-end over the public API, like the notebook magics: ``run`` (in :mod:`.run`) runs
the ``df.llm`` accessor over a CSV, Parquet or JSON Lines file. Exit codes: 0 done, 1 a
failure while running, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ..errors import (
    AmbiguousModelError,
    GrammarError,
    InvalidModelFileError,
    InvalidParameterError,
    LocalLLMError,
    ModelNotFoundError,
)
from . import basic
from .run import run
from .spec import BadInput

__all__ = ["main"]

# What the user can fix by changing the command (the rest is a failure while running).
_BAD_INPUT_ERRORS = (
    AmbiguousModelError,
    GrammarError,
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotFoundError,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=False)
@click.version_option(package_name="jupyter-localllm")
def cli() -> None:
    """Run local GGUF language models over tables, in parallel."""


@cli.command()
@click.option("-m", "--model", default="default", show_default=True, help="Model reference.")
@click.option("--max-tokens", type=int, default=40, show_default=True)
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


def main(argv: Sequence[str] | None = None, prog_name: str = "jupyter-localllm") -> int:
    """Entry point of ``jupyter-localllm`` and ``python -m jupyter_localllm``: the exit code."""
    try:
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
    except (click.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except BadInput as exc:
        return _fail(str(exc), 2)
    except LocalLLMError as exc:
        return _fail(str(exc), 2 if isinstance(exc, _BAD_INPUT_ERRORS) else 1)
    except OSError as exc:  # a full disk, a file that went away while running
        return _fail(str(exc), 1)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int) -> int:
    """Print ``message`` as one line on stderr and return ``code``."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return code
