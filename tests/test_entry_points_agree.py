"""One defaults table, four entry points, the same text (issue 26, acceptance 2).

The same six rows go through ``df.llm.generate``, ``%llm_batch`` (a real IPython shell),
``jupyter-localllm run`` (the command in a subprocess, on a CSV file) and
``generate_parallel`` on chat-templated prompts with ``clean=True``, each on its defaults:
every row's text is the same in all four. One row asks for more than the default
``max_tokens`` so a front-end with another length limit would differ there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

import jupyter_localllm as ll
from jupyter_localllm import defaults
from jupyter_localllm.notebook.config import get_settings
from jupyter_localllm.session.manager import get_manager

ROWS = [
    "What is the capital of France?",
    "Write a long story about a dragon who learns to bake bread, with many details.",
    "Name three primary colours.",
    "Translate 'good morning' into Spanish.",
    "What is 12 plus 7?",
    "Give a synonym for 'happy'.",
]


@pytest.fixture(scope="module")
def shell():
    """An IPython shell with the extension loaded, the settings at their defaults and no
    model loaded (each entry point loads what its defaults name)."""
    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "jupyter_localllm")
    settings = get_settings()
    for name in settings.trait_names(config=True):  # an earlier test may have set one
        setattr(settings, name, settings.trait_defaults(name))
    get_manager().unload_all()
    yield ip
    get_manager().unload_all()
    ip.run_line_magic("unload_ext", "jupyter_localllm")


def through_accessor(shell) -> list[str]:
    frame = pd.DataFrame({"text": ROWS})
    return [str(answer) for answer in frame.llm.generate("{text}", progress=False)]


def through_magic(shell) -> list[str]:
    shell.user_ns["rows"] = pd.DataFrame({"text": ROWS})
    for line in ("%llm load default", "%llm_batch rows.text --out answer"):
        result = shell.run_cell(line)
        assert result.success, result.error_in_exec or result.error_before_exec
    return [str(answer) for answer in shell.user_ns["rows"]["answer"]]


def through_command(tmp_path: Path) -> list[str]:
    pd.DataFrame({"text": ROWS}).to_csv(tmp_path / "in.csv", index=False)
    env = {**os.environ, "LOCALLLM_RESULT_CACHE": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_localllm", "run", "in.csv", "--out", "out.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert out["llm_output_error"].eq("").all(), out["llm_output_error"].tolist()
    return out["llm_output"].tolist()


def through_generate_parallel(model) -> tuple[list[str], list[ll.Result]]:
    prompts = [ll.apply_chat_template(model, [{"role": "user", "content": t}]) for t in ROWS]
    ctx = ll.context_create(model, n_seq_max=defaults.N_SEQ_MAX)
    try:
        results = ll.generate_parallel(ctx, prompts, clean=True, progress=False)
    finally:
        ctx.close()
    return [str(r) for r in results], list(results)


def test_the_same_rows_give_the_same_text_from_every_entry_point(shell, model, tmp_path):
    expected, results = through_generate_parallel(model)
    # the long story stops at the table's max_tokens: a front-end with another limit differs
    assert results[1].finish_reason == "length"
    assert results[1].n_tokens == defaults.MAX_TOKENS == 100
    assert all(r.error is None and r.strip() for r in results)
    answers = {
        "df.llm.generate": through_accessor(shell),
        "%llm_batch": through_magic(shell),
        "jupyter-localllm run": through_command(tmp_path),
    }
    for entry_point, texts in answers.items():
        differ = [i for i, (a, b) in enumerate(zip(texts, expected, strict=True)) if a != b]
        assert not differ, (entry_point, [(texts[i], expected[i]) for i in differ])
