"""Process-wide tuning both command lines apply right before they serve."""

from __future__ import annotations

import gc

__all__ = ["GC_YOUNG_THRESHOLD", "tune_gc"]

#: Containers allocated before a young-generation collection (Python's default: 700).
GC_YOUNG_THRESHOLD = 5000


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never again scan what start-up made.

    Everything imported and built before serving (FastAPI, uvicorn, websockets,
    pydantic's validators, the protocol core) lives as long as the process; frozen,
    the collector skips it. A young generation of 5000 containers instead of 700 is
    collected about seven times less often, and each request's objects are freed by
    reference counting anyway. Measured with wrk at concurrency 64 through the
    tunnel, collection time per request went from 8 us to 0.9 us in the server and
    from 1.8 us to 0.3 us in the client. Process-wide, so only a command line calls
    it, right before it serves.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
