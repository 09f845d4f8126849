"""JSON Schema of the control messages, the source of ``docs/protocol.schema.json``."""

from __future__ import annotations

import json
from typing import Any

from ._models import CONTROL_MESSAGE_ADAPTER
from ._versions import KNOWN_VERSIONS

__all__ = ["protocol_json_schema"]


def protocol_json_schema() -> str:
    """The schema as deterministic JSON text (sorted keys, trailing newline).

    ``docs/protocol.schema.json`` must equal this; a test fails when it is stale.
    Regenerate with ``uv run python -m pipegate_protocol.schema > docs/protocol.schema.json``.
    """
    schema: dict[str, Any] = CONTROL_MESSAGE_ADAPTER.json_schema(mode="serialization")
    for definition in schema.get("$defs", {}).values():
        # ``type`` has a default in the models, but a message without it cannot be
        # decoded (it is the discriminator), so the schema requires it.
        if "const" in definition.get("properties", {}).get("type", {}):
            definition["required"] = ["type", *definition.get("required", [])]
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            "Generated from pipegate_protocol; do not edit. Regenerate with: "
            "uv run python -m pipegate_protocol.schema > docs/protocol.schema.json"
        ),
        "title": "PipeGate control message",
        "description": (
            "A PipeGate control message, sent as JSON in a WebSocket text message. "
            "Protocol versions: " + ", ".join(v.value for v in KNOWN_VERSIONS) + ". "
            "Body bytes travel in binary data frames, described in docs/protocol.md. "
            "Stricter than JSON Schema can say: every integer is written without fraction "
            "or exponent (1.0 and 1e2 are invalid, FR-8); no object repeats a member name "
            "(FR-9); a ws_close reason is at most 123 bytes of UTF-8 (WS-4)."
        ),
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
