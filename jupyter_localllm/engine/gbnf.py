"""GBNF parsing in Python, the way ``llama-grammar.cpp`` parses it (no llama_cpp here).

:func:`parse_grammar` turns grammar text into :class:`Grammar` (rules of :class:`Group`,
:class:`Repeat`, :class:`Ref`, :class:`Chars`, :class:`AnyChar` and :class:`Token` elements)
with llama.cpp's syntax and limits, and raises
:class:`~jupyter_localllm.errors.GrammarError` with the line for a syntax error, an undefined
rule, a missing ``root``, nesting too deep for llama.cpp's recursive parser, or too many rules.
:mod:`~jupyter_localllm.engine.grammar` checks what the parsed form can do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Union

from ..errors import GrammarError

__all__ = [
    "MAX_GRAMMAR_CHARS",
    "MAX_REPETITION",
    "AnyChar",
    "Chars",
    "Element",
    "Grammar",
    "Group",
    "Interval",
    "Ref",
    "Repeat",
    "Token",
    "parse_grammar",
]

MAX_NESTING = 64  # parentheses inside parentheses; llama.cpp's parser recurses per level
MAX_RULES = 5000  # named rules; llama.cpp's left-recursion check recurses along them
MAX_REPETITION = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD
# Characters of grammar text: parsing it here (and in llama.cpp for every row) takes about
# a second per 500 kB, so a larger grammar is refused before either parses it.
MAX_GRAMMAR_CHARS = 500_000
Interval = tuple[int, int]


# -- the parsed form -----------------------------------------------------------------------
@dataclass(frozen=True)
class Chars:
    """One character from ``intervals`` (a literal character, or a ``[...]`` class;
    ``negated`` for ``[^...]``)."""

    intervals: tuple[Interval, ...]
    negated: bool = False


@dataclass(frozen=True)
class AnyChar:
    """``.``: any character."""


@dataclass(frozen=True)
class Token:
    """``<[id]>``, ``<text>`` (one token), or their inverse ``!<...>``."""

    id: int | None
    text: str | None
    negated: bool = False


@dataclass(frozen=True)
class Ref:
    """A reference to the rule ``name``."""

    name: str


@dataclass(frozen=True)
class Group:
    """Alternatives, each a sequence of elements (a rule's body, or ``( ... )``)."""

    alternatives: tuple[tuple[Element, ...], ...]


@dataclass(frozen=True)
class Repeat:
    """``element`` at least ``low`` and at most ``high`` times (``None``: no limit)."""

    element: Element
    low: int
    high: int | None


Element = Union[Chars, AnyChar, Token, Ref, Group, Repeat]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class Grammar:
    """A parsed grammar: each rule's body by name, in the order they were defined."""

    rules: dict[str, Group]
    referenced: frozenset[str] = field(default_factory=frozenset)


# -- parsing (mirrors llama-grammar.cpp) ----------------------------------------------------
def _is_word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "-")


class _Parser:
    """A recursive-descent parser over ``text`` with llama.cpp's syntax and error texts."""

    def __init__(self, text: str):
        self.text = text + "\0"  # a NUL ends the input, as in C
        self.pos = 0
        self.rules: dict[str, Group] = {}
        self.referenced: set[str] = set()
        self.depth = 0

    def fail(self, message: str) -> GrammarError:
        line = self.text.count("\n", 0, self.pos) + 1
        near = self.text[self.pos : self.pos + 20].split("\n")[0].rstrip("\0")
        where = f" near {near!r}" if near else " at the end"
        return GrammarError(
            f"The grammar is not valid GBNF: {message} on line {line}{where}; fix the grammar."
        )

    def peek(self, k: int = 0) -> str:
        return self.text[min(self.pos + k, len(self.text) - 1)]

    def space(self, newline_ok: bool) -> None:
        while True:
            c = self.peek()
            if c == "#":
                while self.peek() not in "\r\n\0":
                    self.pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                self.pos += 1
            else:
                return

    def name(self) -> str:
        start = self.pos
        while _is_word_char(self.peek()):
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting a name")
        return self.text[start : self.pos]

    def integer(self) -> int:
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting an integer")
        return int(self.text[start : self.pos])

    def char(self) -> int:
        c = self.peek()
        if c == "\0":
            raise self.fail("unexpected end of input")
        if c != "\\":
            self.pos += 1
            return ord(c)
        e = self.peek(1)
        size = {"x": 2, "u": 4, "U": 8}.get(e)
        if size is not None:
            digits = self.text[self.pos + 2 : self.pos + 2 + size]
            if len(digits) < size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"expecting {size} hex digits after \\{e}")
            self.pos += 2 + size
            return int(digits, 16)
        simple = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
        if e not in simple:
            raise self.fail(f"unknown escape \\{e}")
        self.pos += 2
        return simple[e]

    def rule(self) -> None:
        name = self.name()
        self.space(False)
        if self.text[self.pos : self.pos + 3] != "::=":
            raise self.fail("expecting ::=")
        self.pos += 3
        self.space(True)
        self.rules[name] = self.alternates(nested=False)
        if self.peek() == "\r":
            self.pos += 2 if self.peek(1) == "\n" else 1
        elif self.peek() == "\n":
            self.pos += 1
        elif self.peek() != "\0":
            raise self.fail("expecting a newline or the end")
        self.space(True)

    def alternates(self, nested: bool) -> Group:
        alternatives = [self.sequence(nested)]
        while self.peek() == "|":
            self.pos += 1
            self.space(True)
            alternatives.append(self.sequence(nested))
        return Group(tuple(alternatives))

    def sequence(self, nested: bool) -> tuple[Element, ...]:
        items: list[Element] = []
        last: Element | None = None  # what a * + ? {} after it repeats
        while True:
            c = self.peek()
            if c in "*+?{":
                if last is None:
                    raise self.fail(f"expecting an item before {c}")
                items[-1] = last = self._repeat(last, nested)
                continue
            atom = self._atom(nested)
            if atom is False:
                return tuple(items)
            last = atom
            if atom is not None:  # "" and [] add nothing, as in llama.cpp
                items.append(atom)

    def _atom(self, nested: bool) -> Element | bool | None:
        """The next item, ``None`` for one that matches nothing, ``False`` at the end."""
        c = self.peek()
        if c == '"':
            atom = self._literal()
        elif c == "[":
            atom = self._class()
        elif c in "<!":
            atom = self._token()
        elif _is_word_char(c):
            name = self.name()
            self.referenced.add(name)
            atom = Ref(name)
        elif c == "(":
            atom = self._group()
        elif c == ".":
            self.pos += 1
            atom = AnyChar()
        else:
            return False
        self.space(nested)
        return atom

    def _literal(self) -> Element | None:
        self.pos += 1
        chars: list[Element] = []
        while self.peek() != '"':
            cp = self.char()
            chars.append(Chars(((cp, cp),)))
        self.pos += 1
        if not chars:
            return None
        return chars[0] if len(chars) == 1 else Group((tuple(chars),))

    def _class(self) -> Element | None:
        self.pos += 1
        negated = self.peek() == "^"
        self.pos += negated
        intervals: list[Interval] = []
        while self.peek() != "]":
            low = high = self.char()
            if self.peek() == "-" and self.peek(1) != "]":
                self.pos += 1
                high = self.char()
            intervals.append((low, high))
        self.pos += 1
        return Chars(tuple(intervals), negated) if intervals else None

    def _token(self) -> Token:
        negated = self.peek() == "!"
        self.pos += negated
        if self.peek() != "<":
            raise self.fail("expecting '<'")
        end = self.text.find(">", self.pos)
        if end < 0 or "\0" in self.text[self.pos : end]:
            raise self.fail("expecting '>'")
        body = self.text[self.pos + 1 : end]
        self.pos = end + 1
        if body.startswith("["):
            if not (body.endswith("]") and body[1:-1].isdigit() and body[1:-1].isascii()):
                raise self.fail("expecting a token id as <[123]>")
            return Token(int(body[1:-1]), None, negated)
        return Token(None, f"<{body}>", negated)

    def _group(self) -> Group:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise GrammarError(
                f"The grammar nests parentheses more than {MAX_NESTING} deep, which would "
                "overflow llama.cpp's parser; flatten it with named rules."
            )
        self.pos += 1
        self.space(True)
        group = self.alternates(nested=True)
        if self.peek() != ")":
            raise self.fail("expecting ')'")
        self.pos += 1
        self.depth -= 1
        return group

    def _repeat(self, item: Element, nested: bool) -> Repeat:
        depth, inner = 1, item
        while isinstance(inner, Repeat):
            depth, inner = depth + 1, inner.element
        if depth > MAX_NESTING:
            raise self.fail(f"more than {MAX_NESTING} repetition operators in a row")
        c = self.peek()
        self.pos += 1
        self.space(nested)
        if c != "{":
            return Repeat(item, 1 if c == "+" else 0, 1 if c == "?" else None)
        low = self.integer()
        self.space(nested)
        high: int | None = low
        if self.peek() == ",":
            self.pos += 1
            self.space(nested)
            high = self.integer() if self.peek().isdigit() else None
            self.space(nested)
        if self.peek() != "}":
            raise self.fail("expecting '}'")
        self.pos += 1
        self.space(nested)
        if low > MAX_REPETITION:
            raise self.fail(f"more than {MAX_REPETITION} repetitions")
        if high is not None and high > MAX_REPETITION:
            high = None  # what llama.cpp does
        return Repeat(item, low, high)


@functools.lru_cache(maxsize=64)
def parse_grammar(text: str) -> Grammar:
    """Parse GBNF ``text`` as llama.cpp does; raises :class:`GrammarError` for a syntax
    error, an undefined rule, a missing ``root``, too deep nesting or too many rules."""
    if not isinstance(text, str) or not text.strip():
        raise GrammarError("A grammar must be a non-empty GBNF string with a root rule.")
    _check_text(text)
    parser = _Parser(text)
    parser.space(True)
    while parser.peek() != "\0":
        parser.rule()
        if len(parser.rules) > MAX_RULES:
            raise GrammarError(
                f"The grammar has more than {MAX_RULES} rules, more than llama.cpp can check "
                "safely; simplify it."
            )
    if "root" not in parser.rules:
        raise GrammarError("The grammar has no rule named root; add one (root ::= ...).")
    undefined = sorted(parser.referenced - set(parser.rules))
    if undefined:
        raise GrammarError(
            f"The grammar uses rule(s) {', '.join(undefined)} but never defines them; "
            "define them or fix the names."
        )
    return Grammar(parser.rules, frozenset(parser.referenced))


def _check_text(text: str) -> None:
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(
            f"The grammar has {len(text)} characters, more than the {MAX_GRAMMAR_CHARS} a "
            "grammar may have (it is parsed for every row); simplify it (fewer alternatives or "
            "repetitions)."
        )
    if "\0" in text:
        raise GrammarError(
            "The grammar text contains a NUL character, which would cut it short in llama.cpp; "
            "remove it."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GrammarError(
            f"The grammar text contains {text[exc.start]!r}, a lone surrogate that is not "
            "valid Unicode; remove it."
        ) from None
