"""Load an unknown model file once in a short-lived subprocess before the kernel loads it.

llama.cpp trusts a GGUF file: a vocabulary with a duplicate token, a tokenizer type that does
not match the tokens, or a head count that only breaks the first graph end in ``GGML_ASSERT``
or an uncaught C++ exception, which abort the process. :mod:`~jupyter_localllm.models.limits`
checks the known cases in Python with a clear message; this probe is the defence for the rest:
``python -m jupyter_localllm.engine.probe FILE`` loads the file, creates a small context and
tokenizes a text, on the CPU. When that child dies of a signal, the kernel refuses the file
with :class:`~jupyter_localllm.errors.InvalidModelFileError` instead of dying too.

A file is probed once: the verdict is kept in the model cache folder, keyed by the file's
path, size and modification time and the llama-cpp-python version. ``model_load`` trusts the
packaged default model and never probes it. A probe costs about half a second for a small
model (mostly importing llama_cpp); ``LOCALLLM_PROBE=0`` turns probing off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import InvalidModelFileError

__all__ = ["PROBE_TIMEOUT_S", "probe_model_file"]

PROBE_TIMEOUT_S = 300.0  # a huge file on a slow disk: past this the probe stands down
_CACHE_NAME = ".probed-models.json"
_CACHE_ENTRIES = 256
_verdicts: dict[str, str] = {}  # this process's verdicts ("" = loads), also kept on disk


def _key(path: Path) -> str:
    import importlib.metadata

    st = path.stat()
    version = importlib.metadata.version("llama-cpp-python")
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{version}"


def _load_verdicts(cache_dir: Path | None) -> dict[str, str]:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / _CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _save_verdict(key: str, verdict: str, cache_dir: Path | None) -> None:
    _verdicts[key] = verdict
    if cache_dir is None:
        return
    data = _load_verdicts(cache_dir)
    data[key] = verdict
    data = dict(list(data.items())[-_CACHE_ENTRIES:])
    target = cache_dir / _CACHE_NAME
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, target)  # atomic: a second kernel never reads half a file
    except OSError:
        pass  # a read-only cache only costs a probe next time


def probe_model_file(path: str | os.PathLike[str], cache_dir: Path | None = None) -> None:
    """Raise :class:`InvalidModelFileError` when loading ``path`` kills a subprocess (see the
    module docstring); return when it loads, fails cleanly (the real load reports that), or
    when it was probed before. Verdicts are kept in this process and, given ``cache_dir`` (the
    model cache folder), on disk for the next kernel."""
    p = Path(path)
    if os.environ.get("LOCALLLM_PROBE", "1") == "0":
        return
    key = _key(p)
    verdict = _verdicts.get(key)
    if verdict is None:
        verdict = _load_verdicts(cache_dir).get(key)
    if verdict is None:
        verdict = _run_probe(p)
        if verdict is None:
            return  # inconclusive (timed out, or the child failed in Python): not remembered
        _save_verdict(key, verdict, cache_dir)
    if verdict:
        raise InvalidModelFileError(verdict)


def _run_probe(path: Path) -> str | None:
    """'' when the child loaded the file or llama.cpp refused it cleanly, the error message
    when it died of a signal, None when it ran past :data:`PROBE_TIMEOUT_S` or failed in
    Python (a context too big for the memory left, say)."""
    env = dict(os.environ, GGML_NO_BACKTRACE="1", LOCALLLM_PROBE="0", OMP_NUM_THREADS="1")
    # The child imports this package from where the parent did, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode >= 0:
        return "" if done.returncode == 0 else None
    try:
        name = signal.Signals(-done.returncode).name
    except ValueError:
        name = f"signal {-done.returncode}"
    return (
        f"llama.cpp crashes ({name}) loading {path}{_reason(done.stderr)}; the file is corrupt, "
        "edited or made for another llama.cpp version, so it is not loaded here: re-download "
        "it or try a newer llama-cpp-python."
    )


def _reason(stderr: str) -> str:
    """llama.cpp's last words (the failed assertion or C++ exception), when it left any."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "GGML_ASSERT" in line or "what():" in line or "error" in line.lower():
            where = line.rsplit("/", 1)[-1] if "GGML_ASSERT" in line else line
            return f" ({where[:200]})"
    return ""


def _main(path: str) -> None:
    """The child: load ``path`` on the CPU, create a small context, tokenize a text."""
    from .factory import open_model

    try:
        model = open_model(path, probe=False, n_gpu_layers=0)
    except Exception:
        return  # a clean refusal: the real load reports it
    try:
        model.tokenize("Hello, world!\n", add_special=True, parse_special=True)
        context = model.new_context(n_ctx=64, n_seq_max=1, n_batch=8, n_threads=1, kv_unified=True)
        context.close()
    finally:
        model.close()


if __name__ == "__main__":
    _main(sys.argv[1])
