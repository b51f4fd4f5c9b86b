"""What ``jupyter-localllm run`` was asked to do: the options, checked, as one
:class:`RunSpec`; :class:`BadInput`, the error the user fixes by changing the command, and
:class:`RunFailed`, a failure while running (a full disk)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults

if TYPE_CHECKING:
    from .. import SamplingParams

__all__ = [
    "DEFAULT_COLUMNS",
    "BadInput",
    "RunFailed",
    "RunSpec",
    "load_schema",
    "parse_labels",
    "reason",
    "template_of",
]

DEFAULT_COLUMNS = {"generate": "llm_output", "classify": "label", "extract": "extract"}
"""``--column-out``'s default per task (extract's names only the error column)."""


class BadInput(Exception):
    """Input the user can fix (a file, a column, an option): one line on stderr, exit 2."""


class RunFailed(Exception):
    """A failure while running (OUTPUT cannot be written): one line on stderr, exit 1."""


@dataclass(frozen=True)
class RunSpec:
    """One ``run``: the files, the prompt template, the task's options and the model's."""

    input: Path
    out: Path
    template: str
    labels: tuple[str, ...] | None = None
    """Classify into these labels."""
    schema: dict[str, Any] | None = None
    """Extract this JSON schema's top-level properties."""
    model: str = defaults.DEFAULT_MODEL
    n_seq_max: int = defaults.N_SEQ_MAX
    max_tokens: int = defaults.MAX_TOKENS
    seed: int = defaults.SEED
    deterministic: bool = defaults.DETERMINISTIC
    """Batch-invariant decoding: a row's text does not depend on --n-seq-max or the cluster."""
    cluster: str | None = None
    """A Dask scheduler address, passed on as ``cluster=``."""
    column_out: str | None = None
    encoding: str = "utf-8"
    """INPUT's text encoding (CSV, JSON Lines) when it has no byte-order mark."""

    @property
    def task(self) -> str:
        """``generate``, ``classify`` or ``extract``."""
        if self.labels is not None:
            return "classify"
        return "extract" if self.schema is not None else "generate"

    @property
    def base(self) -> str:
        """The output column's name (extract: the error column's stem)."""
        return self.column_out or DEFAULT_COLUMNS[self.task]

    @property
    def properties(self) -> list[str]:
        """The schema's top-level properties (extract), else ``[]``."""
        return list((self.schema or {}).get("properties", {}))

    @property
    def output_columns(self) -> list[str]:
        """The value columns: ``base``, or one per property (``NAME_prop`` with
        ``--column-out NAME``)."""
        if self.task != "extract":
            return [self.base]
        prefix = f"{self.column_out}_" if self.column_out else ""
        return [prefix + name for name in self.properties]

    @property
    def error_column(self) -> str:
        """The column that says why a row failed (empty when it did not)."""
        return f"{self.base}_error"

    @property
    def columns(self) -> list[str]:
        """Every column the run adds to the input's."""
        return [*self.output_columns, self.error_column]

    @property
    def sampling(self) -> SamplingParams:
        """The sampling of generate and extract (the rest: the defaults table's)."""
        from .. import SamplingParams

        return SamplingParams(max_tokens=self.max_tokens, seed=self.seed)


def template_of(template: str | None, column: str | None) -> str:
    """The prompt template: ``template``, ``{column}``, or ``{text}``."""
    if template is not None and column is not None:
        raise BadInput("give --template or --column, not both")
    if template is not None:
        return template
    return "{" + (column or "text") + "}"


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    """``"A,B,C"`` as labels, checked as :func:`~jupyter_localllm.classify` checks them."""
    if text is None:
        return None
    from ..tasks.classification import LabelSpec

    labels = [part.strip() for part in text.split(",")]
    try:
        return LabelSpec(labels).labels
    except ValueError as exc:
        raise BadInput(f"--labels {text!r}: {exc}") from None


def load_schema(path: str | None) -> dict[str, Any] | None:
    """The JSON schema in file ``path``: an object schema with ``properties``."""
    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read the schema file {path}: {reason(exc)}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"the schema file {path} is not JSON: {exc}") from None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        raise BadInput(
            f"the schema file {path} needs an object schema with 'properties', like "
            '{"type": "object", "properties": {"name": {"type": "string"}}}'
        )
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BadInput(
            f"the schema file {path} is not a valid JSON schema: {exc.message}"
        ) from None
    return schema


def reason(exc: BaseException) -> str:
    """The first line of ``exc``'s message (an OS error's reason; its type when it has none)."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
