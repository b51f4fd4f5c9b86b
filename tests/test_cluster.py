"""Batches on a Dask cluster: a real ``LocalCluster`` of two worker processes, each loading the
default model once; results, order, seeds, progress, errors, interrupts and a killed worker, as
for a run in the kernel. Skipped where Dask is not installed (``pip install
'jupyter-localllm[dask]'``)."""

from __future__ import annotations

import os
import re
import signal
import threading

import pandas as pd
import pytest
from conftest import SENTIMENT, TEXTS, chat, place, run_python, wait_for

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted, ClusterError, ModelNotFoundError
from jupyter_localllm.session import cluster_worker
from jupyter_localllm.session.manager import get_manager

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is {n} plus {n}?",
    "Name a colour that starts with the letter {c}.",
    "Write one short sentence about the number {n}.",
]


def questions(model, n: int) -> list[str]:
    """``n`` different short chat prompts."""
    letters = "ABCDEFGHIJKLMNOPRSTW"
    return [
        chat(model, QUESTIONS[i % 3].format(n=i, c=letters[i % len(letters)])) for i in range(n)
    ]


def test_without_dask_the_package_works_and_cluster_says_what_to_install():
    done = run_python(
        """
        import sys
        sys.modules["dask"] = sys.modules["distributed"] = None  # as if not installed
        import pandas as pd
        import jupyter_localllm as ll
        from jupyter_localllm.errors import ClusterError
        ctx = ll.context_create(ll.model_load("default"))
        assert hasattr(pd.DataFrame, "llm")
        try:
            ll.generate_parallel(ctx, ["Hi"], max_tokens=2, cluster="tcp://127.0.0.1:1")
        except ClusterError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'jupyter-localllm[dask]'" in done.stdout


@pytest.fixture(scope="module")
def dd():
    return pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def cctx(model):
    c = ll.context_create(model, n_seq_max=4)
    yield c
    c.close()


def loads(client) -> dict[str, int]:
    """Models each worker process has loaded so far."""
    return {w: s["loads"] for w, s in client.run(cluster_worker.worker_stats).items()}


def test_generate_parallel_on_the_cluster_gives_the_kernels_rows(model, cctx, client):
    prompts = questions(model, 24)
    here = ll.generate_parallel(cctx, prompts, max_tokens=12, progress=False, cache=False)
    events = []
    there = ll.generate_parallel(
        cctx, prompts, max_tokens=12, progress=events.append, cache=False, cluster=client
    )
    assert [r.row for r in there] == list(range(24))
    assert all(r.ok and r.n_tokens > 0 for r in there)
    same = sum(a == b for a, b in zip(here, there, strict=True))
    assert same >= 0.9 * len(prompts), (same, list(zip(here, there, strict=True)))
    assert (events[-1].done, events[-1].total, events[-1].errors) == (24, 24, 0)
    assert len(events) >= 3  # at least one per partition (3 of 8 rows)
    if same == len(prompts):  # hashed in the kernel, over the whole call
        assert there.hashes == here.hashes


def test_each_worker_loads_the_model_once_across_calls(model, cctx, client):
    prompts = questions(model, 16)
    for _ in range(2):
        ll.generate_parallel(cctx, prompts, max_tokens=4, progress=False, cluster=client)
    ll.classify(cctx, TEXTS * 4, SENTIMENT, progress=False, cluster=client)
    counts = loads(client)
    assert len(counts) == 2
    assert set(counts.values()) == {1}, counts


def test_classify_and_extract_on_the_cluster(model, cctx, client):
    texts = TEXTS * 3
    here = ll.classify(cctx, texts, SENTIMENT, progress=False)
    there = ll.classify(cctx, texts, SENTIMENT, progress=False, cluster=client)
    assert there["label"].tolist() == here["label"].tolist()
    assert (there[SENTIMENT] - here[SENTIMENT]).abs().max().max() < 0.02
    assert there.attrs["hashes"]["input_sha256"] == here.attrs["hashes"]["input_sha256"]

    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": SENTIMENT}},
        "required": ["sentiment"],
    }
    got = ll.extract(cctx, texts, schema, max_tokens=24, progress=False, cluster=client)
    assert len(got) == len(texts)
    assert all(isinstance(v, dict) and v["sentiment"] in SENTIMENT for v in got), got


def test_explore_runs_each_model_on_the_cluster(client):
    truth = ["positive", "negative"] * 2
    kwargs = dict(labels=SENTIMENT, truth=truth, n_seq_max=2, progress=False)
    here = ll.explore({"smol": "default"}, TEXTS, **kwargs)
    there = ll.explore({"smol": "default"}, TEXTS, cluster=client, **kwargs)
    pd.testing.assert_frame_equal(there.annotations, here.annotations)


def test_the_dask_dataframe_accessor_matches_the_pandas_one(model, client, dd):
    import jupyter_localllm.notebook.dask_accessor  # noqa: F401  (registers ddf.llm)

    get_manager().load("default")
    frame = pd.DataFrame(
        {"text": [f"the number {i}" for i in range(12)], "tone": ["calm", "angry"] * 6},
        index=[f"r{i}" for i in range(12)],
    )
    template = "Write a {tone} sentence about {text}."
    here = frame.llm.generate(template, max_tokens=8, n_seq_max=4, progress=False, cache=False)
    lazy = dd.from_pandas(frame, npartitions=3, sort=False).llm.generate(
        template, max_tokens=8, n_seq_max=4, cache=False
    )
    assert isinstance(lazy, dd.Series)
    there = client.compute(lazy).result()
    assert there.index.tolist() == frame.index.tolist()
    same = sum(a == b for a, b in zip(here, there, strict=True))
    assert same >= 0.9 * len(frame), list(zip(here, there, strict=True))

    series = dd.from_pandas(pd.Series(TEXTS, name="review"), npartitions=2)
    labels = client.compute(series.llm.classify(SENTIMENT, n_seq_max=2)).result()
    expected = pd.Series(TEXTS, name="review").llm.classify(SENTIMENT, progress=False)
    assert labels.tolist() == expected.tolist()


def test_accessor_magic_and_background_job_run_on_the_cluster(model, cctx, client):
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    get_manager().load("default")
    frame = pd.DataFrame({"text": TEXTS})
    labels = frame.llm.classify("{text}", SENTIMENT, progress=False, cluster=client)
    assert labels.tolist() == frame.llm.classify("{text}", SENTIMENT, progress=False).tolist()

    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "jupyter_localllm")
    ip.user_ns["reviews"] = frame
    address = client.scheduler.address  # a scheduler address string, as a notebook gives it
    ip.run_line_magic("llm_batch", f"reviews.text --out answer --max-tokens 4 --cluster {address}")
    assert frame["answer"].map(lambda r: r.ok).all()

    job = ll.generate_parallel(
        cctx, questions(model, 8), max_tokens=4, progress=False, background=True, cluster=client
    )
    results = job.result(timeout=300)
    assert job.status == "finished" and [r.row for r in results] == list(range(8))
    assert sorted(job.partial()) == list(range(8))


def test_a_cluster_argument_that_is_neither_client_nor_address_is_refused(cctx, client):
    with pytest.raises(ClusterError, match=r"cluster must be a distributed\.Client or a scheduler"):
        ll.generate_parallel(cctx, ["Hi"], max_tokens=2, cluster=8786)


def test_a_model_missing_on_the_workers_names_the_worker_and_the_path(model, client, tmp_path):
    path = place(model.path, tmp_path / "elsewhere" / "moved.gguf")
    moved = ll.model_load(str(path))
    ctx = ll.context_create(moved, n_seq_max=2)
    path.unlink()  # the kernel keeps its copy; the workers find no file
    try:
        where = re.escape(str(path))
        message = rf"^Worker tcp://\S+ cannot find the model file {where}; put the model at"
        with pytest.raises(ModelNotFoundError, match=message):
            ll.generate_parallel(ctx, questions(model, 4), max_tokens=4, cluster=client)
    finally:
        ctx.close()
        moved.close()


def test_ctrl_c_and_cancel_keep_the_finished_rows(model, cctx, client):
    prompts = questions(model, 48)

    def ctrl_c(result):  # the first partition is back: the user presses Ctrl-C
        raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as info:
        ll.generate_parallel(
            cctx, prompts, max_tokens=32, progress=False, on_result=ctrl_c, cluster=client
        )
    rows = info.value.results
    assert [r.row for r in rows] == list(range(48))
    finished = [r for r in rows if r.finish_reason != "cancelled"]
    assert 1 <= len(finished) < 48

    cancel = threading.Event()
    job = ll.generate_parallel(
        cctx,
        prompts,
        max_tokens=32,
        progress=False,
        cancel=cancel,
        on_result=lambda r: cancel.set(),
        background=True,
        cluster=client,
    )
    with pytest.raises(BatchInterrupted) as info:
        job.result(timeout=300)
    assert job.status == "cancelled"
    kept = [r for r in info.value.results if r.finish_reason != "cancelled"]
    assert 1 <= len(kept) < 48 and len(job.partial()) == len(kept)
    # the cancelled tasks stop on the workers: the cluster is free for the next call
    wait_for(lambda: not any(client.processing().values()), timeout=120)


def test_a_worker_killed_mid_run_loses_no_row(model, cctx, client):
    prompts = questions(model, 48)
    pids = client.run(os.getpid)
    killed: list[str] = []

    def kill_a_busy_worker(event):
        if killed or event.done == 0:
            return
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
        if busy:  # partitions are running: kill one of their workers outright
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    # the workers share the test session's result-cache folder: rows store as they finish
    results = ll.generate_parallel(
        cctx, prompts, max_tokens=16, progress=kill_a_busy_worker, cache=True, cluster=client
    )
    assert killed
    assert [r.row for r in results] == list(range(48))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    again = ll.generate_parallel(
        cctx, prompts, max_tokens=16, progress=False, cache=True, cluster=client
    )
    assert list(again) == list(results)  # from the workers' cache
