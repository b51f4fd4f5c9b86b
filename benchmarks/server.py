"""llama-server as a benchmark peer: start it on a model, run prompts through concurrent clients.

    .venv/bin/python benchmarks/server.py [--model REF] [--parallel 2] [--n-predict 8]

The binary is ``.bench/llama-server``, built by ``make bench-server`` from the llama.cpp that the
installed llama-cpp-python vendors (so both engines run the same llama.cpp). Run as a script it is
a smoke check: one greedy ``/completion`` request, its answer and timings printed.

Weight repacking (llama.cpp's "extra buffer types") is off unless ``repack=True``: the AMX
one crashes where a VM does not enable AMX. ``bench_parallel`` passes the choice our engine made
when it loaded the model (``model_load`` repacks except on AMX CPUs), so both compare like with
like.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER = Path(__file__).resolve().parents[1] / ".bench" / "llama-server"


class ServerError(RuntimeError):
    """llama-server did not start, died, or answered a request with an error."""


@dataclass
class ServerRun:
    """What :func:`run_prompts` got back: one text per prompt, in input order."""

    texts: list[str]
    """The completions, in the order of the prompts."""
    wall: float
    """Seconds from the first request sent to the last answer received."""
    prompt_tokens: int
    """Prompt tokens the server processed (after its prompt cache), summed over requests."""
    generated_tokens: int
    """Tokens generated, summed over requests."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def server_command(
    binary: Path,
    model_path: str | os.PathLike[str],
    port: int,
    n_parallel: int,
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    flash_attn: str | None = None,
    kv_unified: bool | None = None,
    repack: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The llama-server command line for :func:`running_server` (arguments as there)."""
    cmd = [str(binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-np", str(n_parallel), "--no-webui"]
    if n_ctx is not None:
        cmd += ["-c", str(n_ctx)]
    if n_threads is not None:
        cmd += ["-t", str(n_threads), "-tb", str(n_threads)]
    if flash_attn is not None:
        cmd += ["-fa", flash_attn]
    if kv_unified is not None:
        cmd += ["--kv-unified" if kv_unified else "--no-kv-unified"]
    if not repack:
        cmd += ["--no-repack"]
    return cmd + list(extra_args)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(
                f"llama-server exited with {proc.returncode} while starting:\n{_tail(log)}"
            )
        try:
            if _get(f"{url}/health", timeout=2) == 200:
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise ServerError(f"llama-server was not ready after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.2)


@contextmanager
def running_server(
    model_path: str | os.PathLike[str],
    n_parallel: int,
    *,
    binary: Path = SERVER,
    startup_timeout: float = 120.0,
    **options: Any,
) -> Iterator[str]:
    """Start llama-server on ``model_path`` with ``n_parallel`` slots; yield its base URL.

    ``options`` are those of :func:`server_command`: ``n_ctx`` is the whole context
    (llama-server splits it across slots unless ``kv_unified``), ``n_threads``, ``flash_attn``
    (``"on"``, ``"off"`` or ``"auto"``), ``kv_unified``, ``repack``, ``extra_args``; ``None``
    keeps the server's default. Continuous batching and the prompt cache are on (the server's
    defaults). Waits until ``/health`` answers 200; the server is stopped when the block ends.
    When it fails to start, the :class:`ServerError` shows the end of its log.
    """
    if not binary.is_file():
        raise ServerError(f"{binary} is missing; build it with `make bench-server`.")
    port = free_port()
    cmd = server_command(binary, model_path, port, n_parallel, **options)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, url, log, startup_timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def complete(
    url: str, prompt: str, *, n_predict: int, timeout: float = 600.0, **options: Any
) -> dict[str, Any]:
    """One greedy ``/completion`` request (prompt cache on); returns the server's JSON answer.

    ``options`` are added to the request body (e.g. ``seed``, ``stop``)."""
    body = {
        "prompt": prompt,
        "n_predict": n_predict,
        "temperature": 0.0,
        "top_k": 1,
        "repeat_penalty": 1.0,
        "cache_prompt": True,
        **options,
    }
    request = urllib.request.Request(
        f"{url}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ServerError(f"/completion answered {exc.code}: {detail}") from exc


def run_prompts(
    url: str, prompts: Sequence[str], *, n_clients: int, n_predict: int, **options: Any
) -> ServerRun:
    """Send every prompt to ``/completion`` from ``n_clients`` concurrent clients (greedy,
    ``n_predict`` tokens, prompt cache on); texts come back in input order."""

    def one(prompt: str) -> dict[str, Any]:
        return complete(url, prompt, n_predict=n_predict, **options)

    with ThreadPoolExecutor(max_workers=n_clients) as pool:
        t0 = time.perf_counter()
        answers = list(pool.map(one, prompts))
        wall = time.perf_counter() - t0
    return ServerRun(
        texts=[a["content"] for a in answers],
        wall=wall,
        prompt_tokens=sum(int(a["timings"]["prompt_n"]) for a in answers),
        generated_tokens=sum(int(a["timings"]["predicted_n"]) for a in answers),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a model reference (default: 'default')")
    ap.add_argument("--parallel", type=int, default=2, help="server slots (-np)")
    ap.add_argument("--n-predict", type=int, default=8)
    ap.add_argument("--repack", action="store_true", help="allow weight repacking")
    ap.add_argument("--prompt", default="The capital of France is")
    args = ap.parse_args(argv)
    from jupyter_localllm.models import resolve_model

    model = resolve_model(args.model)
    started = time.perf_counter()
    with running_server(model, args.parallel, repack=args.repack) as url:
        ready = time.perf_counter() - started
        run = run_prompts(url, [args.prompt], n_clients=1, n_predict=args.n_predict)
    print(f"{model.name}: ready in {ready:.1f} s at {url}")
    print(f"{args.prompt!r} -> {run.texts[0]!r}")
    print(f"{run.generated_tokens} tokens in {run.wall:.2f} s")
    return 0 if run.generated_tokens > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
