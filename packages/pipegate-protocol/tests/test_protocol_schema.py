"""docs/protocol.schema.json is generated from the models and must never go stale."""

from __future__ import annotations

import json
from pathlib import Path

from pipegate_protocol import KNOWN_VERSIONS, protocol_json_schema

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "protocol.schema.json"
REGENERATE = "uv run python -m pipegate_protocol.schema > docs/protocol.schema.json"


def test_schema_file_is_up_to_date() -> None:
    assert SCHEMA_PATH.is_file(), f"{SCHEMA_PATH} is missing; create it with: {REGENERATE}"
    on_disk = SCHEMA_PATH.read_text(encoding="utf-8")
    assert on_disk == protocol_json_schema(), (
        f"{SCHEMA_PATH} is stale (the models changed); regenerate it with: {REGENERATE}"
    )


def test_schema_is_deterministic_json() -> None:
    assert protocol_json_schema() == protocol_json_schema()
    assert protocol_json_schema().endswith("}\n")


def test_FR_1_schema_covers_every_message_type_and_requires_type() -> None:
    schema = json.loads(protocol_json_schema())
    mapping = schema["discriminator"]["mapping"]
    assert set(mapping) == {
        "hello",
        "open",
        "response",
        "window_update",
        "reset",
        "ws_close",
        "ping",
        "pong",
        "goaway",
    }
    assert schema["discriminator"]["propertyName"] == "type"
    for ref in mapping.values():
        definition = schema["$defs"][ref.rsplit("/", 1)[-1]]
        assert definition["required"][0] == "type"


def test_VE_1_schema_lists_known_versions() -> None:
    schema = json.loads(protocol_json_schema())
    assert schema["$defs"]["ProtocolVersion"]["enum"] == [v.value for v in KNOWN_VERSIONS]
    assert "do not edit" in schema["$comment"]
