"""Write a tiny, valid BERT-architecture GGUF embedding model (random, fixed-seed weights).

No small encoder GGUF is on PyPI, and real users bring encoders (all-MiniLM, bge: llama.cpp
arch ``"bert"``), which take another path in llama.cpp than the default chat model: non-causal
attention, pooling from the file's metadata, a whole sequence per ubatch. This module writes one
by hand — key/values and tensors exactly as llama.cpp's loader reads them (``models/bert.cpp``,
``llama-vocab.cpp``'s WordPiece vocabulary ``"bert"``) — in well under a megabyte.

The vocabulary holds the five BERT control tokens, every lower-case letter and digit (as a word
start ``"▁a"`` and as a continuation ``"a"``), punctuation and some whole words, so any ASCII
text tokenizes without unknown tokens; the weights are float32 normal draws of a fixed seed, so
the same call writes the same bytes.
"""

from __future__ import annotations

import string
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf_edit import ARRAY, FLOAT32, INT32, STRING, UINT32, Array, encode_value

BOOL = 7
POOLING = {"mean": 1, "cls": 2}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD_TEXT = (
    "the a an is are was on in of to and it at by for with cat cats dog dogs sat mat rug "
    "sitting stock stocks market markets fell fall sharply today shares dropped steeply wall "
    "street price prices news sport sports game team won lost money bank rain sun weather "
    "good bad new old big small red blue green run ran walk"
)
WORDS = _WORD_TEXT.split()
_ALIGN = 32
_F32 = 0  # ggml type id


def vocabulary() -> list[str]:
    """The tokens, in id order: specials, word starts (``"▁word"``), then continuations."""
    pieces = list(string.ascii_lowercase + string.digits)
    starts = dict.fromkeys(f"\u2581{p}" for p in [*pieces, *WORDS, *".,!?;:'\"-()"])
    return [*SPECIALS, *starts, *pieces]  # dict: a word that is also a letter appears once


def write_bert(
    path: str | Path,
    *,
    pooling: str = "mean",
    n_embd: int = 32,
    n_head: int = 4,
    n_layer: int = 2,
    n_ff: int = 64,
    n_ctx_train: int = 128,
    seed: int = 0,
    name: str = "tiny-bert",
) -> Path:
    """Write the tiny BERT model to ``path`` (``pooling`` ``"mean"`` or ``"cls"`` is stored as
    ``bert.pooling_type``); return the path. The weights depend on ``seed`` only, not on the
    pooling, so a mean and a CLS file differ in their pooling alone."""
    tokens = vocabulary()
    kvs = _metadata(tokens, pooling, n_embd, n_head, n_layer, n_ff, n_ctx_train, name)
    tensors = bert_weights(len(tokens), n_embd, n_layer, n_ff, n_ctx_train, seed)
    _write(Path(path), kvs, tensors)
    return Path(path)


def _metadata(
    tokens: list[str], pooling: str, n_embd: int, n_head: int, n_layer: int, n_ff: int,
    n_ctx: int, name: str,
) -> dict[str, tuple[int, Any]]:  # fmt: skip
    types = [3 if t in SPECIALS else 1 for t in tokens]  # 3 control, 1 normal
    types[SPECIALS.index("[UNK]")] = 2
    ids = {t: tokens.index(t) for t in SPECIALS}
    return {
        "general.architecture": (STRING, "bert"),
        "general.name": (STRING, name),
        "general.alignment": (UINT32, _ALIGN),
        "bert.context_length": (UINT32, n_ctx),
        "bert.embedding_length": (UINT32, n_embd),
        "bert.feed_forward_length": (UINT32, n_ff),
        "bert.block_count": (UINT32, n_layer),
        "bert.attention.head_count": (UINT32, n_head),
        "bert.attention.layer_norm_epsilon": (FLOAT32, 1e-12),
        "bert.attention.causal": (BOOL, False),
        "bert.pooling_type": (UINT32, POOLING[pooling]),
        "tokenizer.ggml.model": (STRING, "bert"),
        "tokenizer.ggml.tokens": (ARRAY, Array(STRING, tokens)),
        "tokenizer.ggml.token_type": (ARRAY, Array(INT32, types)),
        "tokenizer.ggml.token_type_count": (UINT32, 2),
        "tokenizer.ggml.bos_token_id": (UINT32, ids["[CLS]"]),
        "tokenizer.ggml.cls_token_id": (UINT32, ids["[CLS]"]),
        "tokenizer.ggml.seperator_token_id": (UINT32, ids["[SEP]"]),
        "tokenizer.ggml.unknown_token_id": (UINT32, ids["[UNK]"]),
        "tokenizer.ggml.padding_token_id": (UINT32, ids["[PAD]"]),
        "tokenizer.ggml.mask_token_id": (UINT32, ids["[MASK]"]),
        "tokenizer.ggml.add_bos_token": (BOOL, True),
        "tokenizer.ggml.add_sep_token": (BOOL, True),
    }


def bert_weights(
    n_vocab: int, n_embd: int = 32, n_layer: int = 2, n_ff: int = 64, n_ctx: int = 128,
    seed: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The weights :func:`write_bert` writes, by GGUF name (a numpy shape is ggml's ``ne``
    reversed: a matrix is ``(n_out, n_in)``, applied as ``x @ w.T``)."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ones, zeros = np.ones(n_embd, np.float32), np.zeros(n_embd, np.float32)
    out = {
        "token_embd.weight": normal(n_vocab, n_embd, scale=1.0),
        "token_types.weight": normal(2, n_embd),
        "position_embd.weight": normal(n_ctx, n_embd),
        "token_embd_norm.weight": ones,
        "token_embd_norm.bias": zeros,
    }
    for i in range(n_layer):
        blk = f"blk.{i}."
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            out[f"{blk}{part}.weight"] = normal(n_embd, n_embd)
            out[f"{blk}{part}.bias"] = normal(n_embd, scale=0.05)
        out[f"{blk}attn_output_norm.weight"] = ones
        out[f"{blk}attn_output_norm.bias"] = zeros
        out[f"{blk}ffn_up.weight"] = normal(n_ff, n_embd)
        out[f"{blk}ffn_up.bias"] = normal(n_ff, scale=0.05)
        out[f"{blk}ffn_down.weight"] = normal(n_embd, n_ff)
        out[f"{blk}ffn_down.bias"] = normal(n_embd, scale=0.05)
        out[f"{blk}layer_output_norm.weight"] = ones
        out[f"{blk}layer_output_norm.bias"] = zeros
    return out


def _write(path: Path, kvs: dict[str, tuple[int, Any]], tensors: dict[str, np.ndarray]) -> None:
    """A GGUF v3 file: header, key/values, tensor infos, padding, then aligned float32 data."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for key, (vtype, value) in kvs.items():
        parts += [encode_value(STRING, key), struct.pack("<I", vtype), encode_value(vtype, value)]
    offset, blobs = 0, []
    for tname, array in tensors.items():
        dims = array.shape[::-1]  # ggml's ne[0] is the fastest-varying (last numpy) axis
        parts += [encode_value(STRING, tname), struct.pack("<I", len(dims))]
        parts += [struct.pack("<Q", d) for d in dims]
        parts.append(struct.pack("<IQ", _F32, offset))
        data = array.tobytes()
        blobs.append(data + b"\0" * (-len(data) % _ALIGN))
        offset += len(blobs[-1])
    header = b"".join(parts)
    header += b"\0" * (-len(header) % _ALIGN)
    path.write_bytes(header + b"".join(blobs))


def reference_embedding(
    tokens: list[int], pooling: str, *, n_head: int = 4, seed: int = 0, **sizes: int
) -> np.ndarray:
    """The pooled, L2-normalised vector of ``tokens`` (ids with [CLS] and [SEP]) that the
    model :func:`write_bert` writes computes, in numpy (float64): BERT's post-norm encoder
    with non-causal attention, token type 0 and learned positions, as llama.cpp's
    ``models/bert.cpp`` builds it. ``sizes``: :func:`bert_weights`' sizes, if not the
    defaults."""
    w = {
        k: v.astype(np.float64)
        for k, v in bert_weights(len(vocabulary()), seed=seed, **sizes).items()
    }

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
        return x * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    n = len(tokens)
    x = w["token_embd.weight"][tokens] + w["token_types.weight"][0] + w["position_embd.weight"][:n]
    x = norm(x, "token_embd_norm")
    n_layer = sum(1 for k in w if k.endswith("attn_q.weight"))
    for i in range(n_layer):
        blk = f"blk.{i}."
        q, k, v = (
            linear(x, blk + p).reshape(n, n_head, -1) for p in ("attn_q", "attn_k", "attn_v")
        )
        scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(q.shape[-1])
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = np.einsum("hij,jhd->ihd", scores / scores.sum(-1, keepdims=True), v).reshape(n, -1)
        x = norm(linear(attn, blk + "attn_output") + x, blk + "attn_output_norm")
        up = linear(x, blk + "ffn_up")
        gelu = 0.5 * up * (1 + np.tanh(np.sqrt(2 / np.pi) * (up + 0.044715 * up**3)))
        x = norm(linear(gelu, blk + "ffn_down") + x, blk + "layer_output_norm")
    pooled = x.mean(0) if pooling == "mean" else x[0]
    return pooled / np.linalg.norm(pooled)


# -- a tiny GPT-2 (a decoder with a learned position table) -------------------------------------

EOT = "<|endoftext|>"
_GPT2_WORDS = (
    "the cat sat on mat and dog is a of to in it that was for with as his he at by this be "
    "stock market fell today hello world there"
)


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: the character standing for each byte 0..255 (printable
    Latin-1 stands for itself, the rest are shifted past 255; a space is ``"Ġ"``)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def gpt2_vocabulary() -> tuple[list[str], list[str]]:
    """``(tokens, merges)``: the 256 byte tokens, each merge's result in merge order, then
    ``<|endoftext|>``; the merges build every word of a small list (with and without its
    leading space ``"Ġ"``) letter by letter, left to right."""
    space = _byte_chars()[32]
    tokens = _byte_chars()
    merges: dict[str, None] = {}
    for word in _GPT2_WORDS.split():
        for text in (space + word, word):
            for end in range(2, len(text) + 1):
                merges[f"{text[: end - 1]} {text[end - 1]}"] = None
    known = set(tokens)
    for merge in merges:
        piece = merge.replace(" ", "")
        if piece not in known:
            known.add(piece)
            tokens.append(piece)
    return [*tokens, EOT], list(merges)


def write_gpt2(
    path: str | Path,
    *,
    n_embd: int = 32,
    n_head: int = 4,
    n_layer: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 64,
    seed: int = 0,
    name: str = "tiny-gpt2",
) -> Path:
    """Write a tiny GPT-2-architecture model (llama.cpp arch ``"gpt2"``: learned positions,
    pre-norm blocks, fused QKV, byte-level BPE vocabulary with merges) to ``path``; return
    the path. It never predicts ``<|endoftext|>`` (see :func:`gpt2_weights`), so greedy
    decoding runs until ``max_tokens`` or the context's end."""
    tokens, merges = gpt2_vocabulary()
    eot = len(tokens) - 1
    kvs = {
        "general.architecture": (STRING, "gpt2"),
        "general.name": (STRING, name),
        "general.alignment": (UINT32, _ALIGN),
        "gpt2.context_length": (UINT32, n_ctx_train),
        "gpt2.embedding_length": (UINT32, n_embd),
        "gpt2.feed_forward_length": (UINT32, n_ff),
        "gpt2.block_count": (UINT32, n_layer),
        "gpt2.attention.head_count": (UINT32, n_head),
        "gpt2.attention.layer_norm_epsilon": (FLOAT32, 1e-5),
        "tokenizer.ggml.model": (STRING, "gpt2"),
        "tokenizer.ggml.pre": (STRING, "gpt-2"),
        "tokenizer.ggml.tokens": (ARRAY, Array(STRING, tokens)),
        "tokenizer.ggml.token_type": (ARRAY, Array(INT32, [1] * eot + [3])),
        "tokenizer.ggml.merges": (ARRAY, Array(STRING, merges)),
        "tokenizer.ggml.bos_token_id": (UINT32, eot),
        "tokenizer.ggml.eos_token_id": (UINT32, eot),
        "tokenizer.ggml.add_bos_token": (BOOL, False),
    }
    _write(Path(path), kvs, gpt2_weights(len(tokens), n_embd, n_layer, n_ff, n_ctx_train, seed))
    return Path(path)


def gpt2_weights(
    n_vocab: int, n_embd: int = 32, n_layer: int = 2, n_ff: int = 128, n_ctx: int = 64,
    seed: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The weights :func:`write_gpt2` writes, by GGUF name (numpy shapes as in
    :func:`bert_weights`). The last token (``<|endoftext|>``) never wins: the final norm's
    output is ``xhat + 0.5`` with ``sum(xhat) == 0``, and its output row is ``-4`` everywhere,
    so its logit is ``-2 * n_embd`` whatever the input."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ones, zeros = np.ones(n_embd, np.float32), np.zeros(n_embd, np.float32)
    out = {
        "token_embd.weight": normal(n_vocab, n_embd, scale=1.0),
        "position_embd.weight": normal(n_ctx, n_embd, scale=0.5),
        "output_norm.weight": ones,
        "output_norm.bias": np.full(n_embd, 0.5, np.float32),
        "output.weight": normal(n_vocab, n_embd, scale=1.0),
    }
    out["output.weight"][-1] = -4.0
    for i in range(n_layer):
        blk = f"blk.{i}."
        out[f"{blk}attn_norm.weight"], out[f"{blk}attn_norm.bias"] = ones, zeros
        out[f"{blk}attn_qkv.weight"] = normal(3 * n_embd, n_embd)
        out[f"{blk}attn_qkv.bias"] = normal(3 * n_embd, scale=0.05)
        out[f"{blk}attn_output.weight"] = normal(n_embd, n_embd)
        out[f"{blk}attn_output.bias"] = normal(n_embd, scale=0.05)
        out[f"{blk}ffn_norm.weight"], out[f"{blk}ffn_norm.bias"] = ones, zeros
        out[f"{blk}ffn_up.weight"] = normal(n_ff, n_embd)
        out[f"{blk}ffn_up.bias"] = normal(n_ff, scale=0.05)
        out[f"{blk}ffn_down.weight"] = normal(n_embd, n_ff)
        out[f"{blk}ffn_down.bias"] = normal(n_embd, scale=0.05)
    return out


def reference_gpt2_logits(tokens: list[int], *, n_head: int = 4, seed: int = 0) -> np.ndarray:
    """The logits ``[position, token]`` that the model :func:`write_gpt2` writes (default
    sizes) computes for ``tokens``, in numpy (float64): GPT-2's pre-norm decoder with causal
    attention and learned positions, as llama.cpp's ``models/gpt2.cpp`` builds it."""
    n_vocab = len(gpt2_vocabulary()[0])
    w = {k: v.astype(np.float64) for k, v in gpt2_weights(n_vocab, seed=seed).items()}

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        return x * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    n = len(tokens)
    x = w["token_embd.weight"][tokens] + w["position_embd.weight"][:n]
    n_layer = sum(1 for k in w if k.endswith("attn_qkv.weight"))
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(n_layer):
        blk = f"blk.{i}."
        qkv = linear(norm(x, blk + "attn_norm"), blk + "attn_qkv")
        q, k, v = (part.reshape(n, n_head, -1) for part in np.split(qkv, 3, axis=-1))
        scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(q.shape[-1]) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = np.einsum("hij,jhd->ihd", scores / scores.sum(-1, keepdims=True), v).reshape(n, -1)
        x = x + linear(attn, blk + "attn_output")
        up = linear(norm(x, blk + "ffn_norm"), blk + "ffn_up")
        gelu = 0.5 * up * (1 + np.tanh(np.sqrt(2 / np.pi) * (up + 0.044715 * up**3)))
        x = x + linear(gelu, blk + "ffn_down")
    return norm(x, "output_norm") @ w["output.weight"].T


def reference_gpt2_greedy(tokens: list[int], n: int, **kwargs: int) -> list[int]:
    """The ``n`` tokens greedy decoding appends to ``tokens`` on :func:`write_gpt2`'s model
    (``kwargs``: :func:`reference_gpt2_logits`')."""
    out = list(tokens)
    for _ in range(n):
        out.append(int(reference_gpt2_logits(out, **kwargs)[-1].argmax()))
    return out[len(tokens) :]
