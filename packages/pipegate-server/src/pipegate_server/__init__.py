"""PipeGate server: the public end of a tunnel.

``create_app(ServerSettings(...))`` builds the ASGI application (proxy headers around
FastAPI); ``create_server(settings, host=..., port=...)`` builds the uvicorn server
around it, exactly as the ``pipegate-server`` command line runs it. Everything
importable from here is public.
"""

from typing import TYPE_CHECKING, Any

from ._app import Gateway, __version__, create_app
from ._factory import PipeGateServer, ServerApp, create_server
from ._registry import Claim, ClusterRequest, Presence, TunnelDirectory, TunnelRegistry, Whereabouts
from ._routing import PathRouter, Route, RouteKind, Router
from ._settings import ServerSettings
from .errors import (
    BodyTooLargeError,
    CallerGoneError,
    ConfigurationError,
    DirectoryUnavailableError,
    HeadersTooLargeError,
    RelayError,
    ResponseTimeoutError,
    ServerError,
    StreamResetError,
    TokensFileError,
    TunnelBusyError,
    TunnelClosedError,
    TunnelNotFoundError,
    TunnelOfflineError,
)

if TYPE_CHECKING:
    from ._cluster import ClusterDirectory


def __getattr__(name: str) -> Any:
    # ClusterDirectory imports redis (about 0.3 s): only cluster nodes pay for it.
    if name == "ClusterDirectory":
        from ._cluster import ClusterDirectory

        return ClusterDirectory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BodyTooLargeError",
    "CallerGoneError",
    "Claim",
    "ClusterDirectory",
    "ClusterRequest",
    "ConfigurationError",
    "DirectoryUnavailableError",
    "Gateway",
    "HeadersTooLargeError",
    "PathRouter",
    "PipeGateServer",
    "Presence",
    "RelayError",
    "ResponseTimeoutError",
    "Route",
    "RouteKind",
    "Router",
    "ServerApp",
    "ServerError",
    "ServerSettings",
    "StreamResetError",
    "TokensFileError",
    "TunnelBusyError",
    "TunnelClosedError",
    "TunnelDirectory",
    "TunnelNotFoundError",
    "TunnelOfflineError",
    "TunnelRegistry",
    "Whereabouts",
    "__version__",
    "create_app",
    "create_server",
]
