"""PipeGate server: the public end of a tunnel.

``create_app(ServerSettings(...))`` builds the ASGI application (proxy headers around
FastAPI); ``create_server(settings, host=..., port=...)`` builds the uvicorn server
around it, exactly as the ``pipegate-server`` command line runs it. Everything
importable from here is public.
"""

from ._app import Gateway, __version__, create_app
from ._factory import PipeGateServer, ServerApp, create_server
from ._registry import Claim, TunnelDirectory, TunnelRegistry
from ._routing import PathRouter, Route, RouteKind, Router
from ._settings import ServerSettings
from .errors import (
    BodyTooLargeError,
    CallerGoneError,
    ConfigurationError,
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

__all__ = [
    "BodyTooLargeError",
    "CallerGoneError",
    "Claim",
    "ConfigurationError",
    "Gateway",
    "HeadersTooLargeError",
    "PathRouter",
    "PipeGateServer",
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
    "__version__",
    "create_app",
    "create_server",
]
