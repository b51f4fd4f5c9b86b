"""The backend's pure-Python parts (engine/handles.py, batch.py, guards.py) on their own, and
the llama.cpp classes built on them."""

from __future__ import annotations

import threading

import pytest
from conftest import run_python

from jupyter_localllm.engine.batch import TokenBatch
from jupyter_localllm.engine.handles import ModelHandle, NativeHandle
from jupyter_localllm.errors import InvalidParameterError, PromptError


class _User:
    def __init__(self) -> None:
        self.lock = threading.Lock()


def _handles(freed: list[str]) -> tuple[ModelHandle, NativeHandle]:
    parent, child = ModelHandle(), NativeHandle()
    parent.name = "m"
    parent._own("model", freed.append)
    child._own("context", freed.append, parent)
    parent.adopt(child)
    return parent, child


def test_a_model_frees_its_contexts_first_and_each_handle_once():
    freed: list[str] = []
    parent, child = _handles(freed)
    parent.close()
    parent.close()
    child.close()
    assert freed == ["context", "model"]
    assert parent.closed and child.closed
    with pytest.raises(InvalidParameterError, match="closed"):
        child._require_open()


def test_a_model_refuses_to_close_while_a_user_runs_and_closes_after():
    freed: list[str] = []
    parent, _ = _handles(freed)
    user = _User()
    parent.add_user(user)
    with user.lock, pytest.raises(InvalidParameterError, match="in use by a running generation"):
        parent.close()
    assert freed == [] and not parent.closed
    parent.close()
    assert freed == ["context", "model"]
    assert not user.lock.locked()  # the guard released what it held


def test_a_context_keeps_its_model_alive_until_freed():
    freed: list[str] = []
    parent, child = _handles(freed)
    del parent
    assert freed == []  # the child's finalizer holds the parent
    del child
    assert freed == ["context", "model"]


def test_token_batch_fills_its_arrays_and_checks_what_it_is_given():
    batch = TokenBatch(4, 2, 10)
    assert batch.add([3, 4], 5, 1, want_last_logits=True) == 1
    assert batch.add([7], 0, 0, want_last_logits=False) == -1
    assert (batch.n_tokens, batch.free) == (3, 1)
    assert batch.token[:3].tolist() == [3, 4, 7]
    assert batch.pos[:3].tolist() == [5, 6, 0]
    assert batch.seq[:3].tolist() == [1, 1, 0]
    assert batch.logits[:3].tolist() == [0, 1, 0]
    for tokens, seq, error in [
        ([], 0, PromptError),
        ([1, 2], 0, InvalidParameterError),  # one free place
        ([1], 2, InvalidParameterError),  # n_seq_max=2
        ([10], 0, InvalidParameterError),  # n_vocab=10
        ([-1], 0, InvalidParameterError),
    ]:
        with pytest.raises(error):
            batch.add(tokens, 0, seq, want_last_logits=True)
    batch.clear()
    assert (batch.n_tokens, batch.free) == (0, 4)


def test_decode_refuses_a_batch_count_beyond_its_arrays_without_a_crash():
    """The native struct's count is set from ``n_tokens`` at decode time: a count written by
    hand past the batch's arrays (or below zero) is refused, never read by llama.cpp."""
    done = run_python(
        """
        import jupyter_localllm as ll
        from jupyter_localllm.errors import InvalidParameterError
        m = ll.model_load("default")
        ctx = m.new_context(n_ctx=256, n_seq_max=1, n_batch=256, n_threads=1, kv_unified=True)
        batch = m.new_batch(8, 1)
        batch.add(m.tokenize("Hello"), 0, 0, want_last_logits=True)
        ctx.decode(batch)
        good = ctx.greedy_token(batch.n_tokens - 1)
        for n in (200, -3):
            batch.n_tokens = n
            try:
                ctx.decode(batch)
            except InvalidParameterError as e:
                print("refused", n, "room for 8" in str(e))
        print("alive", 0 <= good < m.n_vocab)
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-4:-1] == ["refused 200 True", "refused -3 True", "alive True"]
