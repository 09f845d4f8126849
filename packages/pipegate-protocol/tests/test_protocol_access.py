"""AC-1 and AC-2: the visitor rules a client's hello may carry."""

from __future__ import annotations

import pytest
from pipegate_protocol import (
    CAPABILITY_ACCESS,
    AccessPolicy,
    Connection,
    DecodeError,
    Hello,
    ProtocolVersion,
    Role,
    decode,
)
from pydantic import ValidationError

HASH = "$2b$12$8.n9JSDQDTeE/OC2JlgHHeTiKA.XUihHGwyZQimQPnZByebiUVt7m"


def test_a_client_hello_carries_rules_and_a_v1_hello_none() -> None:
    policy = AccessPolicy(users={"admin": HASH}, allow=("192.0.2.0/24", "::1"), deny=("10.0.0.1",))
    client = Connection(Role.CLIENT, access=policy)
    (payload,) = client.data_to_send()
    hello = decode(payload)
    assert isinstance(hello, Hello)
    assert hello.access == policy
    # A v1 hello (no member at all) decodes with no rules.
    v1 = decode('{"type":"hello","version":"pipegate.v1","role":"client"}')
    assert isinstance(v1, Hello)
    assert v1.access is None
    assert CAPABILITY_ACCESS == "access"


@pytest.mark.parametrize(
    "access",
    [
        {"users": {"admin": "plain-password"}},
        {"users": {"admin": HASH.replace("$12$", "$15$")}},
        {"users": {"admin": HASH.replace("$12$", "$03$")}},
        {"users": {"ad:min": HASH}},
        {"users": {"": HASH}},
        {"users": {f"u{i}": HASH for i in range(65)}},
        {"allow": ["not a network"]},
        {"deny": ["10.0.0.0/8"] * 257},
    ],
)
def test_rules_that_break_the_schema_are_decode_errors(access: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AccessPolicy.model_validate(access)
    import json

    message = json.dumps(
        {"type": "hello", "version": ProtocolVersion.V1.value, "role": "client", "access": access}
    )
    with pytest.raises(DecodeError):
        decode(message)
