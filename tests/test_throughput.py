"""jupyter_localllm.tasks.throughput: the pricing of a run at measured rates (exact values on
made-up rates), and a real run's ideal (what it counts, on the default model)."""

from __future__ import annotations

import pytest

import jupyter_localllm as ll
from jupyter_localllm.tasks import throughput as tp


def test_rate_at_interpolates_in_log2_and_clamps():
    curve = {1: 100.0, 4: 300.0}
    assert tp.rate_at(curve, 2) == pytest.approx(200.0)  # halfway in log2
    assert tp.rate_at(curve, 1) == 100.0 and tp.rate_at(curve, 64) == 300.0


def test_prompt_time_prices_a_loop_by_size_and_a_batch_at_the_best_rate():
    pp = {16: 100.0, 64: 200.0}
    assert tp.prompt_time([16, 64, 0], 1, pp) == pytest.approx(16 / 100 + 64 / 200)
    assert tp.prompt_time([80], 4, pp) == pytest.approx(80 / 200)


def test_schedule_time_steps_rows_through_the_slots():
    flat = {10: {1: 10.0, 2: 20.0}}  # one depth: 10 tok/s alone, 20 tok/s two at a time
    # two rows of 3 decodes in 2 slots: 3 steps of 2 rows, 0.1 s each
    assert tp.schedule_time([(10, 3), (10, 3)], 2, flat) == pytest.approx(0.3)
    # one slot: 6 steps of one row
    assert tp.schedule_time([(10, 3), (10, 3)], 1, flat) == pytest.approx(0.6)
    # a short row leaves the long one alone at the end (the tail): 1 step of 2, 2 of 1
    assert tp.schedule_time([(10, 1), (10, 3)], 2, flat) == pytest.approx(0.1 + 0.2)


def test_one_row_sizes_bracket_the_loop_decodes():
    assert tp._one_row_sizes([20, 40, 100]) == (16, 32, 64, 128)
    assert tp._one_row_sizes([0, 8]) == (16,)
    assert tp._one_row_sizes([600]) == (512,)


def _ideal(prompt_s, gen_s, slots=1):
    return tp.Ideal(prompt_s, gen_s, 100, 50, (512, slots, False, True), {}, {})


def test_speedup_measured_limit_and_share():
    s = tp.Speedup(20.0, 10.0, _ideal(2.0, 16.0), _ideal(2.0, 7.0, 8))
    assert s.measured == 2.0 and s.limit == pytest.approx(2.0) and s.share == pytest.approx(1.0)
    assert str(s) == "2.00x (limit 2.00x, 1.00 of it)"
    assert "generation-heavy" in s.explain()
    bound = tp.Speedup(10.0, 9.0, _ideal(9.0, 1.0), _ideal(9.0, 0.5, 8))
    assert "prompt-bound" in bound.explain() and "1.05x" in bound.explain()
    table = s.table()
    assert list(table["wall / ideal"]) == [pytest.approx(20 / 18, abs=0.01), 1.11]


def test_agreement_says_why_answers_differ():
    assert tp.agreement(["a", "b"], ["a", "b"]) == "2/2 answers identical"
    line = tp.agreement(["a", "b"], ["a", "c"])
    assert line.startswith("1/2 answers identical: ") and "batch shapes" in line


@pytest.mark.slow
def test_ideal_time_of_a_real_loop_and_batch(model):
    prompts = [
        ll.apply_chat_template(model, [{"role": "user", "content": f"Name a {x}."}])
        for x in ("fruit", "colour", "city")
    ]
    ctx1 = ll.context_create(model, n_ctx=512)
    loop, decoded = [], []
    for p in prompts:
        loop.append(ll.generate(ctx1, p, max_tokens=6))
        decoded.append(ctx1.last_run.decoded_prompt_tokens)
    ideal = tp.ideal_time(ctx1, prompts, loop, 6, decoded)
    assert ideal.config == (512, 1, False, True)
    assert ideal.prompt_tokens == sum(decoded) and decoded[1] < decoded[0]  # prefix cached
    assert ideal.generated_decodes == sum(r.n_tokens - (r.finish_reason != "eog") for r in loop)
    assert set(ideal.prompt_rates) == set(tp._one_row_sizes(decoded))
    assert ideal.prompt_seconds > 0 and ideal.generate_seconds > 0

    ctx = ll.context_create(model, n_seq_max=3)
    batch = ll.generate_parallel(ctx, prompts, max_tokens=6, progress=False, cache=False)
    par = tp.ideal_time(ctx, prompts, batch, 6)
    assert par.config[1] == 3 and par.prompt_tokens == ctx.last_run.decoded_prompt_tokens
    assert 0 in par.prompt_rates  # full waves of rows
    assert all(set(curve) == {1, 2, 3} for curve in par.decode_rates.values())
