"""``extract``: a JSON object matching a schema from each text, generated under a grammar
built from the schema and checked against it. A short builder of an ``"extract"``
:class:`~jupyter_localllm.session.pipeline.BatchRequest`; the session runs it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine.grammar import check_schema_size
from ..engine.json_schema import json_schema_to_grammar
from ..engine.runner import GenerationContext
from ..engine.sampling import SamplingParams
from ..errors import InvalidParameterError
from ..session.executors import Plan, execute, single
from ..session.pipeline import BatchRequest, resolve_sampling
from ..session.sinks import rows_to_sink
from ..types import Progress, Result, Results
from .generation import SamplingArg, check_context
from .options import check_text_option, checked_names, field_names
from .prompts import as_texts, check_format, render_rows, resolve_format

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = ["ExtractSpec", "extract", "extraction_plan", "json_schema"]


def json_schema(schema: Mapping[str, Any] | type) -> dict[str, Any]:
    """``schema`` as a JSON-schema dict (a pydantic model class gives its schema)."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if not isinstance(schema, Mapping):
        raise InvalidParameterError("schema must be a JSON-schema dict or a pydantic model.")
    return dict(schema)


@dataclass(frozen=True)
class ExtractSpec:
    """What :func:`extract` asks of every row, checked once when built: each public function
    that extracts (``extract``, ``%%llm -f json``, ``df.llm.extract``, ``ddf.llm.extract``,
    the command) builds one and passes it down; copy it with :func:`dataclasses.replace`.
    Picklable, so Dask sends it to workers."""

    schema: Mapping[str, Any]
    """The JSON schema each answer must match (a pydantic model class gives its schema)."""

    instruction: str | None = None
    """The instruction before each text; ``None`` is one giving the schema (none for
    ``format="raw"``)."""

    system_prompt: str | None = None
    """The system prompt (``"chat"``), or the first paragraph (``"plain"``)."""

    format: str = "auto"
    """``"chat"``, ``"plain"``, ``"raw"``, or ``"auto"``: chat when the model has a template."""

    sampling: SamplingParams | tuple[SamplingParams, ...] = field(default_factory=SamplingParams)
    """How tokens are chosen (the defaults table's ``max_tokens``), or one per row; the
    schema's grammar is added to it when the rows run."""

    def __post_init__(self) -> None:
        schema = json_schema(self.schema)
        check_schema_size(schema)  # before the converter writes every repetition out
        object.__setattr__(self, "schema", schema)
        check_text_option("instruction", self.instruction)
        check_text_option("system_prompt", self.system_prompt)
        check_format(self.format)
        params = resolve_sampling(self.sampling, {})
        object.__setattr__(
            self, "sampling", params if isinstance(params, SamplingParams) else tuple(params)
        )

    @property
    def properties(self) -> list[str]:
        """The schema's top-level properties (the columns of a DataFrame run)."""
        return list(self.schema.get("properties", {}))

    @classmethod
    def from_kwargs(
        cls, schema: Mapping[str, Any] | type, *, sampling: SamplingArg = None, **options: Any
    ) -> ExtractSpec:
        """The spec of ``schema`` from a front-end's keywords: the prompt's by name, the rest
        sampling keywords (an unknown one is an :class:`InvalidParameterError` naming the
        accepted ones)."""
        own = set(field_names(cls)) - {"schema", "sampling"}
        checked_names("extract", [*sorted(own), *SamplingParams.field_names()], options)
        prompt = {k: v for k, v in options.items() if k in own}
        shorthand = {k: v for k, v in options.items() if k not in own}
        return cls(schema, sampling=resolve_sampling(sampling, shorthand), **prompt)


def _value(request: BatchRequest, result: Result) -> dict | Result:
    """A row as :func:`extract` returns it: the parsed dict, or the error result."""
    return result.value if result.ok else result


def extraction_plan(
    context: GenerationContext,
    texts: Sequence[Any],
    spec: ExtractSpec,
    *,
    cache: bool | None = None,
    errors: Mapping[int, str] | None = None,
) -> Plan[list[dict | Result]]:
    """The plan of :func:`extract` (for front-ends that run it their own way); rows are
    seen as the parsed dict or the error result."""
    check_context(context)
    texts = as_texts(texts)
    schema = spec.schema
    grammar = json_schema_to_grammar(schema)
    fmt = resolve_format(context.model, spec.format)
    instruction = spec.instruction
    if instruction is None and fmt != "raw":
        instruction = (
            f"Extract the information from the text as JSON with this schema: {json.dumps(schema)}"
        )
    rows, bad = render_rows(context.model, fmt, texts, instruction, spec.system_prompt)
    params = resolve_sampling(spec.sampling, {"grammar": grammar})
    shown = (
        params.as_dict()
        if isinstance(params, SamplingParams)
        else {"sampling": [p.as_dict() for p in params]}
    )
    request = BatchRequest(
        context,
        rows,
        kind="extract",
        sampling=params,
        schema=schema,
        cache=cache,
        errors={**bad, **(errors or {})},
        what="text",
        function="extract",
        log_params={**shown, "schema": schema, "n_seq_max": context.n_seq_max},
    )

    def finish(results: Results) -> list[dict | Result]:
        return [_value(request, r) for r in results]

    return single(request, finish, desc="extract", view=_value)


def extract(
    context: GenerationContext,
    prompts: Sequence[str],
    schema: Mapping[str, Any] | type,
    *,
    instruction: str | None = None,
    system_prompt: str | None = None,
    format: str = "auto",
    sampling: SamplingArg = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
    cache: bool | None = None,
    background: bool = False,
    cluster: Any = None,
    sink: Any = None,
    **sampling_kwargs: Any,
) -> list[dict | Result] | Job:
    """Extract a JSON object matching ``schema`` from each text.

    ``schema`` is a JSON-schema dict or a pydantic model class. Generation is constrained by a
    grammar built from the schema, in the batched engine; each output is parsed and checked
    against the schema. Returns, in input order, a dict per row, or an error
    :class:`Result` (text ``"Error: …"``) in place of a row whose output is not valid.
    Sampling as in :func:`~jupyter_localllm.generate` (``max_tokens`` defaults to the
    table's 100, see :mod:`~jupyter_localllm.defaults`).

    A KeyboardInterrupt (or setting ``cancel``) raises :class:`BatchInterrupted` whose
    ``results`` hold every finished row (``value``: the parsed dict). ``background=True``
    returns a :class:`~jupyter_localllm.Job` at once (see
    :func:`~jupyter_localllm.generate_parallel`); ``job.partial()`` holds each finished row's
    dict or error, ``job.result()`` the list. ``cluster``: run on a Dask cluster's workers
    (see :func:`~jupyter_localllm.generate_parallel`). ``sink`` (a CSV path or
    :func:`~jupyter_localllm.annotation_sink_csv`) appends each row as it finishes (``row``,
    ``model``, one column per top-level property, lists and objects as JSON, ``error``,
    ``prompt_hash``); a re-run appends only the rows it lacks.
    """
    spec = ExtractSpec(
        schema,
        instruction=instruction,
        system_prompt=system_prompt,
        format=format,
        sampling=resolve_sampling(sampling, sampling_kwargs),
    )
    plan = extraction_plan(context, prompts, spec, cache=cache)
    plan = rows_to_sink(plan, sink, [*spec.properties, "error"])
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)
