"""RT-3 and RT-4: hostname normal form, id labels, grants and the hostname header."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipegate_protocol import (
    HOSTNAME_HEADER,
    MAX_REQUESTED_HOSTNAMES,
    host_of_authority,
    hostname_matches,
    is_dns_label,
    is_valid_connection_id,
    label_for,
    normalize_hostname,
    requested_hostnames,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("API.Example.com.", "api.example.com"),
        ("node.localhost", "node.localhost"),
        ("xn--caf-dma.example", "xn--caf-dma.example"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("a" * 64 + ".com", None),
        ("-bad.example.com", None),
        ("bad-.example.com", None),
        ("under_score.example.com", None),
        ("café.example", None),
        ("two..dots", None),
        ("", None),
        (".", None),
        ("host:80", None),
        (".".join(["abcdefghi"] * 26), None),  # 259 characters
    ],
)
def test_normal_form(value: str, expected: str | None) -> None:
    assert normalize_hostname(value) == expected


@pytest.mark.parametrize(
    ("connection_id", "ok"),
    [
        ("node", True),
        ("Node-1", True),
        ("a", True),
        ("9", True),
        ("my_app", False),
        ("-x", False),
        ("x-", False),
        ("a" * 63, True),
        ("a" * 64, False),
    ],
)
def test_ids_that_can_be_labels(connection_id: str, ok: bool) -> None:
    assert is_valid_connection_id(connection_id)
    assert is_dns_label(connection_id) is ok


def test_label_is_lower_case() -> None:
    assert label_for("Node-A") == "node-a"


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("Node.LocalHost:8000", "node.localhost"),
        ("node.example.com", "node.example.com"),
        ("node.example.com.:443", "node.example.com"),
        ("127.0.0.1:8000", None),
        ("127.0.0.1", None),
        ("[::1]:8000", None),
        ("", None),
        ("bad_host:80", None),
    ],
)
def test_host_of_authority(authority: str, expected: str | None) -> None:
    assert host_of_authority(authority) == expected


@pytest.mark.parametrize(
    ("pattern", "hostname", "ok"),
    [
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "www.example.com", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("*.example.com", "evilexample.com", False),
    ],
)
def test_grants(pattern: str, hostname: str, ok: bool) -> None:
    assert hostname_matches(pattern, hostname) is ok


def test_requested_hostnames_split_normalise_and_dedupe() -> None:
    headers = [
        ("PipeGate-Hostname", "API.example.com, www.example.com."),
        ("x-other", "ignored.example.com"),
        (HOSTNAME_HEADER, "api.example.com"),
    ]
    assert requested_hostnames(headers) == ["api.example.com", "www.example.com"]
    assert requested_hostnames([]) == []


def test_requested_hostnames_refuse_bad_names_and_too_many() -> None:
    with pytest.raises(ValueError, match="not a valid hostname"):
        requested_hostnames([(HOSTNAME_HEADER, "ok.example.com, bad_name.example.com")])
    many = ",".join(f"h{i}.example.com" for i in range(MAX_REQUESTED_HOSTNAMES + 1))
    with pytest.raises(ValueError, match="at most"):
        requested_hostnames([(HOSTNAME_HEADER, many)])


@given(st.text(max_size=80))
def test_normal_form_is_idempotent_and_never_raises(value: str) -> None:
    normal = normalize_hostname(value)
    if normal is not None:
        assert normalize_hostname(normal) == normal
        assert normal == normal.lower()
        assert not normal.endswith(".")
