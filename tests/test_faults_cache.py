"""The fault matrix (issue 12), result cache: a corrupt, unwritable or full cache, or foreign
values in it, give one warning and every row (never an unpickled object); what it stores is
JSON that rebuilds the same results."""

# ruff: noqa: E501 (the tables keep one case per line)
from __future__ import annotations

import json
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import pytest
from conftest import cases, names

import jupyter_localllm as ll
from jupyter_localllm.session.cache import ResultCacheWarning

PROMPTS = ["Name a bird.", "Name a tree.", "Name a fish."]


def _run_cached(ctx: Any) -> ll.Results:
    return ll.generate_parallel(ctx, PROMPTS, max_tokens=4, progress=False, cache=True)


def _one_cache_warning(record: list) -> str:
    found = [w for w in record if issubclass(w.category, ResultCacheWarning)]
    assert len(found) == 1, [str(w.message) for w in found]
    return str(found[0].message)


def _corrupt_db(results: Path) -> None:
    results.mkdir()
    (results / "cache.db").write_bytes(b"this is not a database" * 100)


def _results_is_a_file(results: Path) -> None:
    results.write_text("not a folder")


def _cache_set_fails_after(n: int, message: str) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        real, calls = diskcache.Cache.set, []

        def set_(self, *args, **kwargs):
            calls.append(1)
            if len(calls) > n:
                raise sqlite3.OperationalError(message)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(diskcache.Cache, "set", set_)

    return patch


CACHE_FAULTS = [
    ("corrupt-database", _corrupt_db, None, "DatabaseError"),
    ("folder-is-a-file", _results_is_a_file, None, "unable to open database file"),
    ("read-only-database", None, _cache_set_fails_after(0, "attempt to write a readonly database"), "readonly"),
    ("disk-fills-mid-run", None, _cache_set_fails_after(1, "database or disk is full"), "disk is full"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("on_disk", "patch", "phrase"), cases(CACHE_FAULTS), ids=names(CACHE_FAULTS)
)
def test_cache_faults_warn_once_and_keep_every_row(
    ctx2, cache, monkeypatch, on_disk, patch, phrase
):
    want = list(ll.generate_parallel(ctx2, PROMPTS, max_tokens=4, progress=False, cache=False))
    if on_disk is not None:
        on_disk(cache / "results")
    if patch is not None:
        patch(monkeypatch)
    with pytest.warns(ResultCacheWarning) as record:
        got = _run_cached(ctx2)
    assert phrase in _one_cache_warning(record)
    assert list(got) == want and all(r.ok for r in got)


def test_cache_stores_json_and_rebuilds_results(ctx2, cache):
    first = _run_cached(ctx2)
    ran = ctx2.last_run
    second = _run_cached(ctx2)
    assert ctx2.last_run is ran  # every row came from the cache
    assert list(second) == list(first)
    for a, b in zip(first, second, strict=True):
        assert (a.finish_reason, a.n_tokens, a.n_prompt_tokens) == (
            b.finish_reason,
            b.n_tokens,
            b.n_prompt_tokens,
        )
    with diskcache.Cache(str(cache / "results")) as raw:
        values = [raw[k] for k in raw]
    assert len(values) == 3 and all(isinstance(json.loads(v)["text"], str) for v in values)


class _Planted:
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["pickle", "not-json"])
def test_cache_never_unpickles_and_skips_foreign_values(ctx2, cache, tmp_path, payload):
    first = _run_cached(ctx2)
    planted = _Planted()
    planted.marker = tmp_path / "pwned"
    with diskcache.Cache(str(cache / "results")) as raw:  # the default disk pickles objects
        for key in list(raw):
            raw[key] = planted if payload == "pickle" else "{not json"
    with pytest.warns(ResultCacheWarning) as record:
        again = _run_cached(ctx2)
    _one_cache_warning(record)
    assert not planted.marker.exists()
    assert list(again) == list(first)
    assert pickle.dumps(planted)  # (the payload itself is a working pickle)
