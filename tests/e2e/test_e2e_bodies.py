"""Binary bodies both ways through a real tunnel, compared by sha256.

Sizes 0 B, 1 B, 1 MiB and 100 MiB; the 100 MiB ones are streamed by the test (a
generator up, ``iter_bytes`` down) so that neither the test nor, if the tunnel
streams, any process holds the whole body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
from e2e_support import MiB, expected_sha256, sha256_of
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.origin import pattern_chunks

SIZES = [0, 1, MiB, 100 * MiB]
SIZE_IDS = ["0B", "1B", "1MiB", "100MiB"]


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_download_arrives_intact(
    tunnel: Tunnel, http: httpx.Client, size: int, chunked: bool
) -> None:
    url = f"{tunnel.public_url}/bytes/{size}" + ("?chunked=1" if chunked else "")
    with http.stream("GET", url) as response:
        assert response.status_code == 200, response.read()[:300]
        if not chunked:
            assert response.headers["content-length"] == str(size)
        length, digest = sha256_of(response.iter_bytes())
    assert length == size
    assert digest == expected_sha256(size)


class _CountingChunks:
    """An upload body that is produced while it is sent, hashing what it yields."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for piece in pattern_chunks(self.size):
            self.sent += len(piece)
            self.digest.update(piece)
            yield piece


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_arrives_intact(tunnel: Tunnel, http: httpx.Client, size: int, framing: str) -> None:
    body = _CountingChunks(size)
    headers = {"content-type": "application/octet-stream"}
    if framing == "content-length":
        headers["content-length"] = str(size)
    response = http.post(f"{tunnel.public_url}/upload", content=iter(body), headers=headers)
    assert response.status_code == 200, response.text[:300]
    assert body.sent == size
    assert response.json() == {"length": size, "sha256": expected_sha256(size)}
    assert response.json()["sha256"] == body.digest.hexdigest()


def test_upload_echo_keeps_every_byte_value(tunnel: Tunnel, http: httpx.Client) -> None:
    """All 256 byte values, twice, come back unchanged (no text decoding on the way)."""
    payload = bytes(range(256)) * 2
    response = http.put(f"{tunnel.public_url}/echo/raw", content=payload)
    assert response.status_code == 200
    report = response.json()
    assert report["method"] == "PUT"
    assert report["body_length"] == len(payload)
    assert report["body_sha256"] == hashlib.sha256(payload).hexdigest()
