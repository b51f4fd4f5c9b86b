"""generate_parallel and quick_llama on the real default model: order, agreement with the
single-row engine, errors in place, stop strings, interrupts and memory."""

from __future__ import annotations

import gc

import psutil
import pytest

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError, PromptError

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 plus 2?",
    "Say hello in Spanish.",
    "What animal barks?",
    "Name a planet.",
    "What is ice made of?",
    "Give a synonym for big.",
]


@pytest.fixture(scope="module")
def prompts(model):
    return [
        ll.apply_chat_template(
            model,
            [
                {"role": "system", "content": "Answer in a few words."},
                {"role": "user", "content": q},
            ],
        )
        for q in QUESTIONS
    ]


@pytest.fixture(scope="module")
def pctx(model):
    ctx = ll.context_create(model, n_seq_max=4)
    yield ctx
    ctx.close()


def test_agrees_with_generate_loop_on_short_answers(model, ag_news_prompts):
    prompts = ag_news_prompts[:40]
    single = ll.context_create(model)
    loop = [ll.generate(single, p, max_tokens=5) for p in prompts]
    parallel = ll.generate_parallel(
        ll.context_create(model, n_seq_max=8), prompts, max_tokens=5, progress=False
    )
    rate = sum(a == b for a, b in zip(loop, parallel, strict=True)) / len(prompts)
    print(f"agreement generate_parallel vs generate loop: {rate:.0%}")
    assert rate >= 0.8


@pytest.mark.parametrize("n_seq_max", [1, 3, 8])
def test_any_n_seq_max_gives_ordered_results(model, prompts, n_seq_max):
    ctx = ll.context_create(model, n_seq_max=n_seq_max)
    results = ll.generate_parallel(ctx, prompts, max_tokens=12, progress=False)
    assert len(results) == len(prompts)
    assert [r.row for r in results] == list(range(len(prompts)))
    assert all(isinstance(r, ll.Result) and (r.ok or r.startswith("Error: ")) for r in results)
    assert "Paris" in results[0]


def test_same_call_twice_is_identical(pctx, prompts):
    a = ll.generate_parallel(pctx, prompts, max_tokens=16, temperature=0.9, progress=False)
    b = ll.generate_parallel(pctx, prompts, max_tokens=16, temperature=0.9, progress=False)
    assert a == b
    assert [r.finish_reason for r in a] == [r.finish_reason for r in b]


def test_row_stream_does_not_depend_on_batch_neighbours(model, prompts):
    # Sampling at temperature 1: a row's random stream comes from (seed, row index) only.
    # Greedy numerics can still differ a little across batch shapes; sampled rows here agree.
    full = ll.generate_parallel(
        ll.context_create(model, n_seq_max=4),
        prompts,
        max_tokens=8,
        temperature=1.0,
        progress=False,
    )
    alone = ll.generate(ll.context_create(model), prompts[0], max_tokens=8, temperature=1.0)
    assert str(full[0]) == str(alone)


def test_rows_moved_to_lower_sequences_keep_their_cache(model, prompts, monkeypatch):
    """With a stream per sequence, a row whose neighbour below ends moves into the freed
    sequence (its KV cells copied) and goes on exactly as the rows that stayed."""
    from jupyter_localllm.engine.runner import KVSession

    moves = []
    original = KVSession.move

    def spy(self, src, dst):
        moves.append((src, dst))
        original(self, src, dst)

    monkeypatch.setattr(KVSession, "move", spy)
    ctx = ll.context_create(model, n_seq_max=8, kv_unified=False)
    # the same prompt eight times, greedy; the even rows end after 3 tokens
    sampling = [{"max_tokens": 3 if i % 2 == 0 else 24, "temperature": 0} for i in range(8)]
    out = ll.generate_parallel(ctx, [prompts[0]] * 8, sampling=sampling, progress=False)
    assert moves == [(7, 0), (5, 2)] and not ctx.kv_unified
    long = {str(r) for r in out[1::2]}
    assert len(long) == 1 and out[1].n_tokens > 3, [str(r) for r in out]
    assert all(str(out[1]).startswith(str(r)) for r in out[::2])


def test_decodes_only_the_generated_tokens_it_must(model, prompts, monkeypatch):
    """A row's first token comes from its prompt's decode, each later token and the
    end-of-generation verdict from decoding the one before; a row cut at max_tokens never
    decodes its last token. The benchmark's ideal counts tokens this way."""
    from jupyter_localllm.engine.llama import Context

    decoded = []
    original = Context.decode

    def spy(self, batch):
        decoded.append(batch.n_tokens)
        original(self, batch)

    monkeypatch.setattr(Context, "decode", spy)
    ctx = ll.context_create(model, n_seq_max=4)
    sampling = [{"max_tokens": 2 + 6 * (i % 2), "temperature": 0} for i in range(8)]
    out = ll.generate_parallel(ctx, prompts, sampling=sampling, progress=False, cache=False)
    run = ctx.last_run
    ctx.close()
    reasons = {r.finish_reason for r in out}
    assert reasons == {"eog", "length"}, [(str(r), r.finish_reason) for r in out]
    must = sum(r.n_tokens - (r.finish_reason != "eog") for r in out)
    assert sum(decoded) - run.decoded_prompt_tokens == must


def test_mixed_lengths_and_one_over_long_prompt(model, prompts):
    ctx = ll.context_create(model, n_ctx=512, n_seq_max=4)
    too_long = prompts[1].replace("Name a primary colour.", "word " * 600)
    batch = [*prompts[:3], "Tell me a story. " * 3, *prompts[3:]] * 3
    batch = [*batch[:7], too_long, *batch[7:19]]  # the long one in the middle
    results = ll.generate_parallel(ctx, batch, max_tokens=8, progress=False)
    errors = [r for r in results if not r.ok]
    assert len(results) == 20 and len(errors) == 1
    assert errors[0].row == 7 and errors[0].startswith("Error: ")
    assert "n_ctx" in errors[0].error and errors[0].finish_reason == "error"
    # the context is still usable and the others are real answers
    assert all(r.n_tokens > 0 for r in results if r.ok)
    with pytest.raises(PromptError, match="Row 7 failed"):
        ll.generate_parallel(ctx, batch, max_tokens=2, progress=False, on_error="raise")


def test_a_row_too_long_for_its_share_runs_in_a_shared_cache(model, prompts):
    """A fixed n_ctx split n_seq_max ways is too small for a row the whole n_ctx holds: by
    default that run uses one shared cache and the row runs; kv_unified=False keeps
    localLLM's split, where the row fails; short rows go back to the split."""
    long = prompts[1].replace("Name a primary colour.", "Say yes. " * 40)
    batch = [*prompts[:5], long]
    auto = ll.context_create(model, n_ctx=512, n_seq_max=8)  # 64 cells per sequence
    out = ll.generate_parallel(auto, batch, max_tokens=4, progress=False, cache=False)
    assert all(r.ok for r in out), [r.error for r in out]
    assert auto.kv_unified and "kv_unified=auto" in repr(auto)
    split = ll.context_create(model, n_ctx=512, n_seq_max=8, kv_unified=False)
    kept = ll.generate_parallel(split, batch, max_tokens=4, progress=False, cache=False)
    assert all(r.ok for r in kept[:5]) and not kept[5].ok
    assert "per sequence" in kept[5].error
    # (with more tokens to generate than prompt tokens of their own: not prompt-bound)
    short = ll.generate_parallel(auto, prompts[:5], max_tokens=24, progress=False, cache=False)
    assert all(r.ok for r in short) and not auto.kv_unified


def test_a_prompt_bound_run_shares_one_cache_and_a_generation_heavy_one_does_not(model, prompts):
    """By default a run whose rows' own prompt tokens are at least four times what they may
    decode after them uses one shared cache (a wave of uneven prompts decodes whole there);
    longer answers, one slot, or kv_unified=False keep a stream per row."""
    auto = ll.context_create(model, n_seq_max=4)
    short = ll.generate_parallel(auto, prompts, max_tokens=2, progress=False, cache=False)
    assert auto.kv_unified and all(r.ok for r in short)
    shared = ll.context_create(model, n_seq_max=4, kv_unified=True)
    same = ll.generate_parallel(shared, prompts, max_tokens=2, progress=False, cache=False)
    assert [str(r) for r in short] == [str(r) for r in same]
    long = ll.generate_parallel(auto, prompts, max_tokens=24, progress=False, cache=False)
    assert not auto.kv_unified and all(r.ok for r in long)
    labels = ll.classify(auto, prompts, ["yes", "no"], progress=False)
    assert auto.kv_unified and len(labels) == len(prompts)  # label scoring: prompt-bound too
    split = ll.context_create(model, n_seq_max=4, kv_unified=False)
    ll.generate_parallel(split, prompts, max_tokens=2, progress=False, cache=False)
    one = ll.context_create(model, n_seq_max=1)
    ll.generate_parallel(one, prompts, max_tokens=2, progress=False, cache=False)
    assert not split.kv_unified and not one.kv_unified
    fixed = ll.context_create(model, n_ctx=2048, n_seq_max=4)  # every row fits its share
    ll.generate_parallel(fixed, prompts, max_tokens=2, progress=False, cache=False)
    assert fixed.kv_unified


def test_a_run_of_several_rows_reuses_only_its_own_cached_prefix(model, prompts):
    """A cached prefix that is not exactly the run's own (part of a longer one, or a part of
    this one) was decoded in other pieces: the run decodes its prefix afresh and answers as a
    fresh context does; the same prefix again is reused."""
    longer = [
        p.replace("Answer in a few words.", "Answer in a few words, plainly.") for p in prompts
    ]
    ctx = ll.context_create(model, n_seq_max=4, kv_unified=False)
    fresh = ll.generate_parallel(
        ll.context_create(model, n_seq_max=4, kv_unified=False),
        prompts,
        max_tokens=10,
        progress=False,
        cache=False,
    )
    ll.generate_parallel(ctx, longer, max_tokens=2, progress=False, cache=False)
    after = ll.generate_parallel(ctx, prompts, max_tokens=10, progress=False, cache=False)
    run = ctx.last_run
    assert run.prefix_tokens > 5 and run.prefix_tokens_decoded == run.prefix_tokens
    assert after == fresh
    ll.generate_parallel(ctx, prompts, max_tokens=10, progress=False, cache=False)
    assert ctx.last_run.prefix_tokens_decoded == 0


def test_flash_attention_on_by_default_and_a_row_does_not_depend_on_its_neighbours(model, prompts):
    """Flash attention is on by default; with a stream per row a row's answer is the same
    whether its neighbours are all eight rows or a part of them (in a shared cache it is not:
    there the kernel a row gets depends on how many tokens the whole decode holds)."""
    ctx = ll.context_create(model, n_seq_max=4)
    assert ctx.flash_attn and "flash_attn=True" in repr(ctx)
    whole = ll.generate_parallel(ctx, prompts, max_tokens=12, progress=False, cache=False)
    assert not ctx.kv_unified
    parts = [
        *ll.generate_parallel(ctx, prompts[:3], max_tokens=12, progress=False, cache=False),
        *ll.generate_parallel(ctx, prompts[3:], max_tokens=12, progress=False, cache=False),
    ]
    assert [str(r) for r in whole] == [str(r) for r in parts]
    plain = ll.context_create(model, n_seq_max=4, flash_attn=False)
    out = ll.generate_parallel(plain, prompts[:4], max_tokens=4, progress=False, cache=False)
    assert all(r.ok for r in out) and not plain.flash_attn
    with pytest.raises(InvalidParameterError, match="flash_attn"):
        ll.context_create(model, flash_attn="yes")


def test_zero_prompts_and_bad_rows(pctx):
    assert ll.generate_parallel(pctx, [], progress=False) == []
    res = ll.generate_parallel(pctx, ["", None, "Hello"], max_tokens=3, progress=False)
    assert res[0].error == "the prompt is empty; give some text"
    assert res[1].error == "the prompt must be a string, got NoneType"
    assert res[2].ok


def test_stop_string_split_across_tokens(model, ctx, prompts):
    free = ll.generate(ctx, prompts[0], max_tokens=16)
    assert "Paris" in free
    # "ar" + "is" style splits: a stop string that is not a whole token
    stop = "Par" if "Par" in free else free[:3]
    res = ll.generate_parallel(
        ll.context_create(model, n_seq_max=2),
        [prompts[0]] * 2,
        max_tokens=16,
        stop=[stop],
        progress=False,
    )
    assert all(r.finish_reason == "stop" and stop not in r for r in res)
    assert str(res[0]) == free[: free.index(stop)]


def test_progress_events_and_on_result(pctx, prompts):
    events, finished = [], []
    results = ll.generate_parallel(
        pctx, prompts, max_tokens=6, progress=events.append, on_result=finished.append
    )
    assert events[-1].done == events[-1].total == len(prompts)
    assert events[-1].generated_tokens >= sum(r.n_tokens for r in results)
    assert sorted(r.row for r in finished) == list(range(len(prompts)))


def test_keyboard_interrupt_keeps_finished_rows_and_context_usable(pctx, prompts):
    calls = {"n": 0}

    def interrupt(event):
        calls["n"] += 1
        if event.done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as info:
        ll.generate_parallel(pctx, prompts * 2, max_tokens=10, progress=interrupt)
    partial = info.value.results
    assert isinstance(info.value, KeyboardInterrupt)
    assert len(partial) == 2 * len(prompts)
    done = [r for r in partial if r.ok]
    cancelled = [r for r in partial if r.finish_reason == "cancelled"]
    assert len(done) >= 2 and len(done) + len(cancelled) == len(partial)
    # the context works afterwards and gives the same answers as a fresh one
    after = ll.generate_parallel(pctx, prompts[:4], max_tokens=10, progress=False)
    fresh = ll.generate_parallel(
        ll.context_create(pctx.model, n_seq_max=4), prompts[:4], max_tokens=10, progress=False
    )
    assert all(r.ok for r in after) and after == fresh


def test_prefix_is_reused_across_calls(pctx, prompts):
    ll.generate_parallel(pctx, prompts, max_tokens=2, progress=False)
    first = pctx.last_run
    ll.generate_parallel(pctx, prompts[::-1], max_tokens=2, progress=False)
    second = pctx.last_run
    assert first.prefix_tokens > 5
    assert second.prefix_tokens == first.prefix_tokens
    assert second.prefix_tokens_decoded == 0


def test_quick_llama_single_and_list():
    one = ll.quick_llama("What is the capital of France?", max_tokens=12)
    assert isinstance(one, ll.Result) and "Paris" in one
    many = ll.quick_llama(["Name a planet.", "Say hi.", ""], max_tokens=8, progress=False)
    assert [r.ok for r in many] == [True, True, False]
    assert "<|im_end|>" not in many[0]


def test_thousand_short_prompts_memory_growth(model):
    ctx = ll.context_create(model, n_seq_max=16)
    prompts = [f"Number {i}:" for i in range(1000)]
    proc = psutil.Process()
    ll.generate_parallel(ctx, prompts[:50], max_tokens=1, progress=False)  # warm up
    gc.collect()
    before = proc.memory_info().rss
    results = ll.generate_parallel(ctx, prompts, max_tokens=2, progress=False)
    gc.collect()
    grown = (proc.memory_info().rss - before) / 2**20
    print(f"RSS growth over 1,000 prompts: {grown:.1f} MiB")
    assert len(results) == 1000 and all(r.ok for r in results)
    assert grown < 100
