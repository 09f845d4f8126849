"""The pytest plugin of the conformance suite: options, the ``rule`` marker, the per-rule
JSON report, the expected-failures baseline, hypothesis profiles and the session
fixtures that bring up the implementations under test.

It is loaded by ``conformance/conftest.py`` (so ``pytest conformance/`` and a plain
``pytest`` from the repository root both see its options), or explicitly with
``pytest -p pipegate_conformance.plugin``.

Options (see docs/conformance.md):

``--server-url URL``
    test a server that is already running (``ws(s)://host[:port]`` or
    ``http(s)://host[:port]``); needs ``--client-token``.
``--client-token T``
    the token of that server (default: a random one for servers the suite starts).
``--server-cmd TEMPLATE``
    launch this server instead of ours; placeholders ``{port}``, ``{token}`` and
    ``{token_file}``.
``--client-cmd TEMPLATE``
    launch this client instead of ours; placeholders ``{local_url}``,
    ``{server_url}``, ``{token}`` and ``{token_file}``.
``--env NAME=VALUE``
    set an environment variable for every implementation the suite launches
    (repeatable; no shell involved; the value may use ``{token}`` and
    ``{token_file}``). ``PIPEGATE_CONFORMANCE_TOKEN`` always holds the token.
``--side server|client|both``
    run only the checks that exercise that side (``client`` keeps the black-box
    checks, which exercise both; ``server`` keeps only the server's own checks).
``--server-domain D``
    the domain that server routes by hostname (RT-2): ``<id>.D`` reaches tunnel
    ``<id>``. Without it, checks of host routing are skipped for a server the suite
    did not start; ours is started with ``--domain localhost``.
``--conformance-report FILE``
    write one JSON entry per rule id: passed, failed or skipped, with the reason.
``--expected-failures FILE``
    known gaps, one rule id or test name per line; a listed check that fails is
    reported as an expected failure, one that passes fails the run as stale.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, settings

from .harness import (
    HarnessError,
    ManagedProcess,
    ProcessGroup,
    Tunnel,
    client_command,
    free_port,
    origin_command,
    render_command,
    server_command,
    wait_for_http,
    wait_for_port,
    wait_for_tunnel,
)
from .refpeer import ReferenceTunnel
from .support import close_reference_clients

__all__ = [
    "RULE_ID",
    "SIDES",
    "Implementations",
    "Origin",
    "ServerUnderTest",
    "bystander",
    "conformance_settings",
    "implementations",
    "origin",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_logreport",
    "pytest_sessionfinish",
    "reference_clients_closed",
    "server",
    "side_of",
    "tunnel",
]

#: Which implementation a check exercises: the server alone (driven by the reference
#: client), the client alone (driven by the reference server), or both together.
SIDES = ("server", "client", "both")
#: The environment variable that always carries the token to launched implementations.
TOKEN_ENV = "PIPEGATE_CONFORMANCE_TOKEN"

#: A rule id of docs/protocol.md, e.g. ``HD-2``.
RULE_ID = re.compile(r"^(VE|HS|FR|ST|FC|HD|WS|LV|ER|RT|AC)-\d+$")
_SPEC_RULE = re.compile(r"\*\*((?:VE|HS|FR|ST|FC|HD|WS|LV|ER|RT|AC)-\d+) — ([^*]+)\*\*")
_SPEC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
_F = TypeVar("_F", bound=Callable[..., Any])

settings.register_profile(
    "quick",
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
_state: dict[str, Any] = {"profile": "quick"}


def conformance_settings(**overrides: Any) -> Callable[[_F], _F]:
    """Hypothesis settings for a conformance property: the ``quick`` profile unless the
    run chose one with ``--hypothesis-profile`` (then that one). ``overrides`` scale
    ``max_examples`` for costly properties: ``max_examples=0.5`` halves it."""
    base = settings.get_profile(_state["profile"])
    scale = overrides.pop("max_examples", 1.0)
    examples = max(2, int(base.max_examples * scale))
    return settings(base, max_examples=examples, **overrides)


# ---------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pipegate-conformance", "PipeGate conformance suite")
    if any(option.dest == "server_url" for option in group.options):
        return  # loaded twice (conftest and -p): options exist already
    group.addoption("--server-url", default=None, help="test this running server")
    group.addoption("--client-token", default=None, help="client token of that server")
    group.addoption(
        "--server-cmd",
        default=None,
        help="launch this server; placeholders {port} {token}",
    )
    group.addoption(
        "--client-cmd",
        default=None,
        help="launch this client; placeholders {local_url} {server_url} {token}",
    )
    group.addoption(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for launched implementations (repeatable); the value "
        "may use {token} and {token_file}",
    )
    group.addoption(
        "--side",
        default="both",
        choices=SIDES,
        help="run only the checks exercising this side (client: client and black-box "
        "checks; server: the server's own checks); default both",
    )
    group.addoption(
        "--server-domain",
        default=None,
        help="the domain the server under test routes by hostname (RT-2), e.g. localhost",
    )
    group.addoption(
        "--conformance-report", default=None, help="write the per-rule JSON report here"
    )
    group.addoption(
        "--expected-failures",
        default=None,
        help="file of known gaps (rule ids or test names); passing entries fail as stale",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "rule(*ids): the docs/protocol.md rule ids a conformance test checks"
    )
    config.addinivalue_line(
        "markers",
        "side(name): server, client or both: which implementation a conformance test "
        "exercises (inferred from its fixtures when absent)",
    )
    for entry in config.getoption("env", default=None) or []:
        if "=" not in entry or not entry.split("=", 1)[0]:
            raise pytest.UsageError(f"--env takes NAME=VALUE, got {entry!r}")
    chosen = config.getoption("--hypothesis-profile", default=None)
    if chosen:
        _state["profile"] = chosen
    if config.getoption("server_url") and not config.getoption("client_token"):
        raise pytest.UsageError("--server-url needs --client-token")
    _state["results"] = {}
    _state["item_rules"] = {}
    _state["item_sides"] = {}
    _state["under_test"] = {
        "server": config.getoption("server_url")
        or config.getoption("server_cmd")
        or "pipegate-server (this repository)",
        "client": config.getoption("client_cmd") or "pipegate-client (this repository)",
    }


# ---------------------------------------------------------------------- collection


def _is_conformance_item(item: pytest.Item) -> bool:
    return "conformance" in Path(str(item.path)).parts and "tests" in Path(str(item.path)).parts


def _load_expected(path: str) -> set[str]:
    entries: set[str] = set()
    for line in Path(path).read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.add(entry)
    return entries


def side_of(item: pytest.Item) -> str:
    """The side a check exercises: its ``side`` marker, else inferred from its fixtures.

    ``tunnel`` (the session tunnel) or ``server`` together with ``implementations``
    (a tunnel of its own) means both; ``server`` alone means the reference client
    drives the server (so do ``bystander`` and ``peer``); anything else (the reference
    server, ``driven``, ``session``)
    drives the client alone.
    """
    marker = item.get_closest_marker("side")
    if marker is not None:
        return str(marker.args[0])
    info = getattr(item, "_fixtureinfo", None)  # the test's own arguments, not the closure
    names = set(info.argnames if info is not None else getattr(item, "fixturenames", ()))
    if "tunnel" in names or {"server", "implementations"} <= names:
        return "both"
    if names & {"server", "bystander", "peer"}:
        return "server"
    return "client"


def _matches(entry: str, item: pytest.Item, rules: list[str]) -> bool:
    if RULE_ID.match(entry):
        return entry in rules
    return item.nodeid.endswith(entry) or item.name == entry or item.originalname == entry  # type: ignore[attr-defined]


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    expected_file = config.getoption("expected_failures")
    expected = _load_expected(expected_file) if expected_file else set()
    unmarked: list[str] = []
    used: set[str] = set()
    wanted = config.getoption("side", default="both")
    deselected: list[pytest.Item] = []
    kept: list[pytest.Item] = []
    for item in items:
        if not _is_conformance_item(item):
            kept.append(item)
            continue
        rules = [str(arg) for mark in item.iter_markers("rule") for arg in mark.args]
        bad = [rule for rule in rules if not RULE_ID.match(rule)]
        side = side_of(item)
        if not rules or bad or side not in SIDES:
            unmarked.append(item.nodeid)
            continue
        if (wanted == "server" and side != "server") or (wanted == "client" and side == "server"):
            deselected.append(item)
            continue
        kept.append(item)
        _state["item_rules"][item.nodeid] = rules
        _state["item_sides"][item.nodeid] = side
        hits = [entry for entry in expected if _matches(entry, item, rules)]
        if hits:
            used.update(hits)
            item.add_marker(
                pytest.mark.xfail(
                    reason=f"listed in --expected-failures ({', '.join(sorted(hits))})",
                    strict=True,
                )
            )
    if unmarked:
        raise pytest.UsageError(
            "every conformance test must carry @pytest.mark.rule('XX-n', ...) with valid "
            "rule ids (and a side marker, if any, of server/client/both); missing or "
            "invalid on: " + ", ".join(unmarked)
        )
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    _state["expected_unused"] = sorted(expected - used)


# ---------------------------------------------------------------------- report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    rules = _state.get("item_rules", {}).get(report.nodeid)
    if not rules:
        return
    results: dict[str, dict[str, Any]] = _state["results"]
    entry = results.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    if hasattr(report, "wasxfail") and report.skipped:
        entry.update(outcome="expected_failure", reason=str(report.wasxfail))
        return
    if report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
        entry.update(outcome="failed", reason="stale expected failure: the check now passes")
        return
    if report.failed:
        entry.update(outcome="failed", reason=_first_line(report.longreprtext))
    elif report.skipped and entry["outcome"] == "passed":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        entry.update(outcome="skipped", reason=str(reason).removeprefix("Skipped: "))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("E ")]
    return (lines[0][2:].strip() if lines else text.strip().splitlines()[-1:][0])[:300]


def _spec_rules() -> dict[str, str]:
    try:
        return dict(_SPEC_RULE.findall(_SPEC.read_text(encoding="utf-8")))
    except OSError:
        return {}


def build_report() -> dict[str, Any]:
    """Aggregate test outcomes per rule: failed beats passed beats skipped."""
    per_rule: dict[str, dict[str, Any]] = {}
    for nodeid, result in _state.get("results", {}).items():
        for rule in _state["item_rules"].get(nodeid, []):
            per_rule.setdefault(rule, {"tests": []})["tests"].append(
                {
                    "test": nodeid,
                    "side": _state["item_sides"].get(nodeid, "both"),
                    "outcome": result["outcome"],
                    "reason": result["reason"],
                }
            )
    titles = _spec_rules()
    report: dict[str, Any] = {}
    for rule in sorted(set(per_rule) | set(titles), key=_rule_key):
        tests = per_rule.get(rule, {}).get("tests", [])
        outcomes = {test["outcome"] for test in tests}
        if "failed" in outcomes:
            status = "failed"
            reason = next(t["reason"] for t in tests if t["outcome"] == "failed")
        elif "passed" in outcomes:
            status, reason = "passed", ""
        elif "expected_failure" in outcomes:
            status = "failed"
            reason = "expected failure: " + next(
                t["reason"] for t in tests if t["outcome"] == "expected_failure"
            )
        elif tests:
            status = "skipped"
            reason = "; ".join(sorted({t["reason"] for t in tests}))
        else:
            status, reason = "skipped", "no conformance check for this rule (see docs)"
        report[rule] = {
            "title": titles.get(rule, ""),
            "sides": sorted({test["side"] for test in tests}),
            "status": status,
            "reason": reason,
            "expected_failure": "expected_failure" in outcomes,
            "tests": tests,
        }
    return report


def _rule_key(rule: str) -> tuple[str, int]:
    prefix, _, number = rule.partition("-")
    return prefix, int(number)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("conformance_report")
    if path and _state.get("item_rules"):
        rules = build_report()
        document = {
            "under_test": _state.get("under_test", {}),
            "summary": build_summary(rules),
            "expected_failures_not_matching_any_test": _state.get("expected_unused", []),
            "rules": rules,
        }
        Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def build_summary(rules: dict[str, Any]) -> dict[str, Any]:
    """Counts of checks (each test once, overall and per side) and of rules by status.

    A check's outcome is one of passed, failed, skipped, expected_failure; a rule's
    status one of passed, failed, skipped (see :func:`build_report`).
    """
    tests: dict[str, int] = {"total": 0}
    by_side: dict[str, dict[str, int]] = {side: {"total": 0} for side in SIDES}
    for nodeid, result in _state.get("results", {}).items():
        outcome = result["outcome"]
        side = _state["item_sides"].get(nodeid, "both")
        for counts in (tests, by_side[side]):
            counts["total"] += 1
            counts[outcome] = counts.get(outcome, 0) + 1
    rule_counts: dict[str, int] = {"total": len(rules)}
    for entry in rules.values():
        rule_counts[entry["status"]] = rule_counts.get(entry["status"], 0) + 1
    return {"tests": tests, "tests_by_side": by_side, "rules": rule_counts}


# ---------------------------------------------------------------------- fixtures


@dataclass
class Origin:
    """The suite's origin app (always ours, always on this machine)."""

    url: str
    process: ManagedProcess

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


@dataclass
class ServerUnderTest:
    """Where the server under test is, and its process when the suite started it."""

    http_base: str  # http(s)://host:port
    token: str
    process: ManagedProcess | None
    remote: bool
    #: The domain it routes by hostname (RT-2), if any is known.
    domain: str | None = None

    @property
    def ws_base(self) -> str:
        scheme = "wss" if self.http_base.startswith("https") else "ws"
        return f"{scheme}://{self.http_base.split('://', 1)[1]}"

    @property
    def host(self) -> str:
        return urlsplit(self.http_base).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.http_base)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return self.http_base.startswith("https")

    def ws_url(self, connection_id: str) -> str:
        return f"{self.ws_base}/{connection_id}"

    def public_url(self, connection_id: str) -> str:
        return f"{self.http_base}/{connection_id}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context() if self.tls else None


@dataclass
class Implementations:
    """How to start the implementations under test, and the processes started so far.

    Tests that need their own tunnel (fault injection, a client facing the reference
    server) call :meth:`start_client` / :meth:`start_server`; every process lands in
    the session's :class:`ProcessGroup` and is stopped at the end.
    """

    group: ProcessGroup
    token: str
    server_cmd: str | None
    client_cmd: str | None
    remote_server: str | None
    #: ``--server-domain``: the domain of a server given by URL or command.
    server_domain: str | None = None
    #: A file (mode 0600) holding the token and a newline: the ``{token_file}``
    #: placeholder, so that the token need not appear on a command line.
    token_file: str = ""
    #: ``--env`` settings (templates, see :meth:`environment`).
    env: dict[str, str] = field(default_factory=dict)
    started: list[ManagedProcess] = field(default_factory=list)

    def placeholders(self, token: str | None = None) -> dict[str, str]:
        """The values of ``{token}`` and ``{token_file}`` for a launch with ``token``."""
        token = token or self.token
        token_file = self.token_file
        if token != self.token or not token_file:
            token_file = _write_token_file(token)
        return {"token": token, "token_file": token_file}

    def environment(self, token: str | None = None) -> dict[str, str]:
        """Environment additions for a launched implementation: the token in
        ``PIPEGATE_CONFORMANCE_TOKEN`` and every ``--env`` setting, placeholders filled."""
        values = self.placeholders(token)
        env = {TOKEN_ENV: values["token"]}
        env.update({name: value.format(**values) for name, value in self.env.items()})
        return env

    @property
    def can_start_server(self) -> bool:
        return self.remote_server is None or self.server_cmd is not None

    def start_server(self, port: int | None = None, token: str | None = None) -> ServerUnderTest:
        port = port or free_port()
        token = token or self.token
        # Ours routes *.localhost by host (RT-2; loopback, no DNS needed).
        domain = self.server_domain if self.server_cmd else "localhost"
        argv = (
            render_command(self.server_cmd, port=port, **self.placeholders(token))
            if self.server_cmd
            else server_command(port, token, "--domain", "localhost")
        )
        process = self.group.start("server", argv, self.environment(token))
        self.started.append(process)
        try:
            wait_for_port("127.0.0.1", port, timeout=20.0)
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{process.output()[-2000:]}") from None
        return ServerUnderTest(
            f"http://127.0.0.1:{port}", token, process, remote=False, domain=domain
        )

    def client_argv(self, local_url: str, server_url: str, token: str | None = None) -> list[str]:
        token = token or self.token
        if self.client_cmd:
            return render_command(
                self.client_cmd,
                local_url=local_url,
                server_url=server_url,
                **self.placeholders(token),
            )
        return client_command(local_url, server_url, token)

    def start_client(
        self, local_url: str, server_url: str, token: str | None = None
    ) -> ManagedProcess:
        process = self.group.start(
            "client", self.client_argv(local_url, server_url, token), self.environment(token)
        )
        self.started.append(process)
        return process


_TOKEN_FILES: list[str] = []


def _write_token_file(token: str) -> str:
    """A new file readable by this user only, holding ``token`` and a newline; removed
    at the end of the session."""
    fd, path = tempfile.mkstemp(prefix="pipegate-conformance-token-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp's mode is 0600
        handle.write(token + "\n")
    _TOKEN_FILES.append(path)
    return path


def _parse_env(entries: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        env[name] = value
    return env


def _normalize_server_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise pytest.UsageError(f"--server-url must be ws(s):// or http(s)://, got {url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


@pytest.fixture(scope="session")
def implementations(request: pytest.FixtureRequest) -> Iterator[Implementations]:
    """The session's process group and launchers; stops everything at the end."""
    config = request.config
    token = config.getoption("client_token") or f"conformance-{secrets.token_urlsafe(12)}"
    remote = config.getoption("server_url")
    try:
        with ProcessGroup() as group:
            yield Implementations(
                group=group,
                token=token,
                server_cmd=config.getoption("server_cmd"),
                client_cmd=config.getoption("client_cmd"),
                remote_server=_normalize_server_url(remote) if remote else None,
                server_domain=config.getoption("server_domain"),
                token_file=_write_token_file(token),
                env=_parse_env(config.getoption("env") or []),
            )
    finally:
        while _TOKEN_FILES:
            with contextlib.suppress(OSError):
                os.unlink(_TOKEN_FILES.pop())


@pytest.fixture(scope="session")
def origin(implementations: Implementations) -> Origin:
    """The origin app, started once for the session."""
    port = free_port()
    process = implementations.group.start("origin", origin_command(port, http="h11"))
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/echo/ready", process=process)
    return Origin(url, process)


@pytest.fixture(scope="session")
def server(implementations: Implementations) -> ServerUnderTest:
    """The server under test: ``--server-url``, else ``--server-cmd``, else ours."""
    if implementations.remote_server is not None:
        return ServerUnderTest(
            implementations.remote_server,
            implementations.token,
            None,
            remote=True,
            domain=implementations.server_domain,
        )
    return implementations.start_server()


@pytest.fixture(scope="session")
def tunnel(implementations: Implementations, origin: Origin, server: ServerUnderTest) -> Tunnel:
    """A tunnel through the server and client under test to the origin, for the session."""
    connection_id = f"conf-{secrets.token_hex(4)}"
    ws_url = server.ws_url(connection_id)
    client = implementations.start_client(origin.url, ws_url)
    tunnel = Tunnel(
        server.http_base,
        connection_id,
        server.token,
        origin.url,
        server.process,
        client,
        origin.process,
    )
    wait_for_tunnel(tunnel.public_url, process=client, timeout=30.0)
    return tunnel


@pytest.fixture(scope="session")
def bystander(server: ServerUnderTest) -> Iterator[ReferenceTunnel]:
    """A tunnel to the server under test served by the reference client (no client
    under test): the bystander that must keep working when another tunnel breaks the
    rules (ER-4), so that server checks never depend on the client under test."""
    reference = ReferenceTunnel(
        server.ws_url(f"bystander-{secrets.token_hex(4)}"),
        server.token,
        public_url_base=server.http_base,
        ssl_context=server.ssl_context(),
    )
    reference.start()
    try:
        yield reference
    finally:
        reference.stop()


@pytest.fixture
async def reference_clients_closed() -> AsyncIterator[None]:
    """After the check, close the reference clients it opened with
    :func:`pipegate_conformance.support.connect_reference`, so that none leaks into a
    later check. Modules that open them ask for it with
    ``pytestmark = pytest.mark.usefixtures("reference_clients_closed")`` (a check's own
    arguments decide its side, :func:`side_of`; this one is no argument)."""
    yield
    await close_reference_clients()
    gc.collect()
