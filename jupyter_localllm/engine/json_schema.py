"""JSON schemas as grammars: the converter's output checked before any sampler sees it."""

from __future__ import annotations

import json

from ..errors import GrammarError
from .factory import json_schema_to_gbnf
from .grammar import check_grammar

__all__ = ["json_schema_to_grammar"]


def json_schema_to_grammar(schema: dict) -> str:
    """A GBNF grammar accepting exactly the JSON documents of ``schema`` (llama-cpp-python's
    converter), checked by parsing it before any sampler sees it."""
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare errors on unsupported schemas
        raise GrammarError(
            f"The JSON schema cannot be turned into a grammar ({exc}); simplify it "
            "(plain objects, arrays, strings, numbers, enums)."
        ) from exc
    if not grammar.strip():
        raise GrammarError("The JSON schema produced an empty grammar; give it some properties.")
    check_grammar(
        grammar,
        subject="The grammar of this JSON schema",
        fix="change the schema (its const, enum and pattern values)",
    )
    return grammar
