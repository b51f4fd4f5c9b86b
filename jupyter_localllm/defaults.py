"""The defaults table: the values every entry point uses when the user gives none.

``SamplingParams``, ``generate``/``generate_parallel``, ``quick_llama``, ``classify``,
``extract``, ``explore``, ``%config LocalLLM`` (its traitlets' defaults), ``%%llm``,
``%llm_batch``, ``df.llm``, ``ddf.llm`` and ``jupyter-localllm run`` (its options' defaults and
help) read them here, so one row gets the same answer from each. A value out of range is
refused where it is given, never replaced by the default. A bottom-floor
module: it imports nothing of the package, and any floor may read it.
"""

from __future__ import annotations

__all__ = [
    "CASCADE_RANKING",
    "CLEAN",
    "DEFAULT_MODEL",
    "DELTA",
    "DETERMINISTIC",
    "GENERATE_CLEAN",
    "LABEL_BUDGET",
    "MAX_TOKENS",
    "N_SEQ_MAX",
    "SEED",
    "TABLE",
    "TEMPERATURE",
]

DEFAULT_MODEL = "default"
"""The model loaded when none is named: the packaged SmolLM2-135M-Instruct."""

MAX_TOKENS = 100
"""Most tokens generated per answer (localLLM's default), for every entry point and task."""

N_SEQ_MAX = 8
"""Rows generated in parallel (sequence slots of one context) by batch runs that make their
own context (``quick_llama``, ``explore``, ``df.llm``, ``%llm_batch``, the command).
``context_create`` keeps localLLM's 1: there the user sizes the context."""

SEED = 1234
"""Random seed of sampling; each row derives its own from it and its place in the input."""

TEMPERATURE = 0.0
"""Sampling temperature; 0 is greedy decoding (the most likely token)."""

CLEAN = True
"""Front-ends and one-call tasks (``quick_llama``, ``explore``, ``%%llm``, ``%llm_batch``,
``df.llm``, ``ddf.llm``, ``jupyter-localllm run``) return answers with chat-template markers
and surrounding whitespace removed."""

GENERATE_CLEAN = False
"""``generate`` and ``generate_parallel`` return the raw text, as localLLM's functions of the
same names do (``clean=TRUE`` there and ``clean=True`` here cleans it)."""

DETERMINISTIC = False
"""Batch-invariant decoding (``deterministic=True``): a row's text depends only on its prompt,
the model file, the sampling settings and its seed, not on ``n_seq_max``, its neighbours,
loop versus batch, the prefix cache or Dask partitions. Off by default: it costs speed (README,
"Reproducibility")."""

DELTA = 0.05
"""Cascades (``proxy=``): the quality target holds with probability at least ``1 - DELTA``."""

LABEL_BUDGET = 200
"""Cascades (``proxy=``): rows of the random sample the oracle labels to learn the threshold."""

CASCADE_RANKING = "label"
"""Cascades with ``target_accuracy``: the threshold is on the proxy's chance of agreeing with the
oracle given its label and confidence, fitted on part of the sample (``"confidence"``: on its
top probability)."""

TABLE: dict[str, object] = {
    "model": DEFAULT_MODEL,
    "max_tokens": MAX_TOKENS,
    "n_seq_max": N_SEQ_MAX,
    "seed": SEED,
    "temperature": TEMPERATURE,
    "clean": CLEAN,
    "clean (generate, generate_parallel)": GENERATE_CLEAN,
    "deterministic": DETERMINISTIC,
    "delta": DELTA,
    "label_budget": LABEL_BUDGET,
    "ranking": CASCADE_RANKING,
}
"""Every default by its keyword name (for help texts and the README's table)."""
