"""GBNF grammars checked in Python before llama.cpp sees them (no llama_cpp here).

llama.cpp parses a grammar safely (a bad one gives NULL), but some grammars that parse kill
the process later, while sampling:

- a place no token can fill (a dead end): a character no token starts with, such as NUL
  (``"\\x00"``; ``{"const": "\\u0000"}`` in a JSON schema), an empty range (``[z-a]``), a
  token id outside the vocabulary or an end-of-generation token (``<[2]>``), or a rule that
  can never finish (``x ::= "a" x``). When the sampler steps into one, llama.cpp aborts
  (``Unexpected empty grammar stack``, ``GGML_ABORT``);
- left recursion hidden behind a rule that only derives the empty string, which llama.cpp's
  own check misses: expanding it never ends and the memory grows until the kernel dies;
- nesting so deep that llama.cpp's recursive parser overflows the C stack.

:func:`check_grammar` parses the text the way ``llama-grammar.cpp`` does and raises
:class:`~jupyter_localllm.errors.GrammarError` for each of these, naming the rule. What a model
can produce is an :class:`Alphabet`; :func:`alphabet_from_pieces` builds one from a model's
token pieces, and :data:`ANY_MODEL` assumes every character but NUL.
:func:`check_model_grammar` runs both checks for a backend model: this one with the model's
alphabet (built once per model), then the backend's own parser.
"""

from __future__ import annotations

import bisect
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import GrammarError
from .backend import BackendModel
from .gbnf import (
    MAX_REPETITION,
    AnyChar,
    Chars,
    Element,
    Grammar,
    Group,
    Interval,
    Ref,
    Repeat,
    Token,
    parse_grammar,
)

__all__ = [
    "ANY_MODEL",
    "MAX_ENUM",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_REPETITIONS",
    "Alphabet",
    "alphabet_from_pieces",
    "check_grammar",
    "check_model_grammar",
    "check_schema_size",
]

_MAX_CODE_POINT = 0xFFFFFFFF  # what a \U escape can write
# Sizes of a JSON schema that its grammar can hold. The schema-to-grammar converter writes
# every repetition out (minLength 100000000: a string of that many items, minutes and GBs),
# so counts are checked before it runs: each at most llama.cpp's own repetition limit, all
# of them together, and a pattern's quantifiers expanded, at most MAX_SCHEMA_REPETITIONS.
MAX_SCHEMA_REPETITIONS = 20_000
MAX_ENUM = 10_000  # values of one enum (one alternative each, in every row's grammar)
MAX_SCHEMA_DEPTH = 64  # objects and lists inside each other (the converter recurses)
_COUNTS = (
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "minContains", "maxContains",
)  # fmt: skip
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")


@dataclass(frozen=True)
class Alphabet:
    """What a model can write: ``chars`` (sorted, disjoint code point intervals some token
    can start with), ``token_ok(id)`` (whether the grammar may pick that token) and
    ``token_id(text)`` (the one token of ``text``, or ``None``)."""

    chars: tuple[Interval, ...]
    token_ok: Callable[[int], bool] = lambda _id: True
    token_id: Callable[[str], int | None] = lambda _text: 0


ANY_MODEL = Alphabet(chars=((1, 0x10FFFF),))
"""A model with a token for every Unicode character but NUL (byte-level vocabularies)."""


# -- analysis ------------------------------------------------------------------------------
def check_grammar(
    text: str,
    alphabet: Alphabet = ANY_MODEL,
    *,
    subject: str = "The grammar",
    fix: str = "change that rule so each of its alternatives can be written to the end",
) -> Grammar:
    """Parse ``text`` and make sure llama.cpp can sample it with a model that writes
    ``alphabet``: no dead end, no left recursion; raises :class:`GrammarError` naming the
    rule at fault (``subject`` and ``fix`` word the message). Returns the parsed grammar."""
    grammar = parse_grammar(text)
    _check_left_recursion(grammar)
    problem = _Productivity(grammar, alphabet).first_problem()
    if problem is not None:
        rule, why = problem
        raise GrammarError(f"{subject} cannot be completed in rule {rule!r}: {why}; {fix}.")
    return grammar


def _describe(cp: int) -> str:
    return f"U+{cp:04X}" + (f" ({chr(cp)!r})" if 0x20 < cp < 0x7F else "")


class _Productivity:
    """Which elements can finish with what the model writes (a fixed point over rules)."""

    def __init__(self, grammar: Grammar, alphabet: Alphabet):
        self.grammar, self.alphabet = grammar, alphabet
        self.done: set[str] = set()  # the rules that can finish
        self.done = _fixpoint(grammar, self.can_finish)

    def can_finish(self, e: Element, done: set[str]) -> bool:
        """True when ``e`` can be completed, given the rules in ``done`` can."""
        self.done = done
        return self.problem(e, deep=False) is None

    def problem(self, e: Element, deep: bool) -> str | None:
        """Why ``e`` cannot be completed (``deep``: or one of its alternatives cannot)."""
        if isinstance(e, Ref):
            return None if e.name in self.done else _NEVER.format(e.name)
        if isinstance(e, Group):
            return self._group_problem(e, deep)
        if isinstance(e, Repeat):
            inner = self.problem(e.element, deep)
            return inner if (deep or e.low > 0) else None
        return self._terminal_problem(e)

    def _group_problem(self, g: Group, deep: bool) -> str | None:
        problems = []
        for alternative in g.alternatives:
            found = next((p for p in (self.problem(x, deep) for x in alternative) if p), None)
            if found is None and not deep:
                return None
            problems.append(found)
        return next((p for p in problems if p), None) if deep else problems[0]

    def _terminal_problem(self, e: Element) -> str | None:
        a = self.alphabet
        if isinstance(e, AnyChar):
            return None if a.chars else f"no token can write any character, and {_ABORTS}"
        if isinstance(e, Token):
            return _token_problem(e, a)
        assert isinstance(e, Chars)
        if _can_write(e, a):
            return None
        if not e.negated and len(e.intervals) == 1 and e.intervals[0][0] == e.intervals[0][1]:
            cp = _describe(e.intervals[0][0])
            return f"it needs {cp}, which no token can write, and {_ABORTS}"
        return f"it needs a character from an empty range or one no token can write, and {_ABORTS}"

    def first_problem(self) -> tuple[str, str] | None:
        """``(rule, why)`` of a reachable rule with an alternative that cannot be completed
        (one with a character or token no model can write first), or ``None``."""
        found = []
        for name in self._reachable():
            problem = self.problem(self.grammar.rules[name], deep=True)
            if problem is not None and not problem.startswith(_NEVER[:5]):
                return name, problem
            found.append((name, problem))
        return next(((n, p) for n, p in found if p is not None), None)

    def _reachable(self) -> list[str]:
        order, seen = ["root"], {"root"}
        for name in order:  # grows while it is read
            for ref in _refs(self.grammar.rules[name]):
                if ref not in seen:
                    seen.add(ref)
                    order.append(ref)
        return order


_NEVER = "rule {!r} never finishes (every way through it needs more of itself)"
_ABORTS = "llama.cpp aborts the process when sampling reaches it"


def _fixpoint(grammar: Grammar, holds: Callable[[Element, set[str]], bool]) -> set[str]:
    """The least set of rules ``known`` such that ``holds(body, known)`` is false for every
    rule outside it (a worklist: a rule is looked at again when a rule it uses joins)."""
    users: dict[str, set[str]] = {name: set() for name in grammar.rules}
    for name, body in grammar.rules.items():
        for ref in _refs(body):
            users[ref].add(name)
    known: set[str] = set()
    todo = list(grammar.rules)
    queued = set(todo)
    while todo:
        name = todo.pop()
        queued.discard(name)
        if name in known or not holds(grammar.rules[name], known):
            continue
        known.add(name)
        for user in users[name] - known - queued:
            todo.append(user)
            queued.add(user)
    return known


def _token_problem(e: Token, a: Alphabet) -> str | None:
    if e.negated:
        return None
    token = e.id if e.id is not None else a.token_id(e.text or "")
    if token is None:
        return f"{e.text} is not exactly one token of this model, and {_ABORTS}"
    if not a.token_ok(token):
        return f"token {token} is unknown or ends generation, and {_ABORTS}"
    return None


def _can_write(e: Chars, a: Alphabet) -> bool:
    """True when some character of ``e`` is one the model can write."""
    wanted = sorted((lo, hi) for lo, hi in e.intervals if lo <= hi)
    if e.negated:
        wanted = _complement(wanted)
    return _intersects(wanted, a.chars)


def _complement(intervals: list[Interval]) -> list[Interval]:
    out, start = [], 0
    for lo, hi in intervals:
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= _MAX_CODE_POINT:
        out.append((start, _MAX_CODE_POINT))
    return out


def _intersects(a: Iterable[Interval], b: tuple[Interval, ...]) -> bool:
    for lo, hi in a:
        i = bisect.bisect_right(b, (hi, _MAX_CODE_POINT + 1)) - 1
        if i >= 0 and b[i][1] >= lo:
            return True
    return False


def _refs(e: Element) -> Iterable[str]:
    """Every rule ``e`` references."""
    if isinstance(e, Ref):
        yield e.name
    elif isinstance(e, Group):
        for alternative in e.alternatives:
            for x in alternative:
                yield from _refs(x)
    elif isinstance(e, Repeat):
        yield from _refs(e.element)


# -- left recursion ------------------------------------------------------------------------
def _nullable(e: Element, nullable: set[str]) -> bool:
    if isinstance(e, Ref):
        return e.name in nullable
    if isinstance(e, Group):
        return any(all(_nullable(x, nullable) for x in alt) for alt in e.alternatives)
    if isinstance(e, Repeat):
        return e.low == 0 or _nullable(e.element, nullable)
    return False


def _leftmost(e: Element, nullable: set[str]) -> Iterable[str]:
    """Rules that can start ``e`` (behind items that may match nothing)."""
    if isinstance(e, Ref):
        yield e.name
    elif isinstance(e, Group):
        for alternative in e.alternatives:
            for x in alternative:
                yield from _leftmost(x, nullable)
                if not _nullable(x, nullable):
                    break
    elif isinstance(e, Repeat):
        yield from _leftmost(e.element, nullable)


def _check_left_recursion(grammar: Grammar) -> None:
    """Raise :class:`GrammarError` when a rule can reach itself without writing anything
    (llama.cpp refuses some such grammars and loops forever on the others)."""
    nullable = _fixpoint(grammar, _nullable)
    out = {n: set(_leftmost(body, nullable)) for n, body in grammar.rules.items()}
    into: dict[str, set[str]] = {n: set() for n in out}
    for name, targets in out.items():
        for target in targets:
            into[target].add(name)
    # Peel off rules with no edge out or no edge in among the rest: what stays is on a cycle.
    n_out, n_in = {n: len(t) for n, t in out.items()}, {n: len(s) for n, s in into.items()}
    remaining = set(out)
    todo = [n for n in out if not n_out[n] or not n_in[n]]
    while todo:
        name = todo.pop()
        if name not in remaining:
            continue
        remaining.discard(name)
        for target in out[name]:
            n_in[target] -= 1
            todo += [target] if not n_in[target] else []
        for source in into[name]:
            n_out[source] -= 1
            todo += [source] if not n_out[source] else []
    if remaining:
        names = ", ".join(sorted(remaining)[:5])
        raise GrammarError(
            f"The grammar is left-recursive (rule(s) {names} can reach themselves before "
            "writing anything), which llama.cpp cannot run; rewrite it with repetition, e.g. "
            'list ::= item ("," item)*.'
        )


# -- a model's alphabet --------------------------------------------------------------------
_LEAD_LENGTH = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4]  # by the high 4 bits


def _lead_interval(byte: int) -> Interval | None:
    """The code points a token holding only lead byte ``byte`` can begin (as llama.cpp
    decodes partial UTF-8), or ``None``."""
    n = _LEAD_LENGTH[byte >> 4]
    if n < 2:
        return None
    rest = n - 1
    value = byte & ((1 << (7 - rest)) - 1)
    if rest == 1 and value < 2:
        return None  # overlong: llama.cpp rejects it
    low = value << (6 * rest)
    high = low | ((1 << (6 * rest)) - 1)
    if low == 0:
        low = {2: 1 << 11, 3: 1 << 16}.get(rest, low)
    return (low, high)


def _first_code_point(piece: bytes) -> int | None:
    """The first whole code point of ``piece`` as llama.cpp decodes it, else ``None``."""
    n = _LEAD_LENGTH[piece[0] >> 4]
    if n == 0 or len(piece) < n or piece[0] == 0:
        return None
    value = piece[0] & ((1 << (8 - n)) - 1) if n > 1 else piece[0]
    for b in piece[1:n]:
        value = (value << 6) + (b & 0x3F)
    return value


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def alphabet_from_pieces(
    pieces: Iterable[bytes],
    *,
    token_ok: Callable[[int], bool] = ANY_MODEL.token_ok,
    token_id: Callable[[str], int | None] = ANY_MODEL.token_id,
) -> Alphabet:
    """The :class:`Alphabet` of a vocabulary from the pieces of the tokens the grammar may
    pick (not end-of-generation tokens): a character is writable when a token starts with it,
    or when single-byte tokens spell its UTF-8 bytes."""
    firsts: set[int] = set()
    singles: set[int] = set()
    for piece in pieces:
        if not piece or piece[0] == 0:
            continue  # llama.cpp never lets the grammar pick these
        if len(piece) == 1:
            singles.add(piece[0])
        cp = _first_code_point(piece)
        if cp is not None:
            firsts.add(cp)
    spans = [(cp, cp) for cp in firsts]
    if all(b in singles for b in range(0x80, 0xC0)):  # continuation bytes exist
        spans += [iv for b in singles if (iv := _lead_interval(b)) is not None]
    return Alphabet(chars=_merge(spans), token_ok=token_ok, token_id=token_id)


@dataclass
class _ModelGrammars:
    """What is known of one model: its alphabet and the grammars that passed (bounded)."""

    alphabet: Alphabet
    passed: set[str] = field(default_factory=set)


_checked: weakref.WeakKeyDictionary[Any, _ModelGrammars] = weakref.WeakKeyDictionary()
_checked_lock = threading.Lock()


def model_alphabet(model: BackendModel) -> Alphabet:
    """What ``model`` can write under a grammar (built once per model from its vocabulary)."""
    with _checked_lock:
        known = _checked.get(model)
    if known is not None:
        return known.alphabet
    pieces = model.grammar_pieces()

    def single_token(text: str) -> int | None:
        tokens = model.tokenize(text, add_special=False, parse_special=True)
        return tokens[0] if len(tokens) == 1 else None

    usable = {token for token, piece in pieces if piece and piece[0] != 0}
    alphabet = alphabet_from_pieces(
        (piece for _, piece in pieces), token_ok=usable.__contains__, token_id=single_token
    )
    with _checked_lock:
        return _checked.setdefault(model, _ModelGrammars(alphabet)).alphabet


def check_model_grammar(model: BackendModel, grammar: str) -> None:
    """Raise :class:`GrammarError` unless ``model`` can be sampled under ``grammar`` to its
    end: :func:`check_grammar` with the model's alphabet, then the backend's own parser
    (``model.check_grammar``). A grammar that passed is remembered for the model."""
    alphabet = model_alphabet(model)
    known = _checked[model]
    if grammar in known.passed:
        return
    check_grammar(grammar, alphabet)
    model.check_grammar(grammar)
    with _checked_lock:
        if len(known.passed) > 256:
            known.passed.clear()
        known.passed.add(grammar)


# -- JSON schema sizes ---------------------------------------------------------------------
def check_schema_size(schema: Any) -> None:
    """Raise :class:`GrammarError` naming the limit when ``schema``'s grammar would be too
    large to build: a repetition count (``minLength``, ``maxItems``, ... or a pattern's
    ``{n}``) over llama.cpp's :data:`~jupyter_localllm.engine.gbnf.MAX_REPETITION`, their sum
    over :data:`MAX_SCHEMA_REPETITIONS`, an enum over :data:`MAX_ENUM` values, or nesting
    deeper than :data:`MAX_SCHEMA_DEPTH`. Reads the schema once, without recursion."""
    total = 0
    stack: list[tuple[Any, str, int]] = [(schema, "#", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarError(
                f"The JSON schema nests more than {MAX_SCHEMA_DEPTH} levels deep (at "
                f"...{where[-60:]}); "
                "flatten it."
            )
        items = node.items() if isinstance(node, dict) else enumerate(node)
        if isinstance(node, dict):
            total += _node_repetitions(node, where)
            if total > MAX_SCHEMA_REPETITIONS:
                raise GrammarError(
                    f"The JSON schema's lengths and counts add up to more than "
                    f"{MAX_SCHEMA_REPETITIONS} repeated items (at {where}), more than a "
                    "grammar can hold; lower them."
                )
        for key, value in items:
            if isinstance(value, (dict, list)):
                stack.append((value, f"{where}/{key}", depth + 1))


def _node_repetitions(node: dict, where: str) -> int:
    """The items one schema object repeats (its counts, its pattern's quantifiers); raises
    :class:`GrammarError` for a count over llama.cpp's limit or an enum over :data:`MAX_ENUM`."""
    counts = {k: node[k] for k in _COUNTS if _is_number(node.get(k))}
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        counts["pattern"] = _pattern_items(pattern)
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM:
        raise GrammarError(
            f"The JSON schema's enum at {where} has {len(enum)} values, more than the "
            f"{MAX_ENUM} a grammar may list; use a string with a pattern, or fewer values."
        )
    for key, value in counts.items():
        if value > MAX_REPETITION and key != "pattern":
            raise GrammarError(
                f"The JSON schema asks for {key}={value} at {where}, more than the "
                f"{MAX_REPETITION} repetitions llama.cpp's grammars allow; lower it (or drop "
                "it and check the length after extraction)."
            )
    return int(sum(counts.values()))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pattern_items(pattern: str) -> int:
    """Items a regular expression writes out once its ``{m,n}`` quantifiers are expanded
    (an upper bound: nested quantifiers multiply); raises :class:`GrammarError` for a count
    over llama.cpp's limit or an expansion over :data:`MAX_SCHEMA_REPETITIONS`."""
    groups = [[0, 0]]  # per open group: items so far, items of the last atom
    i = 0
    while i < len(pattern):
        c, atom = pattern[i], 1
        if c == "{" and (m := _QUANTIFIER.match(pattern, i)):
            low, comma, high = m.groups()
            count = max(int(low or 0), int(high or 0)) + (1 if comma and not high else 0)
            if count > MAX_REPETITION:
                raise GrammarError(
                    f"The JSON schema's pattern {pattern[:60]!r} repeats {count} times, more "
                    f"than the {MAX_REPETITION} repetitions llama.cpp's grammars allow; "
                    "lower it."
                )
            top = groups[-1]
            top[0] += top[1] * (count - 1)
            top[1] *= count
            i = m.end()
            if top[0] > MAX_SCHEMA_REPETITIONS:
                raise GrammarError(
                    f"The JSON schema's pattern {pattern[:60]!r} expands to more than "
                    f"{MAX_SCHEMA_REPETITIONS} items, more than a grammar can hold; simplify it."
                )
            continue
        if c == "(":
            groups.append([0, 0])
            i += 1
            continue
        if c == ")" and len(groups) > 1:
            atom = groups.pop()[0]
        elif c == "\\":
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            i = end if end > 0 else len(pattern)
        elif c in "|*+?^$":
            atom = 0
        groups[-1][0] += atom
        groups[-1][1] = atom
        i += 1
    return groups[0][0]
