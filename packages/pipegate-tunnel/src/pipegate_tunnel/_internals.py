"""The one reach of this package under a library's private state.

Both roles read plain tunnel frames past websockets' sans-I/O parser (the server
under uvicorn, the client under websockets' asyncio connection; see each package's
``_internals.py``), and both may start only from a frame boundary. This module
answers that question from the parser's private state, duck-typed: it imports no
websockets, and is only ever handed a websockets ``Protocol`` object by those two
modules.

Reaches (tested with websockets 16.0 and 17.4):

1. in :func:`library_at_frame_boundary`: ``extensions``, ``current_size``,
   ``reader.buffer``, ``max_fragment_size`` and the generator chain of ``parser``
   (``gi_yieldfrom``, ``gi_code.co_name == "at_eof"``);
2. :data:`LIBRARY_MASK`: ``websockets.speedups.apply_mask``, the library's C masking
   function (not in its documented API), imported when websockets is installed (both
   roles have it): our pure-Python :func:`~pipegate_tunnel.apply_mask` is 6 times
   slower on 100 bytes and 172 times on 256 KiB. Without websockets, the pure one.
"""

from __future__ import annotations

from typing import Any

from ._wsframes import MaskFunction, apply_mask

__all__ = ["LIBRARY_MASK", "library_at_frame_boundary"]


def _library_mask() -> MaskFunction:
    try:  # the library's C extension, as its own framing uses
        from websockets.speedups import apply_mask as speedup
    except ImportError:  # pragma: no cover - no websockets, or a pure-Python build of it
        return apply_mask
    return speedup


#: The fastest masking function at hand (see the module docstring).
LIBRARY_MASK: MaskFunction = _library_mask()


def library_at_frame_boundary(protocol: Any) -> bool:
    """True when websockets' sans-I/O parser has nothing buffered and waits for the
    first byte of a frame, with no message in progress and no extension: from there
    on, whole frames can be read past it, and any rest handed back to it at a frame
    boundary.

    An empty buffer alone does not say it: the parser may have taken a frame's header
    and wait for its payload. The innermost generator it waits in tells: ``at_eof``
    between frames, ``read_exact`` within one. On a websockets without these
    attributes the answer is False, and the library reads every frame.
    """
    try:
        if protocol.extensions or protocol.current_size is not None or protocol.reader.buffer:
            return False
        if protocol.max_fragment_size is not None:
            return False
        waiting = protocol.parser
        while waiting.gi_yieldfrom is not None:
            waiting = waiting.gi_yieldfrom
        return bool(waiting.gi_code.co_name == "at_eof")
    except AttributeError:
        return False
