"""Loads the conformance plugin for ``pytest conformance/`` and for a plain ``pytest``
from the repository root (testpaths include ``conformance``): pytest honours
``pytest_addoption`` only in initial conftest files, and this is one in both cases."""

from pipegate_conformance.plugin import (  # noqa: F401
    implementations,
    origin,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    server,
    tunnel,
)
