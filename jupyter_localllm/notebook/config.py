"""Notebook settings: one traitlets ``Configurable`` read by the magics and the accessor.

Set them in a notebook with ``%config LocalLLM.max_tokens = 64`` or for every session in
``ipython_config.py``::

    c.LocalLLM.default_model = "gemma-3-270m"
    c.LocalLLM.n_seq_max = 16
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Int, Unicode, Union
from traitlets.config import Configurable

from .. import defaults

__all__ = ["LocalLLM", "get_settings"]


class LocalLLM(Configurable):
    """Defaults of the ``%llm`` magics and the ``df.llm`` accessor (``%config LocalLLM``)."""

    default_model = Unicode(
        defaults.DEFAULT_MODEL,
        help="Model loaded by '%llm load' without a reference and by the accessor when no "
        "model is loaded: 'default', a path, a cache name, 'ollama:NAME' or 'hf://...'.",
    ).tag(config=True)
    n_ctx = Int(
        None, allow_none=True, min=16, help="Context size in tokens; None sizes it from the work."
    ).tag(config=True)
    n_seq_max = Int(
        defaults.N_SEQ_MAX, min=1, help="Rows generated in parallel by batch runs."
    ).tag(config=True)
    n_gpu_layers = Union(
        [Int(), Unicode()], default_value="auto", help="Layers to offload to a GPU, or 'auto'."
    ).tag(config=True)
    max_tokens = Int(defaults.MAX_TOKENS, min=1, help="Most tokens generated per answer.").tag(
        config=True
    )
    temperature = Float(
        defaults.TEMPERATURE, min=0.0, help="Sampling temperature; 0 is greedy."
    ).tag(config=True)
    seed = Int(
        defaults.SEED,
        min=0,
        max=2**32 - 1,
        help="Random seed of sampling (each row derives its own).",
    ).tag(config=True)
    deterministic = Bool(
        defaults.DETERMINISTIC,
        help="Batch-invariant decoding: a row's text depends only on its prompt, the model, the "
        "sampling settings and its seed, not on n_seq_max, its neighbours or Dask partitions "
        "(slower; README, 'Reproducibility'). Models load without repacked weights.",
    ).tag(config=True)
    progress = Bool(True, help="Show progress for batch runs.").tag(config=True)
    cache = Bool(True, help="Reuse finished rows from the on-disk result cache.").tag(config=True)
    chat = Bool(
        False,
        help="Every %%llm cell continues the conversation with its model (as %%llm --chat; "
        "--no-chat sends one cell alone). '%llm reset' forgets the conversations.",
    ).tag(config=True)
    max_history = Int(
        2,
        min=0,
        help="Past exchanges (a message and its answer) a %%llm --chat cell sends before its "
        "message, as jupyter-ai's max_history; older ones are forgotten.",
    ).tag(config=True)

    def sampling(self, **overrides: Any) -> dict[str, Any]:
        """Sampling keywords from these settings, with ``overrides`` (``None`` values ignored)."""
        kwargs = {"max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return kwargs

    def load_options(self) -> dict[str, Any]:
        """Model-load keywords from these settings (deterministic runs need weights that
        llama.cpp did not repack)."""
        options: dict[str, Any] = {"n_gpu_layers": self.n_gpu_layers}
        if self.deterministic:
            options["use_extra_bufts"] = False
        return options

    def context_options(self) -> dict[str, Any]:
        """The keywords a front-end's context or cluster model spec takes from these
        settings: default model, default ``n_seq_max``, ``n_ctx``, ``deterministic`` and the
        load options."""
        return {
            "default_model": self.default_model,
            "default_n_seq_max": self.n_seq_max,
            "n_ctx": self.n_ctx,
            "deterministic": self.deterministic,
            "load_options": self.load_options(),
        }


_settings: LocalLLM | None = None


def get_settings() -> LocalLLM:
    """The settings of this session (made on first use; ``%load_ext`` attaches them to IPython
    so ``%config`` and ``ipython_config.py`` reach them)."""
    global _settings
    if _settings is None:
        _settings = LocalLLM()
    return _settings


def attach(shell: Any) -> LocalLLM:
    """Make the session's settings a configurable of ``shell`` (idempotent); the shell's
    config (``c.LocalLLM...`` in ipython_config) is applied."""
    global _settings
    settings = get_settings()
    if settings.parent is not shell:
        fresh = LocalLLM(parent=shell)
        # Keep values the user already set in this process.
        for name in settings.trait_names(config=True):
            value = getattr(settings, name)
            if value != settings.trait_defaults(name) and name not in shell.config.LocalLLM:
                setattr(fresh, name, value)
        _settings = settings = fresh
    if settings not in shell.configurables:
        shell.configurables.append(settings)
    return settings
