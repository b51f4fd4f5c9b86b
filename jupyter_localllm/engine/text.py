"""Text handling between tokens and strings: incremental UTF-8 decoding, stop strings that
span token boundaries, and ``clean()`` for chat control tokens and reasoning blocks.

Pure Python; nothing here touches llama.cpp.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence

__all__ = ["CONTROL_TOKENS", "StopMatcher", "TextAccumulator", "clean"]

# Chat control markers of the common template families (ChatML, Gemma, Llama 2/3, Mistral,
# Phi, DeepSeek). localLLM strips the same set with clean=TRUE.
CONTROL_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<s>",
    "</s>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|end▁of▁sentence|>",
    "<|begin▁of▁sentence|>",
)
_CONTROL_RE = re.compile("|".join(re.escape(t) for t in CONTROL_TOKENS))
# A closed reasoning block, or one left open when generation stopped inside it.
_THINK_RE = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
# Role names that some templates leave at the start of a turn after the marker is removed.
_ROLE_PREFIX_RE = re.compile(r"^(?:assistant|model)\s*\n", re.IGNORECASE)


def clean(text: str) -> str:
    """``text`` without chat control tokens and ``<think>…</think>`` blocks, stripped.

    Use it on raw generations from chat models (``clean=True`` in the generation calls).
    """
    text = _THINK_RE.sub("", text)
    text = _CONTROL_RE.sub("", text)
    text = _ROLE_PREFIX_RE.sub("", text.lstrip())
    return text.strip()


class StopMatcher:
    """Finds stop strings in a growing text, including ones split across token pieces.

    :meth:`feed` takes the new text and returns what may be released to the user now (text
    that cannot be the start of a stop string), holding back a possible partial match.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text safe to emit. Sets :attr:`stopped` on a match."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self._pending + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        keep = self._partial_suffix(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Release the held-back text (at the end of generation without a stop match)."""
        out, self._pending = self._pending, ""
        return out

    def _partial_suffix(self, text: str) -> int:
        # Length of the longest suffix of text that is a proper prefix of some stop string.
        for n in range(min(self._hold, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


class TextAccumulator:
    """Turns token bytes into text incrementally, never splitting a UTF-8 character.

    A multi-byte character whose bytes arrive in two tokens (emoji, CJK) is emitted once
    complete; invalid bytes become U+FFFD at the end.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)
        self._parts: list[str] = []

    @property
    def stopped(self) -> bool:
        """True once a stop string was found."""
        return self._stops.stopped

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the new text that is final (may be empty)."""
        out = self._stops.feed(self._decoder.decode(data))
        if out:
            self._parts.append(out)
        return out

    def finish(self) -> str:
        """Flush pending bytes and held-back text; return that last text."""
        out = "" if self.stopped else self._stops.feed(self._decoder.decode(b"", final=True))
        if not self.stopped:
            out += self._stops.flush()
        if out:
            self._parts.append(out)
        return out

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._parts)
