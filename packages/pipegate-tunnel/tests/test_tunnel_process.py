"""Process-wide tuning and the shared library reaches of pipegate-tunnel."""

from __future__ import annotations

import gc

from pipegate_tunnel import GC_YOUNG_THRESHOLD, OP_BINARY, apply_mask, client_frame, tune_gc
from pipegate_tunnel._internals import LIBRARY_MASK, library_at_frame_boundary
from websockets.http11 import Request
from websockets.server import ServerProtocol


def test_tune_gc_freezes_start_up_objects_and_collects_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        assert GC_YOUNG_THRESHOLD > 700  # Python's default
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_library_mask_is_websockets_c_function_and_agrees_with_ours() -> None:
    assert type(LIBRARY_MASK).__name__ == "builtin_function_or_method"
    data, key = bytes(range(256)) * 5, b"\x01\x02\x03\x04"
    assert LIBRARY_MASK(data, key) == apply_mask(data, key)


def test_frame_boundary_is_read_from_the_parser_state() -> None:
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    client = ClientProtocol(parse_uri("ws://127.0.0.1/node"))
    protocol = ServerProtocol()
    client.send_request(client.connect())
    protocol.receive_data(b"".join(client.data_to_send()))
    (request,) = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    assert library_at_frame_boundary(protocol)
    frame = client_frame(OP_BINARY, b"x" * 300, b"abcd", apply_mask)
    protocol.receive_data(frame[:4])  # inside a frame: the header is half read
    assert not library_at_frame_boundary(protocol)
    protocol.receive_data(frame[4:])
    assert library_at_frame_boundary(protocol)
    assert not library_at_frame_boundary(object())  # not a websockets protocol
