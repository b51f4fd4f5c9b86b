"""Messages of the ``jupyter_localllm`` comm as the JupyterLab extension sends them, and
validators of the one JSON schema (jupyter_localllm/notebook/comm_schema.json), shared by
tests/test_comm.py (in-process) and tests/test_comm_kernel.py (a real kernel)."""

from __future__ import annotations

import itertools
import json

import jsonschema

from jupyter_localllm.notebook import protocol
from jupyter_localllm.notebook.protocol import PROTOCOL

_request_ids = itertools.count(1)


def request(action, **fields) -> dict:
    """A request as the extension sends it: this protocol, a fresh request_id."""
    return {
        "action": action,
        "protocol": PROTOCOL,
        "request_id": f"t{next(_request_ids)}",
        **fields,
    }


def schema_validator(definition: str) -> jsonschema.protocols.Validator:
    schema = json.loads(protocol.SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls({"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]})


KERNEL_MESSAGE = schema_validator("kernel_message")
REQUEST = schema_validator("request")
REQUEST_ID = schema_validator("request_id")
