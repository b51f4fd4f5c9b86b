"""The backend: the only module that touches llama_cpp's ctypes API.

One small class per native handle — :class:`Model`, :class:`Context`, :class:`Batch`,
:class:`Sampler` — each freed once, children before parents, by the pure-Python lifecycle of
:mod:`.handles` (a model refuses to close while one of its generation contexts runs).
:class:`Batch` adds the native struct to :mod:`.batch`'s numpy arrays. Nothing above this module
sees a ctypes object. Every input that could make llama.cpp abort the process is checked in
Python first (:mod:`.guards`). :class:`Model` implements
:class:`~jupyter_localllm.engine.backend.BackendModel`: it creates its contexts, batches and
samplers, so the runner never names these classes, and only
:mod:`~jupyter_localllm.engine.factory` does. Of the package this module imports only the
backend contract and its pure-Python helpers (:mod:`.backend`, :mod:`.handles`, :mod:`.batch`,
:mod:`.guards`), the errors, the machine probes and the Ctrl-C guard (:mod:`.interrupts`): what
a model can write under a grammar, how much memory a context needs and whether a file is safe
to load are decided above it, through the protocol.
"""

from __future__ import annotations

import _thread
import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import llama_cpp as _ll
import numpy as np

from .. import hardware
from ..errors import DecodeError, GrammarError, InvalidParameterError, ModelLoadError
from .backend import SamplerSettings
from .batch import TokenBatch
from .guards import (
    batch_size_error,
    check_context_sizes,
    check_seq,
    check_seq_copy,
    check_tokens,
    decode_error,
    is_repack_buffer,
)
from .handles import ModelHandle, NativeHandle
from .interrupts import held_call, interrupt_pending

__all__ = [
    "Batch",
    "Context",
    "Model",
    "Sampler",
    "json_schema_to_gbnf",
    "set_verbosity",
    "supports_gpu_offload",
]

# Some llama-cpp-python releases bind llama_sampler_init_penalties with a leading n_vocab.
_PENALTIES_TAKE_N_VOCAB = len(getattr(_ll.llama_sampler_init_penalties, "argtypes", ()) or ()) == 5

# The pooling types of an embedding context (backend.POOLING_TYPES) as llama.cpp's enum.
_POOLING = {
    "mean": _ll.LLAMA_POOLING_TYPE_MEAN,
    "cls": _ll.LLAMA_POOLING_TYPE_CLS,
    "last": _ll.LLAMA_POOLING_TYPE_LAST,
}

_backend_lock = threading.Lock()
_backend_ready = False
_verbosity = 0
_load_log = threading.local()  # .lines: llama.cpp's log lines of the load running on a thread

# ggml's tiled K-quant matmul (Q4_K, Q6_K, IQ* weights) takes decodes of 8 rows or more and
# leaves smaller ones to per-row dot products, which round differently: a row's logits would
# depend on how many rows share its decode (measured on the 0.5B Q4_K_M model: logits moved
# by up to 0.29 once 8 rows shared a step). ggml reads the switch once per process, at its
# first decode, so it is set here, before any: off unless the user set it (see README,
# "Reproducibility").
os.environ.setdefault("GGML_CPU_TILED_MM", "0")


@_ll.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: Any) -> None:
    # GGML log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
    # Verbosity 0 keeps only errors, 1 adds warnings, 2 adds info, 3 everything.
    try:
        lines = getattr(_load_log, "lines", None)
        if lines is not None and text:
            lines.append(bytes(text))
        threshold = {0: 4, 1: 3, 2: 2}.get(_verbosity, 0)
        if level != 5 and level >= threshold and text:
            os.write(2, text)
    except KeyboardInterrupt:
        # ctypes prints and drops an exception raised in a callback: Ctrl-C would be lost.
        # Raise it again once llama.cpp's call has returned to Python.
        _thread.interrupt_main()
    except OSError:
        pass  # stderr closed: the log is lost, not the call


@_ll.llama_progress_callback
def _load_progress(progress: float, user_data: Any) -> bool:
    # Returning False makes llama.cpp stop loading and free what it had read.
    try:
        return not interrupt_pending()
    except BaseException:
        return False


def set_verbosity(level: int) -> None:
    """How much of llama.cpp's own log reaches stderr: 0 errors only (default), 1 warnings,
    2 info, 3 debug."""
    global _verbosity
    _verbosity = int(level)


def _ensure_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            _ll.llama_log_set(_log_callback, ctypes.c_void_p(0))
            _ll.llama_backend_init()
            _backend_ready = True


def supports_gpu_offload() -> bool:
    """True when this llama.cpp build can put layers on a GPU."""
    _ensure_backend()
    return bool(_ll.llama_supports_gpu_offload())


class Model(ModelHandle):
    """A GGUF model loaded by llama.cpp (weights memory-mapped by default).

    Use :func:`jupyter_localllm.model_load` rather than this class directly: it resolves
    references, validates the file before llama.cpp sees it and probes it in a subprocess
    (:func:`~jupyter_localllm.engine.factory.open_model`). Ctrl-C during the load cancels
    it and raises KeyboardInterrupt.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_gpu_layers: int | str = "auto",
        use_mmap: bool = True,
        use_mlock: bool = False,
        use_extra_bufts: bool = False,
    ):
        _ensure_backend()
        self.path = Path(path)
        params = _ll.llama_model_default_params()
        params.n_gpu_layers = _resolve_gpu_layers(n_gpu_layers)
        params.load_mode = {
            (True, True): _ll.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (False, True): _ll.LLAMA_LOAD_MODE_MLOCK,
            (True, False): _ll.LLAMA_LOAD_MODE_MMAP,
            (False, False): _ll.LLAMA_LOAD_MODE_NONE,
        }[(bool(use_mmap), bool(use_mlock))]
        # Extra buffer types repack weights (AMX, ARM); on AMX CPUs that path crashes on the
        # first multi-token decode (llama.cpp #20824), so it is opt-in.
        params.use_extra_bufts = bool(use_extra_bufts)
        self.use_extra_bufts = bool(use_extra_bufts)
        self.n_gpu_layers = params.n_gpu_layers
        params.progress_callback = _load_progress
        _load_log.lines = []
        try:
            handle = held_call(
                lambda: _ll.llama_model_load_from_file(str(self.path).encode(), params),
                _ll.llama_model_free,
            )
        finally:
            log, _load_log.lines = _load_log.lines, None
        self.repacked = any(is_repack_buffer(line) for line in log)
        """Whether llama.cpp repacked some weights into an extra buffer type (it logs each
        buffer it made): repacked rows run through a GEMM kernel in groups of 4 and a GEMV
        kernel for the rest, so a row's logits depend on its batch's size."""
        if not handle:
            raise ModelLoadError(
                f"llama.cpp could not load {self.path}; the file may use an architecture or "
                "quantisation this llama-cpp-python build does not support (upgrade it) — "
                "set_verbosity(2) shows llama.cpp's reason."
            )
        self._own(handle, _ll.llama_model_free)  # also its lock, contexts and users
        self._vocab = _ll.llama_model_get_vocab(handle)
        self.n_vocab = int(_ll.llama_vocab_n_tokens(self._vocab))
        self.size_bytes = self.path.stat().st_size
        self.metadata = self._read_metadata()
        self.name = self.metadata.get("general.name") or self.path.stem
        self.chat_template = self._read_chat_template()
        self.bos_token = int(_ll.llama_vocab_bos(self._vocab))
        self.eos_token = int(_ll.llama_vocab_eos(self._vocab))
        self.add_bos = bool(_ll.llama_vocab_get_add_bos(self._vocab))
        self.n_embd = int(_ll.llama_model_n_embd_out(handle))
        self._piece_cache: dict[tuple[int, bool], bytes] = {}

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size_bytes / 2**20:.0f} MiB"
        return f"<Model {self.name!r} ({state}) from {self.path}>"

    @property
    def _closed_message(self) -> str:
        return f"Model {self.name!r} was closed; load it again with model_load()."

    # -- metadata --------------------------------------------------------------------------
    def _read_metadata(self) -> dict[str, str]:
        buf = ctypes.create_string_buffer(1 << 16)
        out: dict[str, str] = {}
        for i in range(_ll.llama_model_meta_count(self._handle)):
            n = _ll.llama_model_meta_key_by_index(self._handle, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            n = _ll.llama_model_meta_val_str_by_index(self._handle, i, buf, len(buf))
            if n < 0:
                continue
            out[key] = buf.value.decode("utf-8", "replace")
        return out

    def _read_chat_template(self) -> str | None:
        # The metadata buffer truncates long templates; ask llama.cpp for the full string.
        raw = _ll.llama_model_chat_template(self._handle, None)
        return raw.decode("utf-8", "replace") if raw else None

    def require_open(self) -> None:
        """Raise :class:`InvalidParameterError` once the model was closed."""
        self._require_open()

    @property
    def offloads_to_gpu(self) -> bool:
        """True when its contexts' KV caches go to a GPU (where a failed allocation is a
        NULL context, not a killed process)."""
        return self.n_gpu_layers != 0 and supports_gpu_offload()

    # -- factories (the backend protocol) --------------------------------------------------
    def new_context(
        self,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        n_threads: int | None,
        kv_unified: bool,
        flash_attn: bool = False,
    ) -> Context:
        """A :class:`Context` on this model (see its parameters)."""
        with self._lock:  # not while the model is being closed
            return Context(
                self,
                n_ctx=n_ctx,
                n_seq_max=n_seq_max,
                n_batch=n_batch,
                n_threads=n_threads,
                kv_unified=kv_unified,
                flash_attn=flash_attn,
            )

    def new_embedding_context(
        self, *, n_ctx: int, n_seq_max: int, n_batch: int, n_threads: int | None, pooling: str
    ) -> Context:
        """A :class:`Context` in embedding mode: a unified cache, pooled per sequence."""
        if pooling not in _POOLING:
            raise InvalidParameterError(
                f"pooling must be one of {', '.join(_POOLING)}, got {pooling!r}."
            )
        with self._lock:
            return Context(
                self,
                n_ctx=n_ctx,
                n_seq_max=n_seq_max,
                n_batch=n_batch,
                n_threads=n_threads,
                kv_unified=True,
                pooling=pooling,
            )

    def new_batch(self, capacity: int, n_seq_max: int) -> Batch:
        """An empty :class:`Batch` of ``capacity`` tokens for this model's vocabulary."""
        return Batch(capacity, n_seq_max, self.n_vocab)

    def new_sampler(self, params: SamplerSettings, seed: int) -> Sampler:
        """A :class:`Sampler` for ``params`` with random stream ``seed``."""
        return Sampler(self, params, seed)

    # -- grammars --------------------------------------------------------------------------
    def check_grammar(self, grammar: str) -> None:
        """Raise :class:`GrammarError` unless llama.cpp's parser accepts ``grammar`` (whether
        this model can finish it is :func:`~jupyter_localllm.engine.grammar.check_model_grammar`'s
        question, asked first)."""
        with self._lock:
            self._require_open()
            handle = _ll.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), b"root")
            if not handle:
                raise GrammarError(
                    "llama.cpp refused the grammar (its reason is on stderr); check its GBNF "
                    "syntax and that it defines a rule named root."
                )
            _ll.llama_sampler_free(handle)

    def grammar_pieces(self) -> list[tuple[int, bytes]]:
        """Every token but the end-of-generation ones (a grammar allows those only at its
        end), with its bytes as llama.cpp renders it (control tokens as text)."""
        with self._lock:
            self._require_open()
            vocab = self._vocab
            return [
                (token, _piece(vocab, token, special=True))
                for token in range(self.n_vocab)
                if not _ll.llama_vocab_is_eog(vocab, token)
            ]

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of ``text``. ``add_special`` adds BOS/EOS as the model asks;
        ``parse_special`` turns control-token text (``<|im_start|>``) into its token."""
        self._require_open()
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (_ll.llama_token * n_max)()
        n = _ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (_ll.llama_token * n_max)()
            n = _ll.llama_tokenize(
                self._vocab, data, len(data), buf, n_max, add_special, parse_special
            )
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (a piece of a UTF-8 character is possible).

        ``special=True`` renders control tokens as their text instead of nothing.
        """
        key = (token, special)
        piece = self._piece_cache.get(key)
        if piece is None:
            self._require_open()
            check_tokens((token,), self.n_vocab)
            piece = self._piece_cache[key] = _piece(self._vocab, token, special=special)
        return piece

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """The text of ``tokens``; ``special=True`` renders control tokens as text."""
        self._require_open()
        if not tokens:
            return ""
        check_tokens(tokens, self.n_vocab)
        arr = (_ll.llama_token * len(tokens))(*tokens)
        n_max = max(64, len(tokens) * 16)
        buf = ctypes.create_string_buffer(n_max)
        n = _ll.llama_detokenize(self._vocab, arr, len(tokens), buf, n_max, False, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = _ll.llama_detokenize(self._vocab, arr, len(tokens), buf, -n, False, special)
        return buf.raw[:n].decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ``<|im_end|>``, ...)."""
        return bool(_ll.llama_vocab_is_eog(self._vocab, token))

    def token_text(self, token: int) -> str:
        """The vocabulary entry of ``token`` (for display)."""
        self._require_open()
        check_tokens((token,), self.n_vocab)
        raw = _ll.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""


def _piece(vocab: Any, token: int, *, special: bool) -> bytes:
    """The bytes of ``token`` as llama.cpp renders it."""
    buf = ctypes.create_string_buffer(64)
    n = _ll.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = _ll.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


def _resolve_gpu_layers(n_gpu_layers: int | str) -> int:
    if n_gpu_layers == "auto":
        return -1 if supports_gpu_offload() else 0
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int):
        raise InvalidParameterError(
            f'n_gpu_layers must be "auto" or an integer (-1 = all layers), got {n_gpu_layers!r}.'
        )
    return n_gpu_layers


class Context(NativeHandle):
    """A llama.cpp context on a :class:`Model`: the KV cache of up to ``n_seq_max`` sequences.

    With ``kv_unified=True`` the sequences share all ``n_ctx`` cells, so a prefix copied to
    several sequences is stored once. With ``kv_unified=False`` (what
    :class:`~jupyter_localllm.engine.runner.GenerationContext` uses by default) each sequence
    has its own stream of ``n_ctx / n_seq_max`` cells (:attr:`n_ctx_seq`) and attention reads
    only a row's own cells; a prefix is copied into every stream. ``flash_attn=True`` turns
    llama.cpp's fused attention on: faster batched decoding, and it skips other rows' cells in
    a unified cache, but on CPUs its results depend on how a prompt was split into decodes
    (label log-probabilities moved by up to 0.45 nats when a prompt was decoded in two pieces
    instead of one), so it is off by default; off, a prompt decoded in pieces gives the same
    logits as decoded whole.

    Not thread-safe: one thread drives a context at a time (the session layer queues).
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_seq_max: int = 1,
        n_batch: int = 512,
        n_threads: int | None = None,
        kv_unified: bool = True,
        flash_attn: bool = False,
        pooling: str | None = None,
    ):
        model._require_open()
        if n_threads is None:
            n_threads = hardware.physical_cores()  # the one thread policy
        check_context_sizes(n_ctx, n_seq_max, n_batch, n_threads)
        params = _ll.llama_context_default_params()
        # Embedding mode (pooling given): every token is output and pooled per sequence, read
        # with seq_embedding(); n_ubatch = n_batch keeps a decode in one graph (a non-causal
        # model aborts on a split, a causal one would pool only the last piece).
        self.pooling = pooling
        self.n_embd = model.n_embd
        params.embeddings = pooling is not None
        if pooling is not None:
            params.pooling_type = _POOLING[pooling]
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = bool(kv_unified)
        # On or off, never AUTO (which picks by device): the same request gives the same
        # kernels, hence the same greedy text, on every machine with this build.
        params.flash_attn_type = (
            _ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else _ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        handle = held_call(lambda: _ll.llama_init_from_model(model._handle, params), _ll.llama_free)
        if not handle:
            raise ModelLoadError(
                f"llama.cpp could not create a context with n_ctx={n_ctx}, "
                f"n_seq_max={n_seq_max}; try a smaller n_ctx (memory) or n_seq_max."
            )
        self.model = model
        self._own(handle, _ll.llama_free, model)  # the model outlives its context
        self._memory = _ll.llama_get_memory(handle)
        # llama.cpp gives encoders (BERT and kin) no KV cache and no output head: a decode
        # writes no logits, so generating would read zeros (or a NULL pointer and abort).
        self._text_less = not self._memory and pooling is None
        self.n_ctx = int(_ll.llama_n_ctx(handle))
        self.n_batch = int(_ll.llama_n_batch(handle))
        self.n_seq_max = int(_ll.llama_n_seq_max(handle))
        self.kv_unified = bool(kv_unified)
        self.flash_attn = bool(flash_attn)
        # Tokens per sequence: the whole cache when unified, else its share.
        self.n_ctx_seq = int(_ll.llama_n_ctx_seq(handle))
        model.adopt(self)

    _closed_message = "This context was closed; create a new one."

    def close(self) -> None:
        """Free the context (safe to call twice)."""
        super().close()
        self._memory = None

    def __repr__(self) -> str:
        return (
            f"<Context n_ctx={self.n_ctx} n_seq_max={self.n_seq_max} n_batch={self.n_batch} "
            f"model={self.model.name!r}{' closed' if self.closed else ''}>"
        )

    # -- decoding --------------------------------------------------------------------------
    def decode(self, batch: Batch) -> None:
        """Run the model on ``batch``; map llama_decode's return code to an exception."""
        handle = self._require_open()
        n = batch.n_tokens
        if n == 0:
            return
        if not 0 < n <= self.n_batch or n > batch.capacity:  # llama.cpp would abort
            raise batch_size_error(n, self.n_batch, batch.capacity)
        if self._text_less:
            raise InvalidParameterError(
                f"{self.model.name} is an encoder (embedding) model: it computes vectors, not "
                "text, so it cannot generate, classify or score; use it with embed, search or "
                "similarity_join, and a chat model for the rest."
            )
        batch._struct.n_tokens = n  # once per decode, not per add()
        rc = _ll.llama_decode(handle, batch._struct)
        if rc:
            raise decode_error(rc, n, self.n_ctx)

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits of output row ``index`` of the last decode."""
        ptr = _ll.llama_get_logits_ith(self._require_open(), index)
        if not ptr:
            raise DecodeError(f"No logits for output {index} of the last batch.", -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def greedy_token(self, index: int) -> int:
        """The most likely next token at output row ``index`` of the last decode (greedy
        decoding without a sampler: an argmax over a view of the logits, no copy)."""
        ptr = _ll.llama_get_logits_ith(self._require_open(), index)
        if not ptr:
            raise DecodeError(f"No logits for output {index} of the last batch.", -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).argmax())

    def seq_embedding(self, seq: int) -> np.ndarray:
        """A copy of sequence ``seq``'s pooled vector of the last decode (embedding mode)."""
        handle = self._require_open()
        if self.pooling is None:
            raise InvalidParameterError(
                "This context does not compute embeddings; use model.new_embedding_context()."
            )
        if not 0 <= seq < self.n_seq_max:
            raise InvalidParameterError(
                f"Sequence id {seq} is out of range for n_seq_max={self.n_seq_max}."
            )
        ptr = _ll.llama_get_embeddings_seq(handle, seq)
        if not ptr:
            raise DecodeError(f"No pooled embedding for sequence {seq} in the last decode.", -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    # -- memory (KV cache) -----------------------------------------------------------------
    def memory_clear(self) -> None:
        """Empty the KV cache of every sequence."""
        self._require_open()
        _ll.llama_memory_clear(self._memory, True)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        """Remove positions [p0, p1) of sequence ``seq`` (-1 = all sequences / open end)."""
        self._require_open()
        check_seq(seq, self.n_seq_max)
        _ll.llama_memory_seq_rm(self._memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Give sequence ``dst`` positions [p0, p1) of ``src``: shared cells in a unified
        cache; between per-sequence streams only whole copies (p0 = p1 = -1) exist."""
        self._require_open()
        check_seq_copy(src, dst, p0, p1, n_seq_max=self.n_seq_max, unified=self.kv_unified)
        _ll.llama_memory_seq_cp(self._memory, src, dst, p0, p1)


class Batch(TokenBatch):
    """A reusable llama_batch whose arrays are a :class:`~.batch.TokenBatch`'s (one sequence
    id per token); :meth:`Context.decode` sets its token count."""

    def __init__(self, capacity: int, n_seq_max: int, n_vocab: int):
        super().__init__(capacity, n_seq_max, n_vocab)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        # seq_id is an array of pointers; each points at this token's slot in self.seq.
        seq_ptr_t = ctypes.POINTER(_ll.llama_seq_id)
        base = self.seq.ctypes.data
        self._seq_ptrs = (seq_ptr_t * capacity)(
            *(ctypes.cast(base + 4 * i, seq_ptr_t) for i in range(capacity))
        )
        self._struct = _ll.llama_batch()
        self._struct.token = self.token.ctypes.data_as(ctypes.POINTER(_ll.llama_token))
        self._struct.embd = None
        self._struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(_ll.llama_pos))
        self._struct.n_seq_id = self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self._struct.seq_id = self._seq_ptrs
        self._struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._struct.n_tokens = 0


class Sampler(NativeHandle):
    """A llama.cpp sampler chain built from :class:`SamplingParams` (one per request)."""

    def __init__(self, model: Model, params: SamplerSettings, seed: int | None = None):
        model._require_open()
        chain_params = _ll.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        # The grammar sampler holds the model's vocabulary: the model outlives it.
        self._own(_ll.llama_sampler_chain_init(chain_params), _ll.llama_sampler_free, model)
        try:
            self._build(model, params, params.seed if seed is None else seed)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        _ll.llama_sampler_chain_add(self._handle, sampler)  # the chain owns it from here

    def _build(self, model: Model, p: SamplerSettings, seed: int) -> None:
        if p.grammar is not None:
            grammar = _ll.llama_sampler_init_grammar(
                model._vocab, p.grammar.encode("utf-8"), b"root"
            )
            if not grammar:  # NULL would crash llama.cpp later
                raise GrammarError(
                    "llama.cpp refused the grammar (its reason is on stderr); check its GBNF "
                    "syntax and that it defines a rule named root."
                )
            self._add(grammar)
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0:
            args = (p.repeat_last_n, p.repeat_penalty, 0.0, 0.0)
            if _PENALTIES_TAKE_N_VOCAB:
                args = (model.n_vocab, *args)
            self._add(_ll.llama_sampler_init_penalties(*args))
        if p.greedy:
            self._add(_ll.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(_ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            self._add(_ll.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(_ll.llama_sampler_init_min_p(p.min_p, 1))
        self._add(_ll.llama_sampler_init_temp(p.temperature))
        self._add(_ll.llama_sampler_init_dist(seed))

    def sample(self, ctx: Context, index: int) -> int:
        """Pick (and accept) the next token from output ``index`` of the last decode."""
        return int(_ll.llama_sampler_sample(self._handle, ctx._require_open(), index))


def json_schema_to_gbnf(schema_json: str) -> str:
    """llama-cpp-python's converter: the GBNF grammar of a JSON schema (given as JSON text);
    it raises bare errors on schemas it does not support."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    return convert(schema_json)
