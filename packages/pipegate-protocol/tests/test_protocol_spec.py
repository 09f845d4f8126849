"""docs/protocol.md agrees with the code: its worked example is byte-exact, its rule ids
are unique, and every rule id the code cites exists."""

from __future__ import annotations

import re
from pathlib import Path

from pipegate_protocol import (
    CAPABILITY_HOSTNAMES,
    CAPABILITY_WEBSOCKET,
    Connection,
    Data,
    Limits,
    Role,
    WebSocketData,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "docs" / "protocol.md"
SOURCE = ROOT / "packages" / "pipegate-protocol" / "src" / "pipegate_protocol"
RULE_ID = re.compile(r"\b(?:VE|HS|FR|ST|FC|HD|WS|LV|ER)-\d+\b")


def spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def defined_rule_ids() -> list[str]:
    return re.findall(r"^\*\*((?:VE|HS|FR|ST|FC|HD|WS|LV|ER)-\d+) — ", spec_text(), re.M)


def test_rule_ids_are_defined_once_and_numbered_in_order() -> None:
    ids = defined_rule_ids()
    assert len(ids) == len(set(ids)), "a rule id is defined twice"
    by_group: dict[str, list[int]] = {}
    for rule_id in ids:
        group, number = rule_id.split("-")
        by_group.setdefault(group, []).append(int(number))
    assert set(by_group) == {"VE", "HS", "FR", "ST", "FC", "HD", "WS", "LV", "ER"}
    for group, numbers in by_group.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"{group} ids have gaps"


def test_every_rule_id_cited_anywhere_is_defined() -> None:
    defined = set(defined_rule_ids())
    cited: set[str] = set(RULE_ID.findall(spec_text()))
    for path in SOURCE.glob("*.py"):
        cited |= set(RULE_ID.findall(path.read_text(encoding="utf-8")))
    for path in Path(__file__).parent.glob("test_*.py"):
        cited |= {
            m.replace("_", "-") for m in re.findall(r"test_([A-Z]{2}_\d+)_", path.read_text())
        }
    assert cited - defined == set()


def example_lines() -> list[tuple[str, str, str]]:
    """(direction, T|B, content) of each WebSocket message in the worked example."""
    section = spec_text().split("## 12. Worked example", 1)[1]
    found = re.findall(r"^(S→C|C→S) ([TB]) (.+)$", section, re.M)
    assert found, "the worked example lists no messages"
    return found


def test_worked_example_is_what_the_reference_sends() -> None:
    server = Connection(
        Role.SERVER,
        agent="pipegate-server/1.0.0",
        connection_id="node",
        public_url="https://example.com/node",
        public_urls=["https://node.example.com/", "https://example.com/node/"],
        hostnames=["node.example.com"],
        capabilities=[CAPABILITY_HOSTNAMES],
    )
    client = Connection(
        Role.CLIENT,
        capabilities=[CAPABILITY_WEBSOCKET],
        agent="pipegate-client/1.0.0",
        limits=Limits(max_concurrent_streams=64),
    )
    produced: list[tuple[str, str | bytes]] = []

    def move(source: Connection, target: Connection, direction: str) -> None:
        for payload in source.data_to_send():
            produced.append((direction, payload))
            target.receive(payload)

    move(server, client, "S→C")
    move(client, server, "C→S")
    stream_id = server.open_stream(
        method="POST",
        path="/articles/caf%C3%A9",
        query="a=1&a=2&b=",
        headers=[
            ("host", "example.com"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-prefix", "/node"),
        ],
        scheme="https",
        client_host="203.0.113.7",
        client_port=51234,
    )
    server.send_data(stream_id, b"hello", end_stream=True)
    move(server, client, "S→C")
    client.send_response(
        stream_id,
        201,
        [("content-type", "text/plain"), ("set-cookie", "a=1"), ("set-cookie", "b=2")],
    )
    client.send_data(stream_id, b"ok")
    client.send_data(stream_id, b"", end_stream=True)
    move(client, server, "C→S")

    expected = example_lines()
    assert len(produced) == len(expected)
    for (direction, payload), (doc_direction, kind, content) in zip(
        produced, expected, strict=True
    ):
        assert direction == doc_direction
        if kind == "T":
            assert payload == content
        else:
            assert payload == bytes.fromhex(content)
    assert server.open_streams == client.open_streams == 0


def test_worked_example_websocket_frames() -> None:
    section = spec_text().split("## 12. Worked example", 1)[1]
    assert "`81 00 00 00 03 68 69`" in section
    assert encode(WebSocketData(3, b"hi", text=True, fin=True)) == bytes.fromhex("810000000368 69")
    assert "`02 00 00 00 03 68 69`" in section
    assert decode(bytes.fromhex("02 00 00 00 03 68 69")) == WebSocketData(
        3, b"hi", text=False, fin=False
    )
    frame = encode(Data(1, b"hello", end_stream=True))
    assert isinstance(frame, bytes)
    assert frame.hex(" ") == "80 00 00 00 01 68 65 6c 6c 6f"
