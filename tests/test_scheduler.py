"""The scheduler on its own, fed hand-made model outputs (no model), as vLLM tests its own."""

from __future__ import annotations

import pytest

from jupyter_localllm.engine.sampling import SamplingParams, derive_seed
from jupyter_localllm.engine.scheduler import Request, Scheduler, common_prefix_length

EOG = 0
# A toy vocabulary: token t is the text "<t>"; token 0 ends generation; 900+ split a UTF-8 char.
SNOWMAN = "☃".encode()


def token_bytes(t: int) -> bytes:
    if t == 901:
        return SNOWMAN[:1]
    if t == 902:
        return SNOWMAN[1:]
    return f"<{t}>".encode()


def make(n_slots=2, n_batch=64, prefix_len=0, kv_capacity=1000) -> Scheduler:
    return Scheduler(
        n_slots=n_slots,
        n_batch=n_batch,
        prefix_len=prefix_len,
        kv_capacity=kv_capacity,
        token_bytes=token_bytes,
        is_eog=lambda t: t == EOG,
    )


def req(index, n_prompt=3, **params) -> Request:
    p = SamplingParams.from_kwargs(**params)
    return Request(index, list(range(100, 100 + n_prompt)), p, derive_seed(p.seed, index))


def step(s: Scheduler, outputs: dict[int, int]):
    """One step: plan, then answer every slot that asked for logits from ``outputs``
    (keyed by request index); a scoring slot's logits are read, not sampled."""
    plan = s.schedule()
    sampled = {
        w.slot: outputs[s.slots[w.slot].request.index]
        for w in plan.work
        if w.wants_logits and s.slots[w.slot].request.branches is None
    }
    finished, deltas = s.update_from_output(plan, sampled)
    return plan, finished, deltas


def test_admission_fills_free_slots_and_queues_the_rest():
    s = make(n_slots=2)
    for i in range(3):
        assert s.add_request(req(i, max_tokens=2)) is None
    plan = s.schedule()
    assert [w.slot for w in plan.work] == [0, 1]
    assert all(w.wants_logits and w.start_pos == 0 for w in plan.work)
    assert [r.index for r in s.waiting] == [2]


def test_work_in_slot_order_and_freed_slot_is_refilled():
    s = make(n_slots=2)
    s.add_request(req(0, max_tokens=1))
    s.add_request(req(1, max_tokens=3))
    s.add_request(req(2, max_tokens=3))
    # step 1: both prompts; row 0 is done after one token (max_tokens=1)
    _, finished, _ = step(s, {0: 5, 1: 6})
    assert [(slot, r.row, r.finish_reason) for slot, r in finished] == [(0, 0, "length")]
    # step 2: row 2's prompt in the freed slot 0, then row 1's pending token: slot order,
    # so that llama.cpp takes both sequences in one piece
    plan = s.schedule()
    assert [(w.slot, len(w.tokens), w.start_pos) for w in plan.work] == [(0, 3, 0), (1, 1, 3)]
    assert s.slots[0].request.index == 2 and plan.moves == []


def test_decode_tokens_get_room_before_prompt_chunks():
    s = make(n_slots=2, n_batch=3)
    s.add_request(req(0, n_prompt=2, max_tokens=3))
    s.add_request(req(1, n_prompt=1, max_tokens=1))
    step(s, {0: 5, 1: 6})  # row 1 ends; row 0 waits with one token to decode
    s.add_request(req(2, n_prompt=5, max_tokens=1))
    plan = s.schedule()
    # slot 0 holds row 0's pending token; row 2 (slot 1) gets the 2 places left
    assert [(w.slot, len(w.tokens)) for w in plan.work] == [(0, 1), (1, 2)]


def test_contiguous_moves_the_last_running_request_into_a_freed_slot():
    s = make(n_slots=3)
    s.contiguous = True
    for i, n in enumerate((1, 4, 4)):
        s.add_request(req(i, max_tokens=n))
    step(s, {0: 5, 1: 6, 2: 7})  # row 0 ends in slot 0; nothing waits
    plan = s.schedule()
    assert plan.moves == [(2, 0)]
    assert [s.slots[i] and s.slots[i].request.index for i in range(3)] == [2, 1, None]
    # the moved row goes on from where it was, in its new slot
    assert [(w.slot, list(w.tokens), w.start_pos) for w in plan.work] == [(0, [7], 3), (1, [6], 3)]
    # a waiting request takes a freed slot instead
    s.update_from_output(plan, {0: 8, 1: 0})  # row 1 ends in slot 1
    s.add_request(req(3, max_tokens=2))
    plan = s.schedule()
    assert plan.moves == [] and s.slots[1].request.index == 3


def test_without_contiguous_nothing_moves():
    s = make(n_slots=3)
    for i, n in enumerate((1, 4, 4)):
        s.add_request(req(i, max_tokens=n))
    step(s, {0: 5, 1: 6, 2: 7})
    plan = s.schedule()
    assert plan.moves == [] and s.slots[0] is None and [w.slot for w in plan.work] == [1, 2]


def test_a_wave_of_prompts_takes_slots_longest_first():
    s = make(n_slots=4)
    for i, n in enumerate((2, 5, 3, 5)):
        s.add_request(req(i, n_prompt=n))
    plan = s.schedule()
    # consecutive sequences with equal remaining lengths: llama.cpp decodes them together
    assert [(w.slot, s.slots[w.slot].request.index, len(w.tokens)) for w in plan.work] == [
        (0, 1, 5),
        (1, 3, 5),
        (2, 2, 3),
        (3, 0, 2),
    ]


def test_prompt_chunks_never_exceed_n_batch():
    s = make(n_slots=2, n_batch=4)
    s.add_request(req(0, n_prompt=6, max_tokens=2))
    s.add_request(req(1, n_prompt=3, max_tokens=2))
    plan = s.schedule()
    assert plan.n_tokens == 4
    assert [(w.slot, len(w.tokens), w.wants_logits) for w in plan.work] == [(0, 4, False)]
    s.update_from_output(plan, {})
    plan = s.schedule()
    assert [(w.slot, len(w.tokens), w.start_pos, w.wants_logits) for w in plan.work] == [
        (0, 2, 4, True),
        (1, 2, 0, False),
    ]


def test_prefix_offsets_positions():
    s = make(n_slots=1, prefix_len=10)
    s.add_request(req(0, n_prompt=2, max_tokens=3))
    plan, _, _ = step(s, {0: 7})
    assert plan.work[0].start_pos == 10
    plan = s.schedule()
    assert plan.work[0].start_pos == 12 and list(plan.work[0].tokens) == [7]


def test_finish_reasons_eog_stop_length():
    s = make(n_slots=3)
    s.add_request(req(0, max_tokens=5))
    s.add_request(req(1, max_tokens=5, stop=["<8>"]))
    s.add_request(req(2, max_tokens=1))
    _, finished, _ = step(s, {0: EOG, 1: 7, 2: 9})
    got = {r.row: (r.finish_reason, str(r), r.n_tokens) for _, r in finished}
    assert got == {0: ("eog", "", 0), 2: ("length", "<9>", 1)}
    _, finished, _ = step(s, {1: 8})
    ((_, r),) = finished
    assert (r.finish_reason, str(r), r.n_tokens, r.n_prompt_tokens) == ("stop", "<7>", 2, 3)
    assert not s.has_unfinished_requests()


def test_stop_string_split_across_tokens_is_held_back_and_removed():
    s = make(n_slots=1)
    s.add_request(req(0, max_tokens=10, stop=["3><4"]))
    deltas_all = []
    for tok in (2, 3, 4, 5):
        _, finished, deltas = step(s, {0: tok})
        deltas_all += [d for _, d in deltas]
        if finished:
            break
    ((_, r),) = finished
    assert str(r) == "<2><" and r.finish_reason == "stop"
    assert "".join(deltas_all) == "<2><"


def test_utf8_character_split_across_tokens():
    s = make(n_slots=1)
    s.add_request(req(0, max_tokens=2))
    _, _, deltas = step(s, {0: 901})
    assert deltas == []  # half a character is not released
    _, finished, deltas = step(s, {0: 902})
    assert deltas == [(0, "☃")] and str(finished[0][1]) == "☃"


def test_too_long_and_empty_requests_fail_at_once():
    s = make(n_slots=2, prefix_len=5, kv_capacity=4)
    long = s.add_request(req(0, n_prompt=4))
    assert long is not None and long.finish_reason == "error"
    assert long.startswith("Error: ") and "more than the context holds" in long.error
    empty = s.add_request(Request(1, [], SamplingParams(), 1))
    assert empty is not None and empty.error
    assert s.add_request(req(2, n_prompt=3, max_tokens=1)) is None


def test_kv_budget_delays_admission_until_cells_free():
    s = make(n_slots=2, kv_capacity=10)
    s.add_request(req(0, n_prompt=3, max_tokens=5))  # needs 8 cells
    s.add_request(req(1, n_prompt=3, max_tokens=5))
    plan = s.schedule()
    assert [w.slot for w in plan.work] == [0]  # the second does not fit yet
    s.update_from_output(plan, {0: EOG})
    plan = s.schedule()
    assert [(w.slot, s.slots[w.slot].request.index) for w in plan.work] == [(0, 1)]


def test_generation_stops_when_its_cells_run_out():
    s = make(n_slots=1, kv_capacity=6)
    s.add_request(req(0, n_prompt=3, max_tokens=100))  # budget capped at 6 cells
    n = 0
    while s.has_unfinished_requests():
        _, finished, _ = step(s, {0: 7})
        n += 1
    assert finished[0][1].finish_reason == "length" and finished[0][1].n_tokens == 3


def test_fail_slot_and_cancel_all():
    s = make(n_slots=1)
    s.add_request(req(0))
    s.add_request(req(1))
    s.schedule()
    err = s.fail_slot(0, "sampler failed")
    assert err.error == "sampler failed" and err.startswith("Error: ")
    s.add_request(req(2))
    s.schedule()
    freed = s.cancel_all()
    assert freed == [0]
    assert {i: r.finish_reason for i, r in s.finished.items()} == {
        0: "error",
        1: "cancelled",
        2: "cancelled",
    }
    assert not s.has_unfinished_requests()


def test_row_seed_does_not_depend_on_batch_composition():
    # The seed is a function of (seed, row index) only; row 0 keeps the user's seed.
    assert derive_seed(1234, 0) == 1234
    seeds = [derive_seed(1234, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= x < 2**32 for x in seeds)
    assert derive_seed(1234, 5) == derive_seed(1234, 5) != derive_seed(1235, 5)


@pytest.mark.parametrize(
    ("lists", "expected"),
    [([], 0), ([[1, 2, 3]], 3), ([[1, 2, 3], [1, 2, 4]], 2), ([[1], [2]], 0), ([[1, 2], [1]], 1)],
)
def test_common_prefix_length(lists, expected):
    assert common_prefix_length(lists) == expected


# -- scoring requests: the same loop, logits read instead of sampled ----------------------
def score_req(index, n_prompt=3, branches=((7, 8), (9,))) -> Request:
    return Request(index, list(range(100, 100 + n_prompt)), None, branches=branches)


def test_a_scoring_request_reads_its_prompt_then_each_branch_rolled_back():
    s = make(n_slots=1, prefix_len=4)
    assert s.add_request(score_req(0)) is None
    plan, finished, _ = step(s, {})
    (w,) = plan.work
    assert (list(w.tokens), w.start_pos, w.wants_logits, w.all_logits, w.rollback) == (
        [100, 101, 102], 4, True, False, None,
    )  # fmt: skip
    assert finished == []
    # each branch after the prompt, every token's logits, then its cells dropped
    plan, finished, _ = step(s, {})
    (w,) = plan.work
    assert (list(w.tokens), w.start_pos, w.all_logits, w.rollback) == ([7, 8], 7, True, 7)
    plan, finished, deltas = step(s, {})
    (w,) = plan.work
    assert (list(w.tokens), w.start_pos, w.rollback) == ([9], 7, 7)
    ((slot, res),) = finished
    assert (slot, res.row, res.finish_reason, str(res), deltas) == (0, 0, "stop", "", [])
    assert not s.has_unfinished_requests()


def test_scoring_rows_keep_their_order_and_branches_wait_for_every_prompt():
    s = make(n_slots=2, n_batch=5)
    s.add_request(score_req(0, n_prompt=2, branches=((7,),)))
    s.add_request(score_req(1, n_prompt=4, branches=((7,),)))
    plan = s.schedule()  # in order of arrival (not longest first); row 1's prompt is cut
    assert [(w.slot, len(w.tokens)) for w in plan.work] == [(0, 2), (1, 3)]
    s.update_from_output(plan, {})
    plan = s.schedule()  # row 0's branch waits for row 1's last prompt token
    assert [(w.slot, list(w.tokens)) for w in plan.work] == [(1, [103])]
    s.update_from_output(plan, {})
    plan = s.schedule()
    assert [(w.slot, list(w.tokens), w.start_pos) for w in plan.work] == [(0, [7], 2), (1, [7], 4)]
    finished, _ = s.update_from_output(plan, {})
    assert sorted(r.row for _, r in finished) == [0, 1]


def test_a_scoring_request_without_branches_ends_with_its_prompt():
    s = make(n_slots=2)
    s.add_request(score_req(0, branches=()))
    s.add_request(req(1, max_tokens=2))  # a generating row in the same loop
    _, finished, _ = step(s, {1: 5})
    assert [(r.row, r.finish_reason) for _, r in finished] == [(0, "stop")]
    _, finished, _ = step(s, {1: 6})
    assert [(r.row, str(r)) for _, r in finished] == [(1, "<5><6>")]


def test_a_scoring_request_that_cannot_hold_its_labels_fails_at_once():
    s = make(n_slots=1, prefix_len=5, kv_capacity=6)
    res = s.add_request(score_req(0, n_prompt=4, branches=((1, 2, 3),)))
    assert res is not None and "more than the context holds with the labels" in res.error
    assert "the prompt has 9 tokens" in res.error
    assert s.add_request(score_req(1, n_prompt=3, branches=((1, 2, 3),))) is None
