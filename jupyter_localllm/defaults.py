"""The defaults table: the values every entry point uses when the user gives none.

``%config LocalLLM`` (its traitlets' defaults), ``df.llm``, ``ddf.llm`` and
``jupyter-localllm run`` (its options' defaults and help) read them here, so one row gets the
same answer from each. A bottom-floor module: it imports nothing of the package, and any floor
may read it.
"""

from __future__ import annotations

__all__ = ["CLEAN", "DEFAULT_MODEL", "MAX_TOKENS", "N_SEQ_MAX", "SEED", "TABLE", "TEMPERATURE"]

DEFAULT_MODEL = "default"
"""The model loaded when none is named: the packaged SmolLM2-135M-Instruct."""

MAX_TOKENS = 256
"""Most tokens generated per answer."""

N_SEQ_MAX = 8
"""Rows generated in parallel (sequence slots of one context)."""

SEED = 1234
"""Random seed of sampling; each row derives its own from it and its place in the input."""

TEMPERATURE = 0.0
"""Sampling temperature; 0 is greedy decoding (the most likely token)."""

CLEAN = True
"""Answers have chat-template markers and surrounding whitespace removed."""

TABLE: dict[str, object] = {
    "model": DEFAULT_MODEL,
    "max_tokens": MAX_TOKENS,
    "n_seq_max": N_SEQ_MAX,
    "seed": SEED,
    "temperature": TEMPERATURE,
    "clean": CLEAN,
}
"""Every default by its keyword name (for help texts and the README's table)."""
