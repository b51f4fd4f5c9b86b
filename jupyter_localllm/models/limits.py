"""llama.cpp's limits on a model's hyperparameters, checked in Python before it reads the file.

llama.cpp trusts a GGUF file's metadata: ``load_hparams`` (src/llama-model.cpp) checks the layer
and expert counts with ``GGML_ASSERT``, which aborts the whole process (the Jupyter kernel with
it) rather than returning an error. :func:`check_hyperparameters` applies the same conditions,
plus the head counts that ggml asserts on when it builds the first graph, and raises
:class:`~jupyter_localllm.errors.InvalidModelFileError` naming the key and the limit instead.
Values llama.cpp itself rejects with an error (wrong types, tensor shapes that do not match)
are left to it. What no table can foresee is caught by the engine's probe
(:mod:`jupyter_localllm.engine.probe`), which loads an unknown file once in a subprocess.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError
from .gguf import ArraySummary

__all__ = ["LLAMA_MAX_EXPERTS", "LLAMA_MAX_LAYERS", "ROPE_SCALING_TYPES", "check_hyperparameters"]

LLAMA_MAX_LAYERS = 512  # llama-hparams.h: per-layer arrays are std::array<_, 512>
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama-model.cpp
# Keys llama.cpp reads with get_key_or_arr: one value for every layer, or one per layer.
_PER_LAYER = (
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "expert_used_count",
)
# Architectures whose loader turns an expert count of 0 or 1 into "no experts" (llama-model.cpp).
_EXPERTS_OPTIONAL = ("hunyuan-vl", "hunyuan-dense")


class _Check:
    """The metadata of one file, and the error that names one of its keys."""

    def __init__(self, path: Path, meta: Mapping[str, Any], arch: str) -> None:
        self.path, self.meta, self.arch = path, meta, arch

    def fail(self, key: str, value: Any, rule: str) -> InvalidModelFileError:
        if isinstance(value, int):
            shown = f"{value:,}"
        else:  # an array is shown by its summary, a string quoted
            shown = str(value) if not isinstance(value, str) or value[:1] == "<" else repr(value)
        return InvalidModelFileError(
            f"{self.path} has {key} = {shown}, but {rule}; the file is corrupt or was edited, so "
            "it is not handed to llama.cpp (which would abort the process): re-download it."
        )

    def integer(self, name: str, default: int | None = None) -> tuple[str, int | None]:
        """``{arch}.name`` as an int (``default`` when absent); other types are left to
        llama.cpp, which rejects them with an error of its own."""
        key = f"{self.arch}.{name}"
        value = self.meta.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            return key, default
        return key, value

    def per_layer(self, name: str, n_layer: int, default: list[int]) -> tuple[str, list[int]]:
        """A get_key_or_arr value as one int per layer (``default`` when absent or unreadable)."""
        key = f"{self.arch}.{name}"
        value = self.meta.get(key)
        if isinstance(value, list):
            if len(value) != n_layer:
                raise self.fail(
                    key, f"<array of {len(value):,}>", f"it needs one value per layer ({n_layer})"
                )
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return key, [v % 2**32 for v in value]  # llama.cpp reads int32 arrays as uint32
            return key, default
        if isinstance(value, int) and not isinstance(value, bool):
            return key, [value] * n_layer
        if value is not None and not isinstance(value, (float, str)):
            # An array too long to keep (ArraySummary): more entries than llama.cpp has room for.
            raise self.fail(key, value, f"it needs one value per layer ({n_layer})")
        return key, default


def check_hyperparameters(path: Path, metadata: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidModelFileError` when ``metadata`` (of the file at ``path``) holds a
    hyperparameter on which llama.cpp would abort the process, or an array of arrays (which it
    cannot read): a layer count outside 1..512, more than 1024 experts, more experts used than
    there are, head counts that do not divide, an unknown RoPE scaling type. Arrays longer
    than 512 entries may be summaries (:class:`~jupyter_localllm.models.gguf.ArraySummary`)."""
    for key, value in metadata.items():
        if _nested(value):
            raise InvalidModelFileError(
                f"{path} has arrays of arrays in {key}, which llama.cpp cannot read; the file "
                "is corrupt or was edited: re-download it."
            )
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or arch == "clip":
        return  # llama.cpp refuses a missing architecture itself; CLIP files have no hparams
    c = _Check(path, metadata, arch)
    key, n_layer = c.integer("block_count")
    if n_layer is None:
        return  # missing or mistyped: llama.cpp answers with an error, not an abort
    if not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        raise c.fail(key, n_layer, f"llama.cpp accepts 1 to {LLAMA_MAX_LAYERS} layers")
    key, n_nextn = c.integer("nextn_predict_layers", 0)
    if n_nextn > n_layer:
        raise c.fail(key, n_nextn, f"it cannot exceed the layer count ({n_layer})")
    _check_experts(c, n_layer)
    _check_heads(c, n_layer)
    key = f"{arch}.rope.scaling.type"
    scaling = metadata.get(key, "linear")
    if isinstance(scaling, str) and scaling not in ROPE_SCALING_TYPES:
        raise c.fail(key, scaling, f"llama.cpp knows only {', '.join(ROPE_SCALING_TYPES)}")


def _nested(value: Any) -> bool:
    if isinstance(value, list):
        return any(isinstance(v, (list, ArraySummary)) for v in value)
    return isinstance(value, ArraySummary) and value.item_type == "array"


def _check_experts(c: _Check, n_layer: int) -> None:
    """The mixture-of-experts counts, as ``load_hparams`` asserts them."""
    key, n_expert = c.integer("expert_count", 0)
    used_key, used = c.per_layer("expert_used_count", n_layer, [0] * n_layer)
    groups_key, groups = c.integer("expert_group_count", 0)
    group_used_key, group_used = c.integer("expert_group_used_count", 0)
    if c.arch in _EXPERTS_OPTIONAL and n_expert <= 1:
        n_expert, used = 0, [0] * n_layer
    if n_expert > LLAMA_MAX_EXPERTS:
        raise c.fail(key, n_expert, f"llama.cpp accepts at most {LLAMA_MAX_EXPERTS} experts")
    used_max = max(used)
    if used_max > n_expert:
        raise c.fail(used_key, used_max, f"it cannot exceed the expert count ({n_expert})")
    if n_expert == 0:
        if groups:
            raise c.fail(groups_key, groups, "a model without experts has no expert groups")
        return
    if used_max == 0:
        raise c.fail(used_key, used_max, f"a model with {n_expert} experts must use at least one")
    if groups >= n_expert:
        raise c.fail(groups_key, groups, f"it must be below the expert count ({n_expert})")
    if groups > 1:
        if n_expert % groups:
            raise c.fail(groups_key, groups, f"it must divide the expert count ({n_expert})")
        if not 0 < group_used < groups:
            raise c.fail(group_used_key, group_used, f"it must be 1 to {groups - 1}")


def _check_heads(c: _Check, n_layer: int) -> None:
    """Per layer, the key/value heads must divide the query heads (grouped-query attention
    repeats each key/value head over a group; ggml asserts the shapes match)."""
    key, heads = c.per_layer("attention.head_count", n_layer, [0] * n_layer)
    kv_key, kv_heads = c.per_layer("attention.head_count_kv", n_layer, heads)
    c.per_layer("feed_forward_length", n_layer, [0] * n_layer)  # its length, like llama.cpp's
    for il, (h, kv) in enumerate(zip(heads, kv_heads, strict=True)):
        if h and kv and (kv > h or h % kv):
            where = f" in layer {il}" if len(set(kv_heads)) > 1 or len(set(heads)) > 1 else ""
            raise c.fail(kv_key, kv, f"it must divide {key} ({h}){where}")
