"""The defaults table (``jupyter_localllm/defaults.py``): ``%config LocalLLM``, ``df.llm``,
``ddf.llm``-style runs and ``jupyter-localllm run`` read their defaults from it, and the
command's help shows the table's values (none is written out again by hand)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import traitlets
from click.testing import CliRunner

from jupyter_localllm import SamplingParams, defaults
from jupyter_localllm.cli import cli
from jupyter_localllm.cli.run import run
from jupyter_localllm.cli.spec import RunSpec
from jupyter_localllm.notebook.accessor import LLMFrameAccessor
from jupyter_localllm.notebook.config import LocalLLM
from jupyter_localllm.tasks.frames import generate_rows


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
    assert spec.sampling == {
        "max_tokens": defaults.MAX_TOKENS,
        "seed": defaults.SEED,
        "temperature": defaults.TEMPERATURE,
    }
    shown = " ".join(CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).output.split())
    assert f"Most tokens per answer. [default: {defaults.MAX_TOKENS}" in shown
    assert f"Rows run in parallel. [default: {defaults.N_SEQ_MAX}" in shown
    assert f"[default: {defaults.SEED};" in shown
    demo = {p.name: p.default for p in cli.commands["demo"].params}
    assert demo["max_tokens"] == defaults.MAX_TOKENS


def test_every_entry_point_cleans_answers_by_the_table():
    for function in (LLMFrameAccessor.generate, generate_rows):
        assert inspect.signature(function).parameters["clean"].default is defaults.CLEAN


def test_the_sampling_defaults_agree_on_seed_and_temperature():
    params = SamplingParams()
    assert (params.seed, params.temperature) == (defaults.SEED, defaults.TEMPERATURE)


def test_the_table_lists_every_default():
    public = {k: v for k, v in vars(defaults).items() if k.isupper() and k != "TABLE"}
    assert sorted(map(repr, public.values())) == sorted(map(repr, defaults.TABLE.values()))
