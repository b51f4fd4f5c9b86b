"""The defaults table (``jupyter_localllm/defaults.py``): ``%config LocalLLM``, ``df.llm``,
``ddf.llm``-style runs and ``jupyter-localllm run`` read their defaults from it, and the
command's help shows the table's values (none is written out again by hand)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import traitlets
from click.testing import CliRunner

from jupyter_localllm import SamplingParams, defaults, explore, quick_llama
from jupyter_localllm.cli import cli
from jupyter_localllm.cli.run import run
from jupyter_localllm.cli.spec import RunSpec
from jupyter_localllm.errors import InvalidParameterError
from jupyter_localllm.notebook.accessor import LLMFrameAccessor
from jupyter_localllm.notebook.config import LocalLLM
from jupyter_localllm.session.manager import get_manager, resolve_context
from jupyter_localllm.tasks.exploration import ExploreSpec
from jupyter_localllm.tasks.extraction import ExtractSpec
from jupyter_localllm.tasks.frames import generate_rows
from jupyter_localllm.tasks.generation import generate, generate_parallel, generation_request


def test_the_notebook_settings_start_from_the_table():
    settings = LocalLLM()
    assert settings.default_model == defaults.DEFAULT_MODEL
    for name in ("max_tokens", "n_seq_max", "seed", "temperature"):
        assert getattr(settings, name) == defaults.TABLE[name], name
    assert settings.sampling() == {
        "max_tokens": defaults.MAX_TOKENS,
        "temperature": defaults.TEMPERATURE,
        "seed": defaults.SEED,
    }


@pytest.mark.parametrize(("name", "value"), [("n_seq_max", 0), ("max_tokens", 0)])
def test_a_bad_setting_is_refused_not_replaced(name, value):
    settings = LocalLLM()
    with pytest.raises(traitlets.TraitError):
        setattr(settings, name, value)
    assert getattr(settings, name) == defaults.TABLE[name]


def test_the_command_runs_on_the_table_and_its_help_shows_it():
    options = {p.name: p for p in run.params}
    assert options["model"].default == defaults.DEFAULT_MODEL
    for name in ("max_tokens", "n_seq_max", "seed"):
        assert options[name].default == defaults.TABLE[name], name
        assert options[name].show_default, name
    spec = RunSpec(Path("in.csv"), Path("out.csv"), "{text}")
    assert (spec.model, spec.n_seq_max) == (defaults.DEFAULT_MODEL, defaults.N_SEQ_MAX)
    assert spec.sampling == SamplingParams()  # every field the table's
    shown = " ".join(CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).output.split())
    assert f"Most tokens per answer. [default: {defaults.MAX_TOKENS}" in shown
    assert f"Rows run in parallel. [default: {defaults.N_SEQ_MAX}" in shown
    assert f"[default: {defaults.SEED};" in shown
    demo = {p.name: p.default for p in cli.commands["demo"].params}
    assert demo["max_tokens"] == defaults.MAX_TOKENS


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_every_entry_point_cleans_answers_by_the_table():
    # the front-ends and one-call tasks clean; generate and generate_parallel keep
    # localLLM's raw text (clean=FALSE there)
    for function in (LLMFrameAccessor.generate, generate_rows, quick_llama, explore):
        assert _default(function, "clean") is defaults.CLEAN, function.__qualname__
    for function in (generate, generate_parallel, generation_request):
        assert _default(function, "clean") is defaults.GENERATE_CLEAN, function.__qualname__
    assert (defaults.CLEAN, defaults.GENERATE_CLEAN) == (True, False)


def test_every_entry_point_reads_max_tokens_and_n_seq_max_from_the_table():
    assert defaults.MAX_TOKENS == 100  # localLLM's documented default
    params = SamplingParams()
    assert (params.max_tokens, params.seed, params.temperature) == (
        defaults.MAX_TOKENS,
        defaults.SEED,
        defaults.TEMPERATURE,
    )
    assert ExtractSpec({"type": "object"}).sampling == params
    assert ExploreSpec().max_tokens == _default(explore, "max_tokens") == defaults.MAX_TOKENS
    for function in (quick_llama, explore):
        assert _default(function, "n_seq_max") == defaults.N_SEQ_MAX, function.__qualname__
    assert _default(quick_llama, "model") == defaults.DEFAULT_MODEL


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_a_bad_count_is_refused_by_explore_not_replaced(value):
    for name in ("n_seq_max", "batch_size", "max_tokens"):
        with pytest.raises(InvalidParameterError, match=f"^{name} must be a positive integer"):
            explore("default", ["a text"], **{name: value})


def test_a_zero_n_seq_max_is_refused_by_the_session_not_replaced(model):
    manager = get_manager()
    alias = manager.adopt(model)
    try:
        with pytest.raises(InvalidParameterError, match="n_seq_max must be an integer in"):
            manager.context(alias, n_seq_max=0)
        with pytest.raises(InvalidParameterError, match="n_seq_max must be an integer in"):
            resolve_context(alias, n_seq_max=0, default_n_seq_max=4)
        assert manager.context(alias, n_seq_max=None).n_seq_max == 1
    finally:
        manager.unload(alias)


def test_the_table_lists_every_default():
    public = {k: v for k, v in vars(defaults).items() if k.isupper() and k != "TABLE"}
    assert sorted(map(repr, public.values())) == sorted(map(repr, defaults.TABLE.values()))


@pytest.mark.parametrize("value", [0, -2])
def test_a_bad_n_seq_max_is_refused_by_the_accessor_before_a_model_loads(value):
    import pandas as pd

    manager = get_manager()
    manager.unload_all()
    with pytest.raises(InvalidParameterError, match=r"^n_seq_max must be a positive integer"):
        pd.DataFrame({"text": ["a", "b"]}).llm.generate("{text}", n_seq_max=value)
    assert manager.aliases == []
