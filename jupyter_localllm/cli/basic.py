"""The small commands: ``demo`` (a console demo), ``hardware`` and ``models``."""

from __future__ import annotations

import time

from .. import defaults

__all__ = ["demo", "hardware", "models"]

DEMO_QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the ocean.",
    "What is 12 plus 7?",
    "Give a synonym for 'happy'.",
)


def demo(model_ref: str = defaults.DEFAULT_MODEL, max_tokens: int = defaults.MAX_TOKENS) -> int:
    """Load a model, answer a few questions through its chat template (streaming each answer
    and its speed), then label the demo news sample in parallel by label scoring."""
    from .. import datasets
    from ..tasks import generation as api
    from ..tasks.classification import classify

    t0 = time.perf_counter()
    model = api.model_load(model_ref)
    print(
        f"Loaded {model.name} ({model.size_bytes / 2**20:.0f} MiB) in "
        f"{time.perf_counter() - t0:.1f} s from {model.path}"
    )
    ctx = api.context_create(model)
    for question in DEMO_QUESTIONS:
        prompt = api.apply_chat_template(
            model,
            [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": question},
            ],
        )
        print(f"\nQ: {question}\nA: ", end="", flush=True)
        t0 = time.perf_counter()
        answer = api.generate(
            ctx, prompt, max_tokens=max_tokens, stream=lambda s: print(s, end="", flush=True)
        )
        dt = time.perf_counter() - t0
        print(
            f"\n   [{answer.n_tokens} tokens, {answer.n_tokens / dt:.0f} tok/s, "
            f"finish: {answer.finish_reason}]"
        )

    news = datasets.news_sample()
    labels = list(datasets.NEWS_CLASSES)
    pctx = api.context_create(model, n_seq_max=defaults.N_SEQ_MAX)
    t0 = time.perf_counter()
    out = classify(pctx, news.title.tolist(), labels, calibrate=True, progress=False)
    dt = time.perf_counter() - t0
    accuracy = (out.label == news["class"].astype(str)).mean()
    print(
        f"\nClassified {len(news)} news titles into {', '.join(labels)} by label scoring "
        f"(n_seq_max={pctx.n_seq_max}): {dt:.1f} s, {len(news) / dt:.1f} rows/s, "
        f"accuracy {accuracy:.0%}"
    )
    for title, row in list(zip(news.title, out.itertuples(), strict=True))[:5]:
        print(f"  {title[:60]:60s} -> {row.label}")
    return 0


def hardware() -> int:
    """Print this machine's hardware profile."""
    from ..hardware import hardware_profile

    print(hardware_profile())
    return 0


def models() -> int:
    """Print the cached and Ollama models."""
    from ..models import list_cached_models, list_ollama_models

    print("Cached models:\n", list_cached_models().to_string(index=False))
    print("\nOllama models:\n", list_ollama_models().to_string(index=False))
    return 0
