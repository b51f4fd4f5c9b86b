"""``deterministic=True``: a row's logits and text do not depend on how it was batched.

The logits test drives the engine's own :class:`Scheduler` (deterministic shaping) over a
backend context opened as a deterministic :class:`GenerationContext` opens it, and compares a
row's logits bit for bit alone and among 1, 3, 4, 7 and 16 other rows. The text tests run
the public API: a ``generate()`` loop against ``generate_parallel`` at several ``n_seq_max``,
reversed and in two calls, greedy and sampled with a seed; label scoring's probabilities the
same ways.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import chat

import jupyter_localllm as ll
from jupyter_localllm.engine.scheduler import Request, Scheduler
from jupyter_localllm.errors import InvalidParameterError

TOPICS = [
    "the history of the bicycle", "how bees make honey", "why the sky is blue",
    "the water cycle", "how vaccines work", "the invention of paper", "volcanoes",
    "the life of a star", "how trains changed towns", "the moon's phases", "coral reefs",
    "how a bill becomes law",
]  # fmt: skip


def paragraphs(model, n: int) -> list[str]:
    """``n`` chat prompts asking for a paragraph (two phrasings of 12 topics)."""
    return [
        chat(model, f"Write a paragraph about {TOPICS[i % 12]}." + " Be brief." * (i >= 12))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def det_model():
    """The default model loaded as deterministic mode needs it (weights not repacked)."""
    m = ll.model_load("default", use_extra_bufts=False)
    yield m
    m.close()


def row_logits(model, prompts: list[list[int]], target: int, steps: int) -> list[np.ndarray]:
    """The logits row ``target`` reads at each of its first ``steps`` tokens when ``prompts``
    run together through the deterministic scheduler, greedy, on a context with a KV stream
    per row and flash attention off."""
    n = len(prompts)
    ctx = model.new_context(
        n_ctx=n * 256, n_seq_max=n, n_batch=512, n_threads=None, kv_unified=False
    )
    batch = model.new_batch(512, n)
    sched = Scheduler(
        n_slots=n, n_batch=512, prefix_len=0, kv_capacity=n * 256, slot_capacity=256,
        token_bytes=model.token_bytes, is_eog=model.is_eog, contiguous=True, deterministic=True,
    )  # fmt: skip
    params = ll.SamplingParams(max_tokens=steps)
    for i, p in enumerate(prompts):
        sched.add_request(Request(i, p, params, 0))
    seen: list[np.ndarray] = []
    try:
        while sched.has_unfinished_requests():
            plan = sched.schedule()
            for src, dst in plan.moves:
                ctx.seq_cp(src, dst)
                ctx.seq_rm(src)
            batch.clear()
            out = {}
            for w in plan.work:
                idx = batch.add(w.tokens, w.start_pos, w.slot, want_last_logits=w.wants_logits)
                if w.wants_logits:
                    out[w.slot] = idx
            ctx.decode(batch)
            sampled = {}
            for slot, idx in out.items():
                logits = ctx.logits(idx)
                if sched.slots[slot].request.index == target:
                    seen.append(logits)
                sampled[slot] = int(logits.argmax())
            done, _ = sched.update_from_output(plan, sampled)
            for slot, _res in done:
                ctx.seq_rm(slot)
    finally:
        ctx.close()
    return seen


def test_a_rows_logits_are_bit_identical_alone_and_among_others(det_model):
    texts = paragraphs(det_model, 17)
    tokens = [det_model.tokenize(t) for t in texts]
    target, others = tokens[0], tokens[1:]
    alone = row_logits(det_model, [target], 0, 6)
    assert len(alone) == 6
    for k in (1, 3, 4, 7, 16):
        place = k // 2  # the row sits among its neighbours, not first
        rows = [*others[:place], target, *others[place:k]]
        among = row_logits(det_model, rows, place, 6)
        same = [np.array_equal(a, b) for a, b in zip(alone, among, strict=True)]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(alone, among, strict=True))
        assert all(same), (k, same, diff)


def test_deterministic_steps_hold_one_piece_size(det_model):
    """The deterministic scheduler never mixes prompt pieces with generated tokens (llama.cpp
    would split such a step into a one-token piece of the prompt and the rest); the default
    one does, when a row is admitted while another generates (so the test can fail)."""
    prompts = [[5] * 9, [6] * 10, [7] * 5]
    for deterministic in (False, True):
        sched = Scheduler(
            n_slots=2, n_batch=512, prefix_len=0, kv_capacity=300, slot_capacity=100,
            token_bytes=det_model.token_bytes, is_eog=lambda t: False,
            contiguous=True, deterministic=deterministic,
        )  # fmt: skip
        for i, p in enumerate(prompts):
            sched.add_request(Request(i, p, ll.SamplingParams(max_tokens=2 + 4 * i), 0))
        sizes = []
        while sched.has_unfinished_requests():
            plan = sched.schedule()
            sizes.append(sorted({len(w.tokens) for w in plan.work}))
            sched.update_from_output(plan, {w.slot: 9 for w in plan.work if w.wants_logits})
        mixed = [s for s in sizes if len(s) > 1]
        assert bool(mixed) != deterministic, sizes


def run_ways(model, prompts, **opts) -> dict[str, list[str]]:
    """Texts of ``prompts`` in the ways of issue 29, on deterministic contexts (the loop is
    plain ``generate()`` calls with the same options)."""

    def par(n, ps):
        ctx = ll.context_create(model, n_seq_max=n, deterministic=True)
        out = ll.generate_parallel(ctx, ps, progress=False, cache=False, **opts)
        ctx.close()
        return [str(r) for r in out]

    def loop(ps):
        ctx = ll.context_create(model, n_seq_max=1, deterministic=True)
        out = [str(ll.generate(ctx, p, **opts)) for p in ps]
        ctx.close()
        return out

    half = len(prompts) // 2
    return {
        "n_seq_max=8": par(8, prompts),
        "loop": loop(prompts),
        "n_seq_max=4": par(4, prompts),
        "n_seq_max=16": par(16, prompts),
        "two calls": par(8, prompts[:half]) + par(8, prompts[half:]),
        "reversed": par(8, prompts[::-1])[::-1],
    }


def test_greedy_text_is_the_same_however_the_rows_are_batched(det_model):
    # 16 rows of 40 tokens, not 24 of 80, to keep the suite short: benchmarks/
    # bench_deterministic.py measures the size on both models
    prompts = paragraphs(det_model, 16)
    ways = run_ways(det_model, prompts, max_tokens=40)
    reference = ways.pop("n_seq_max=8")
    assert sum(len(t) for t in reference) > 16 * 80  # real paragraphs, not empty answers
    for name, texts in ways.items():
        differ = [i for i, (a, b) in enumerate(zip(reference, texts, strict=True)) if a != b]
        assert not differ, (name, differ)


def test_sampled_text_depends_only_on_the_rows_seed(det_model):
    """At temperature 0.8 a deterministic row's random stream follows its prompt, not its
    place: reversed rows, two calls and a loop of plain generate() calls sample alike."""
    prompts = paragraphs(det_model, 10)
    opts = dict(max_tokens=24, temperature=0.8, seed=4321)
    compared = ("loop", "n_seq_max=4", "n_seq_max=16", "two calls", "reversed")
    ways = run_ways(det_model, prompts, **opts)
    reference = ways["n_seq_max=8"]
    greedy = ll.generate_parallel(
        ll.context_create(det_model, n_seq_max=8, deterministic=True),
        prompts, max_tokens=24, progress=False, cache=False,
    )  # fmt: skip
    assert sum(a != str(b) for a, b in zip(reference, greedy, strict=True)) > 3  # it samples
    for name in compared:
        differ = [i for i, (a, b) in enumerate(zip(reference, ways[name], strict=True)) if a != b]
        assert not differ, (name, differ)


def test_a_fixed_n_ctx_runs_fewer_rows_at_once_rather_than_cut_them(det_model):
    """A fixed n_ctx split n_seq_max ways (a stream per row) would refuse or cut rows that the
    whole context holds, so their text would depend on n_seq_max: deterministic mode runs as
    many rows at once as hold one, and the text is the auto-sized context's."""
    prompts = paragraphs(det_model, 6)
    need = max(len(det_model.tokenize(p)) for p in prompts) + 40
    fixed = ll.context_create(det_model, n_ctx=512, n_seq_max=8, deterministic=True)
    assert 512 // 8 < need <= 512 // 2  # 64 cells a row would not hold it
    got = ll.generate_parallel(fixed, prompts, max_tokens=40, progress=False, cache=False)
    auto = ll.context_create(det_model, n_seq_max=8, deterministic=True)
    want = ll.generate_parallel(auto, prompts, max_tokens=40, progress=False, cache=False)
    assert [r.error for r in got] == [None] * 6
    assert [str(r) for r in got] == [str(r) for r in want]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
    assert 1 < fixed.last_run.n_slots <= 512 // need
    fixed.close()
    auto.close()


@pytest.mark.parametrize(
    "options",
    [{}, {"examples": [("Stocks fell sharply", "Business"), ("Team wins final", "Sports")]},
     {"scoring": "joint", "calibrate": True}],
    ids=["zero-shot", "few-shot", "joint-calibrated"],
)  # fmt: skip
def test_label_scores_are_bit_identical_however_the_rows_are_batched(det_model, options):
    """Label scoring (a shared prefix decoded once, each row's text, every label's tokens)
    gives a row the same probabilities, bit for bit, alone, in a loop, at any n_seq_max,
    reversed and in two calls."""
    texts = list(ll.datasets.news_sample()["title"].head(12))
    labels = ["World", "Sports", "Business", "Sci/Tech"]

    def probs(n, rows):
        ctx = ll.context_create(det_model, n_seq_max=n, deterministic=True)
        out = ll.classify(ctx, rows, labels, progress=False, cache=False, **options)
        return out[labels].to_numpy()

    reference = probs(8, texts)
    assert reference.std(axis=0).max() > 0.01  # the rows get different scores
    ways = {
        "loop": np.vstack([probs(1, [t]) for t in texts]),
        "n_seq_max=4": probs(4, texts),
        "n_seq_max=16": probs(16, texts),
        "reversed": probs(8, texts[::-1])[::-1],
        "two calls": np.vstack([probs(8, texts[:5]), probs(8, texts[5:])]),
    }
    for name, got in ways.items():
        differ = np.flatnonzero((got != reference).any(axis=1)).tolist()
        assert not differ, (name, differ)


def test_deterministic_refuses_what_would_make_rows_depend_on_their_batch(model):
    with pytest.raises(InvalidParameterError, match="flash_attn"):
        ll.context_create(model, deterministic=True, flash_attn=True)
    with pytest.raises(InvalidParameterError, match="kv_unified"):
        ll.context_create(model, deterministic=True, kv_unified=True)
    ctx = ll.context_create(model, n_seq_max=2, deterministic=True)
    assert (ctx.deterministic, ctx.flash_attn, ctx.kv_layout) == (True, False, False)
    ctx.close()


def test_front_ends_pass_the_setting_on(det_model):
    from click.testing import CliRunner

    from jupyter_localllm.cli.run import run
    from jupyter_localllm.notebook.config import LocalLLM
    from jupyter_localllm.session.manager import resolve_context

    settings = LocalLLM()
    assert settings.deterministic is ll.defaults.DETERMINISTIC
    settings.deterministic = True
    assert settings.context_options()["deterministic"] is True
    assert settings.load_options()["use_extra_bufts"] is False
    ctx = resolve_context(det_model, n_seq_max=2, deterministic=True)
    assert ctx.deterministic and not ctx.flash_attn
    assert resolve_context(det_model, n_seq_max=2, deterministic=False) is not ctx
    shown = CliRunner().invoke(run, ["--help"]).output
    assert "--deterministic / --no-deterministic" in shown


def test_a_local_cluster_gives_the_kernels_text(det_model):
    """Two worker processes of one thread each (the kernel runs two threads and other
    partitions): every row's text is the kernel's."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    prompts = paragraphs(det_model, 12)
    ctx = ll.context_create(det_model, n_seq_max=4, deterministic=True)
    here = ll.generate_parallel(ctx, prompts, max_tokens=24, progress=False, cache=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        there = ll.generate_parallel(
            ctx, prompts, max_tokens=24, progress=False, cache=False, cluster=client
        )
    ctx.close()
    assert [str(r) for r in there] == [str(r) for r in here]
