"""The lifecycle of a backend's native handles, in pure Python.

A :class:`NativeHandle` owns one native object and frees it once: by ``close()``, at the end
of a ``with`` block, or when the Python object is garbage-collected (a ``weakref.finalize``
that keeps the parent alive until its children are freed; nothing is freed at interpreter
exit, where the OS takes the memory back). A :class:`ModelHandle` is a parent: it closes its
children (contexts) before itself and refuses to close while one of its users (a generation
context) runs. The backend (:mod:`.llama`) gives each native object a subclass; another backend
can reuse these.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InvalidParameterError
from .backend import ModelUser

__all__ = ["ModelHandle", "NativeHandle"]


def _release(free: Callable[[Any], None], handle: Any, *keep: Any) -> None:
    """Free ``handle``; ``keep`` (the parent model) only stays alive until then."""
    free(handle)


class NativeHandle:
    """One native handle, freed once by :meth:`close` (also at the end of a ``with`` block)
    or when the object is garbage-collected."""

    _handle: Any = None
    _finalizer: weakref.finalize | None = None
    _closed_message = "This object was closed; create a new one."

    def _own(self, handle: Any, free: Callable[[Any], None], *keep: Any) -> None:
        """Hold ``handle``, freed by ``free(handle)`` exactly once; ``keep`` (a parent)
        outlives it."""
        self._handle = handle
        self._finalizer = weakref.finalize(self, _release, free, handle, *keep)
        # At exit the OS frees everything, and a daemon job thread may still be decoding.
        self._finalizer.atexit = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` freed the native object."""
        return self._handle is None

    def close(self) -> None:
        """Free the native object (safe to call twice)."""
        self._handle = None
        if self._finalizer is not None:
            self._finalizer()  # a no-op once it has run

    def _require_open(self) -> Any:
        if self._handle is None:
            raise InvalidParameterError(self._closed_message)
        return self._handle

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModelHandle(NativeHandle):
    """A model's handle: the parent of its contexts (closed before it) and used by generation
    contexts, whose ``lock`` is held while they run; the model does not close under them."""

    name: str

    def _own(self, handle: Any, free: Callable[[Any], None], *keep: Any) -> None:
        super()._own(handle, free, *keep)
        self._lock = threading.RLock()  # held while children are made and while closing
        self._contexts: weakref.WeakSet[NativeHandle] = weakref.WeakSet()
        self._users: weakref.WeakSet[ModelUser] = weakref.WeakSet()

    def adopt(self, child: NativeHandle) -> None:
        """Close ``child`` (a context made on this model) when the model closes."""
        self._contexts.add(child)

    def add_user(self, user: ModelUser) -> None:
        """Register a generation context whose ``lock`` is held while it runs: the model
        will not close under it."""
        self._users.add(user)

    def close(self) -> None:
        """Free the model and its contexts (safe to call twice). Raises
        :class:`InvalidParameterError` while one of its generation contexts is running."""
        with self._lock:
            if self._handle is None:
                return
            with self._users_idle():
                for child in list(self._contexts):  # children before their parent
                    child.close()
                super().close()

    @contextlib.contextmanager
    def _users_idle(self) -> Iterator[None]:
        """Hold the lock of every user of this model, or raise if one is running."""
        held = []
        try:
            for user in list(self._users):
                if not user.lock.acquire(blocking=False):
                    raise InvalidParameterError(
                        f"Model {self.name!r} is in use by a running generation (a background "
                        "job or a call in another thread); cancel the job (job.cancel(); "
                        "job.wait()) or let it finish, then close the model."
                    )
                held.append(user.lock)
            yield
        finally:
            for lock in held:
                lock.release()
