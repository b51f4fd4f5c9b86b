"""The kernel end of the JupyterLab extension (docs/labextension.md), in this process: the
session's activity, the messages of notebook/protocol.py and the channel that sends them,
checked against the one JSON schema (jupyter_localllm/notebook/comm_schema.json). The comm in
a real ipykernel is tests/test_comm_kernel.py."""

from __future__ import annotations

import itertools
import json
import threading
import time

import jsonschema
import pytest
from comm_messages import KERNEL_MESSAGE, REQUEST, REQUEST_ID
from conftest import chat, run_python, wait_for
from gguf_edit import write_copy

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted
from jupyter_localllm.models import default_model_path
from jupyter_localllm.notebook import protocol
from jupyter_localllm.notebook.comm import MIN_INTERVAL_S, Channel
from jupyter_localllm.notebook.protocol import PROTOCOL
from jupyter_localllm.session import activity
from jupyter_localllm.session.manager import get_manager
from jupyter_localllm.types import Progress

STATE_KEYS = {"type", "protocol", "request_id", "models", "jobs"}
JOB_KEYS = {
    "id", "desc", "model", "status", "background", "done", "total", "errors", "tokens_per_s",
    "eta_s",
}  # fmt: skip


# -- the session's activity, in this process ---------------------------------------------------
def _job_state(run_id: str) -> dict | None:
    """The run ``run_id`` as the state message shows it."""
    return next((j for j in _state()["jobs"] if j["id"] == run_id), None)


def _state() -> dict:
    """The state message of the session's snapshot now."""
    return protocol.state_message(activity.snapshot())


def _accepts(validator: jsonschema.protocols.Validator, data: object) -> bool:
    """Whether the schema accepts ``data`` (an int jsonschema cannot even print: no)."""
    try:
        return validator.is_valid(data)
    except ValueError:
        return False


def test_watch_calls_back_on_changes_and_a_raising_watcher_breaks_nothing():
    calls = []

    def broken():
        raise RuntimeError("a broken front-end")

    stop_broken = activity.watch(broken)
    stop = activity.watch(lambda: calls.append(1))
    try:
        activity.changed()
        assert calls == [1]
    finally:
        stop()
        stop_broken()
    activity.changed()
    assert calls == [1]


def test_snapshot_follows_a_background_job_and_cancel_keeps_its_rows(model):
    alias = get_manager().adopt(model, alias="activity-test")
    try:
        ctx = get_manager().context(alias, n_seq_max=2)
        prompts = [chat(model, f"Write a long story about dragon number {i}.") for i in range(8)]
        job = ll.generate_parallel(
            ctx, prompts, max_tokens=48, cache=False, background=True, progress=False
        )
        assert job.id is not None
        wait_for(lambda: len(job.partial()) >= 1)
        snap = activity.snapshot()
        model_state = next(m for m in snap.models if m.alias == alias)
        assert model_state.name == model.name and model_state.size_bytes > 50 * 2**20
        assert next(r for r in snap.runs if r.id == job.id).background is True
        state = protocol.state_message(snap)
        assert set(state) == STATE_KEYS and state["type"] == "state"
        assert state["protocol"] == PROTOCOL == 2 and state["request_id"] is None
        KERNEL_MESSAGE.validate(state)
        shown = next(m for m in state["models"] if m["alias"] == alias)
        assert shown["name"] == model.name and shown["size_mb"] > 50
        running = _job_state(job.id)
        assert set(running) == JOB_KEYS
        assert running["model"] == alias and running["background"] is True
        assert running["status"] == "running" and running["total"] == 8
        assert 1 <= running["done"] < 8
        assert activity.cancel(job.id) is True
        with pytest.raises(BatchInterrupted):
            job.result(timeout=60)
        assert _job_state(job.id)["status"] == "cancelled"  # kept after the end
        assert 1 <= len(job.partial()) < 8
        assert activity.cancel(job.id) is False  # over
        assert activity.cancel("no-such-job") is False
    finally:
        get_manager().unload(alias)  # adopted: forgotten, not closed
    assert all(m.alias != alias for m in activity.snapshot().models)


def test_the_state_cuts_a_huge_model_name(tmp_path):
    """A model file's own name can be any length; the state (sent up to 4 times a second)
    carries at most 256 characters of it."""
    name = "<b>n</b>" * 20_000
    path = write_copy(default_model_path(), tmp_path / "long.gguf", {"general.name": name})
    model = ll.model_load(str(path))
    alias = get_manager().adopt(model, alias="long-name")
    try:
        held = next(m for m in activity.snapshot().models if m.alias == alias)
        assert held.name == model.name and len(model.name) > 10_000  # the session keeps it
        shown = next(m for m in _state()["models"] if m["alias"] == alias)
        assert shown["name"] == name[:255] + "…" and shown["file"] == "long.gguf"
        KERNEL_MESSAGE.validate(_state())
    finally:
        get_manager().unload(alias)
        model.close()


def test_a_foreground_run_shows_while_it_runs_and_cannot_be_cancelled_by_id(model, ctx):
    seen = []

    def look(event: Progress) -> None:
        runs = [j for j in _state()["jobs"] if not j["background"]]
        seen.append(runs[-1])
        assert activity.cancel(runs[-1]["id"]) is False  # stopped by a kernel interrupt only

    prompts = [chat(model, t) for t in ("Say hi.", "Name a colour.")]
    ll.generate_parallel(ctx, prompts, max_tokens=6, cache=False, progress=look)
    assert seen and all(s["status"] == "running" and s["model"] is None for s in seen)
    assert seen[-1]["done"] == seen[-1]["total"] == 2
    assert _job_state(seen[-1]["id"])["status"] == "finished"


def test_a_finished_run_drops_out_after_the_keep_time_with_a_change(monkeypatch):
    monkeypatch.setattr(activity, "KEEP_FINISHED_S", 0.2)
    changes = threading.Event()
    run = activity.start_foreground("probe", 3)
    run.end("failed")
    assert _job_state(run.id)["status"] == "failed"
    stop = activity.watch(lambda: _job_state(run.id) is None and changes.set())
    try:
        assert changes.wait(10)  # announced by the expiry timer, nobody polls
    finally:
        stop()


class RecordingComm:
    """Stands in for the kernel's comm transport: records what is sent, and when."""

    def __init__(self):
        self.sent: list[tuple[float, dict]] = []
        self.on_msg = self.on_close = lambda callback: None

    def send(self, data):
        self.sent.append((time.monotonic(), json.loads(json.dumps(data))))

    def close(self):
        pass


def test_the_channel_merges_changes_and_always_sends_the_last_state():
    comm = RecordingComm()
    channel = Channel(comm, sent=_state())
    run = activity.start_foreground("burst", 400)
    try:
        for done in range(1, 401):  # far more changes than 4 a second
            run.report(Progress(done, 400, 0, done, done / 500))
            time.sleep(0.002)
        run.end("finished")
        wait_for(lambda: any(_run_in(s, run.id)["status"] == "finished" for _, s in comm.sent), 10)
    finally:
        channel.close()
    times = [t for t, _ in comm.sent]
    assert all(b - a >= MIN_INTERVAL_S for a, b in itertools.pairwise(times))
    assert len(comm.sent) < 400 / 10
    last = _run_in(comm.sent[-1][1], run.id)
    assert last["status"] == "finished" and last["done"] == 400
    count = len(comm.sent)
    activity.changed()  # closed: nothing more is sent
    time.sleep(MIN_INTERVAL_S * 2)
    assert len(comm.sent) == count


def _versioned(**data) -> dict:
    """A comm message whose data is this protocol's, with request_id "h"."""
    return {"content": {"data": {"protocol": PROTOCOL, "request_id": "h", **data}}}


HOSTILE_MESSAGES = [
    None,
    "a string",
    [1, 2],
    {"content": None},
    {"content": []},
    {"content": {"data": None}},
    {"content": {"data": "load"}},
    {"content": {"data": {"type": "state"}}},  # a state sent back, not an action
    {"content": {"data": {"action": "state"}}},  # no protocol: an older extension
    {"content": {"data": {"action": "state", "protocol": 1, "request_id": "h"}}},
    {"content": {"data": {"action": "state", "protocol": 10**5000, "request_id": "h"}}},
    {"content": {"data": {"action": "state", "protocol": PROTOCOL, "request_id": ["h"]}}},
    {"content": {"data": {"action": "state", "protocol": PROTOCOL, "request_id": "h" * 65}}},
    {"content": {"data": {"action": "state", "protocol": PROTOCOL}}},
    _versioned(action=None),
    _versioned(action=["load"]),
    _versioned(action={"nested": "x" * 10_000}),
    _versioned(action="x" * 1_000_000),
    _versioned(action="cancel", job=None),
    _versioned(action="cancel", job={"id": [10**5000]}),
    _versioned(action="cancel", job=10**5000),
    _versioned(action="cancel", job=3),
    _versioned(action="cancel", job=True),
    _versioned(action="state", job="3"),
    _versioned(action="load"),
    _versioned(action="load", ref=""),
    _versioned(action="load", ref="x" * 1_000_000),
    _versioned(action="load", ref="default", alias=5),
    _versioned(action="unload", alias=["a"]),
]


@pytest.mark.parametrize("msg", HOSTILE_MESSAGES, ids=range(len(HOSTILE_MESSAGES)))
def test_any_message_gets_one_short_error_reply_and_nothing_raises(msg):
    """What the comm hands the channel, however broken: one ``error`` reply, a short message,
    no exception into the kernel (the comm would log it as a traceback)."""
    comm = RecordingComm()
    channel = Channel(comm, sent=_state())
    try:
        channel._on_msg(msg)  # the comm's on_msg callback
    finally:
        channel.close()
    replies = [data for _, data in comm.sent]
    assert len(replies) == 1, replies
    reply = replies[0]
    KERNEL_MESSAGE.validate(reply)
    assert reply["type"] == "error" and reply["action"] in (None, *protocol.ACTIONS)
    assert reply["protocol"] == PROTOCOL
    # The id is echoed where the request had a valid one, and only then.
    content = msg.get("content") if isinstance(msg, dict) else None
    data = content.get("data") if isinstance(content, dict) else None
    sent_id = data.get("request_id") if isinstance(data, dict) else None
    assert reply["request_id"] == (sent_id if REQUEST_ID.is_valid(sent_id) else None)
    assert 10 < len(reply["message"]) < 300, reply
    assert not _accepts(REQUEST, data)  # the schema refuses it too


WRONG = [None, True, False, 0, -1, 1.5, 2, 2.0, "", "x", "🦙" * 64, "🦙" * 65, "x" * 4097,
         "x" * 4096, [], ["x"], {}, {"a": 1}, 10**5000]  # fmt: skip


def _variants(example: dict) -> list[dict]:
    """``example`` with each key dropped, set to each of WRONG, and an extra key."""
    out = [dict(example), {**example, "extra": 1}]
    for key in example:
        out.append({k: v for k, v in example.items() if k != key})
        out += [{**example, key: value} for value in WRONG]
    return out


def test_the_kernel_accepts_exactly_the_requests_the_schema_accepts():
    """protocol.py reads the schema without jsonschema (fast on the first request); on every
    schema example and hundreds of broken variants it agrees with jsonschema."""
    definitions = json.loads(protocol.SCHEMA_PATH.read_text(encoding="utf-8"))["definitions"]
    examples = [e for a in protocol.ACTIONS for e in definitions[f"request_{a}"]["examples"]]
    assert [e["action"] for e in examples] == list(protocol.ACTIONS)
    verdicts = []
    for variant in (v for e in examples for v in _variants(e)):
        try:
            protocol.parse_request(variant)
            accepted = True
        except protocol.RequestError:
            accepted = False
        assert accepted == _accepts(REQUEST, variant), variant
        verdicts.append(accepted)
    assert verdicts.count(False) > 300 and verdicts.count(True) > 20


def test_another_protocol_version_is_refused_naming_both():
    comm = RecordingComm()
    channel = Channel(comm, sent=_state())
    try:
        channel._on_msg(
            {"content": {"data": {"action": "state", "protocol": 1, "request_id": "7"}}}
        )
    finally:
        channel.close()
    [(_, reply)] = comm.sent
    assert reply == {
        "type": "error",
        "protocol": PROTOCOL,
        "request_id": "7",
        "action": "state",
        "message": f"This kernel's jupyter-localllm speaks comm protocol {PROTOCOL} and the "
        "request has protocol 1: install the same jupyter-localllm version in the kernel's "
        "environment and JupyterLab's, then restart both.",
    }


def _run_in(state: dict, run_id: str) -> dict:
    return next((j for j in state["jobs"] if j["id"] == run_id), {"status": None})


def test_load_ext_in_plain_ipython_opens_no_comm():
    done = run_python(
        """
        from IPython.core.interactiveshell import InteractiveShell
        from jupyter_localllm.notebook import comm
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "jupyter_localllm")
        shell.run_line_magic("reload_ext", "jupyter_localllm")
        assert comm.open_comm(shell) is None and comm._channels == []
        assert "llm" in shell.magics_manager.magics["line"]
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
