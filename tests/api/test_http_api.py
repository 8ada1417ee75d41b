"""The local HTTP API over real TCP: a uvicorn server in a thread, httpx as the client.

(Named test_http_api.py, not test_app.py, so it cannot clash with tests/cli/test_app.py under
pytest's default import mode.)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cairn.api import create_app
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.memory_rules import MAX_OFFSET
from cairn.store.db import Database


@pytest.fixture
def base_url(store: Store) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (a free port) serving the API over ``store``."""
    with serving(create_app(store)) as url:
        yield url


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server on 127.0.0.1 (a free port), in a thread; its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


def remember(client: httpx.Client, content: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/memories", json={"content": content, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def recall_ids(client: httpx.Client, query: str, **fields: Any) -> list[str]:
    response = client.post("/v1/recall", json={"query": query, **fields})
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is our error shape with this status and code; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


def test_remember_creates_then_returns_the_identical_memory(client: httpx.Client) -> None:
    first = remember(client, "We deploy with blue-green releases", kind="decision", tags=["ops"])
    assert first["created"] is True
    assert first["kind"] == "decision"
    assert first["tags"] == ["ops"]
    assert first["project"] == "test"

    again = client.post("/v1/memories", json={"content": "We deploy with  blue-green releases"})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["created"] is False
    assert client.get("/v1/memories").json()["total"] == 1


def test_concurrent_requests_all_land(client: httpx.Client) -> None:
    """Several agents writing at once share one store connection under its lock."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(lambda i: remember(client, f"Parallel note {i}"), range(24)))
    assert len({m["id"] for m in made}) == 24
    assert client.get("/v1/memories", params={"limit": 100}).json()["total"] == 24


def test_recall_finds_a_paraphrase_first_and_says_why(client: httpx.Client) -> None:
    target = remember(client, "We deploy to production with blue-green releases", kind="decision")
    remember(client, "The office coffee machine is descaled every Friday")
    remember(client, "Use snake_case for Python function names", kind="preference")

    response = client.post("/v1/recall", json={"query": "how do we ship code to prod?"})

    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["id"] == target["id"]
    assert results[0]["content"] == "We deploy to production with blue-green releases"
    assert "semantic #1" in results[0]["why"]
    assert results[0]["match"]["semantic_rank"] == 1


def test_recall_applies_project_kind_tag_and_time_filters(client: httpx.Client) -> None:
    web = remember(client, "The web app caches sessions in Redis", project="web", tags=["cache"])
    api = remember(
        client, "The API caches sessions in memcached", project="api", kind="fact", tags=["Cache"]
    )
    other = remember(client, "Session caching is disabled in tests", project="web")
    query = "where are sessions cached?"

    assert recall_ids(client, query, project="api") == [api["id"]]
    assert recall_ids(client, query, kinds=["FACT"]) == [api["id"]]
    assert set(recall_ids(client, query, tags=["CACHE"])) == {web["id"], api["id"]}
    assert set(recall_ids(client, query, project="web")) == {web["id"], other["id"]}
    assert len(recall_ids(client, query, since="1h")) == 3
    assert recall_ids(client, query, until="2000-01-01") == []

    bad = client.post("/v1/recall", json={"query": query, "since": "last tuesday"})
    assert "last tuesday" in assert_error(bad, 422, "invalid_input")


def test_list_filters_counts_and_pages_newest_first(client: httpx.Client) -> None:
    made = [
        remember(client, f"Fact number {i} about the build", kind="fact", tags=["build"])
        for i in range(5)
    ]
    remember(client, "Prefer small pull requests", kind="preference")
    remember(client, "Pin the CI runner image", kind="gotcha", tags=["build", "ci"])

    page = client.get("/v1/memories", params={"kind": "fact", "limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert [m["id"] for m in page["memories"]] == [made[3]["id"], made[2]["id"]]

    kinds = client.get("/v1/memories", params=[("kind", "fact"), ("kind", "gotcha")]).json()
    assert kinds["total"] == 6
    both_tags = client.get("/v1/memories", params=[("tag", "build"), ("tag", "ci")]).json()
    assert [m["content"] for m in both_tags["memories"]] == ["Pin the CI runner image"]
    assert client.get("/v1/memories", params={"project": "nowhere"}).json() == {
        "memories": [],
        "total": 0,
    }
    assert_error(client.get("/v1/memories", params={"limit": 0}), 422, "invalid_input")


def test_get_returns_the_memory_with_its_relations(client: httpx.Client) -> None:
    old = remember(client, "Releases are cut on Mondays", topic_key="release-day")
    new = remember(client, "Releases are cut on Thursdays", topic_key="release-day")
    assert new["supersedes"] == old["id"]

    response = client.get(f"/v1/memories/{new['id']}")

    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "Releases are cut on Thursdays"
    assert [(r["from_id"], r["to_id"], r["type"]) for r in body["relations"]] == [
        (new["id"], old["id"], "supersedes")
    ]
    assert client.get(f"/v1/memories/{new['id'][:13]}").json()["id"] == new["id"]


def test_get_unknown_id_is_not_found(client: httpx.Client) -> None:
    response = client.get("/v1/memories/0190aaaa-0000-7000-8000-000000000000")
    assert "cairn list" in assert_error(response, 404, "not_found")


def test_forget_returns_the_tombstone_and_the_memory_is_gone(client: httpx.Client) -> None:
    memory = remember(client, "The staging password rotates monthly", tags=["secrets"])

    response = client.delete(f"/v1/memories/{memory['id']}")

    assert response.status_code == 200
    assert response.json()["id"] == memory["id"]
    assert response.json()["deleted"] is True
    assert response.json()["content"] == ""
    assert_error(client.get(f"/v1/memories/{memory['id']}"), 404, "not_found")
    assert recall_ids(client, "staging password rotation") == []
    again = client.delete(f"/v1/memories/{memory['id']}")  # idempotent: the same tombstone
    assert again.status_code == 200 and again.json() == response.json()
    assert client.get("/v1/stats").json()["forgotten"] == 1


def test_edit_changes_content_kind_and_tags_and_recall_follows(client: httpx.Client) -> None:
    memory = remember(client, "The cache TTL is 60 seconds", kind="fact", tags=["cache"])

    response = client.patch(
        f"/v1/memories/{memory['id'][:8]}",
        json={
            "content": "Cached pages live for five minutes",
            "kind": "gotcha",
            "add_tags": ["cdn"],
        },
    )

    assert response.status_code == 200, response.text
    edited = response.json()
    assert (edited["id"], edited["kind"], edited["tags"]) == (
        memory["id"],
        "gotcha",
        ["cache", "cdn"],
    )
    assert client.get(f"/v1/memories/{memory['id']}").json()["content"].startswith("Cached pages")
    assert recall_ids(client, "how long are cached pages kept?")[0] == memory["id"]
    assert_error(client.patch(f"/v1/memories/{memory['id']}", json={}), 422, "invalid_input")
    assert_error(
        client.patch(f"/v1/memories/{memory['id']}", json={"kind": "Bad Kind"}),
        422,
        "invalid_input",
    )
    assert client.get(f"/v1/memories/{memory['id']}").json()["kind"] == "gotcha"


def test_empty_content_is_rejected_and_nothing_is_stored(client: httpx.Client) -> None:
    assert_error(client.post("/v1/memories", json={"content": "  \n"}), 422, "content_empty")
    message = assert_error(client.post("/v1/memories", json={}), 422, "invalid_input")
    assert "content" in message
    assert_error(client.post("/v1/memories", json={"content": 42}), 422, "invalid_input")
    typo = client.post("/v1/memories", json={"content": "a tagged note", "tag": ["x"]})
    assert "tag" in assert_error(typo, 422, "invalid_input")
    bad_tag = client.post("/v1/memories", json={"content": "a note", "tags": ["two words"]})
    assert_error(bad_tag, 422, "invalid_input")
    assert client.get("/v1/stats").json()["memories"] == 0


def test_oversized_content_is_413_and_nothing_is_stored(client: httpx.Client) -> None:
    response = client.post("/v1/memories", json={"content": "x" * (64 * 1024 + 1)})
    assert "split it" in assert_error(response, 413, "content_too_large")
    assert client.get("/v1/stats").json()["memories"] == 0


def test_malformed_json_gets_the_error_shape(client: httpx.Client) -> None:
    response = client.post(
        "/v1/memories",
        content=b'{"content": "unterminated',
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in assert_error(response, 422, "invalid_input")
    # Without a JSON content type the body is not read as JSON (a browser form cannot post here).
    untyped = client.post("/v1/memories", content=b'{"content": "sent as text"}')
    assert "Content-Type: application/json" in assert_error(untyped, 422, "invalid_input")
    assert client.get("/v1/stats").json()["memories"] == 0


def test_unknown_route_and_method_get_the_error_shape(client: httpx.Client) -> None:
    assert "/docs" in assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.put("/v1/recall", json={}), 405, "method_not_allowed")


def test_requests_naming_another_host_are_refused(client: httpx.Client) -> None:
    """A web page that rebinds its DNS name to 127.0.0.1 must not read the store."""
    remember(client, "A private note")
    response = client.get("/v1/memories", headers={"host": "evil.example:7777"})
    assert "evil.example" in assert_error(response, 403, "host_not_allowed")
    assert client.get("/v1/memories", headers={"host": "localhost:7777"}).status_code == 200


def test_stats_count_the_store(client: httpx.Client) -> None:
    remember(client, "Stats count this memory", kind="fact")
    stats = client.get("/v1/stats").json()
    assert stats["memories"] == 1
    assert stats["by_kind"] == {"fact": 1}
    assert stats["model_id"]


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == {
        ("/v1/memories", "post"),
        ("/v1/memories", "get"),
        ("/v1/memories/{memory_id}", "get"),
        ("/v1/memories/{memory_id}", "delete"),
        ("/v1/memories/{memory_id}", "patch"),
        ("/v1/recall", "post"),
        ("/v1/stats", "get"),
        ("/v1/sync/status", "get"),
        ("/v1/sync/setup", "post"),
        ("/v1/sync/now", "post"),
        ("/healthz", "get"),
    }
    assert all(op.get("summary") for ops in spec["paths"].values() for op in ops.values())
    assert client.get("/docs").status_code == 200


def test_a_token_guards_every_route_but_healthz(store: Store) -> None:
    with serving(create_app(store, token="s3cret-token")) as url:
        anonymous = httpx.post(f"{url}/v1/memories", json={"content": "Not without the token"})
        wrong = httpx.get(f"{url}/v1/stats", headers={"Authorization": "Bearer nope"})
        right = httpx.get(f"{url}/v1/stats", headers={"Authorization": "Bearer s3cret-token"})
        health = httpx.get(f"{url}/healthz")
    assert "CAIRN_LOCAL_TOKEN" in assert_error(anonymous, 401, "unauthorized")
    assert_error(wrong, 401, "unauthorized")
    assert right.status_code == 200 and right.json()["memories"] == 0  # nothing was stored
    assert health.status_code == 200


def test_serve_refuses_a_network_bind_without_a_token(cairn_env: dict[str, str]) -> None:
    cairn_script = shutil.which("cairn", path=str(Path(sys.executable).parent))
    assert cairn_script
    refused = subprocess.run(
        [cairn_script, "serve", "--host", "0.0.0.0", "--port", "9"],
        env=cairn_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "--token" in refused.stderr and "CAIRN_LOCAL_TOKEN" in refused.stderr


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_cairn_serve_runs_the_api(
    tmp_path: Path, cairn_env: dict[str, str], embedder: OnnxEmbedder
) -> None:
    cairn_script = shutil.which("cairn", path=str(Path(sys.executable).parent))
    assert cairn_script, "the cairn command is not installed in this environment"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [cairn_script, "serve", "--port", str(port)],
        env=cairn_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "cairn serve did not answer within 60 s"
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet: the model loads before the port opens
            time.sleep(0.1)
        created = httpx.post(f"{base}/v1/memories", json={"content": "Served over HTTP"})
        assert created.status_code == 201
        assert created.json()["project"] == "default"
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    with Store(Database(Path(cairn_env["CAIRN_HOME"]) / "cairn.db"), embedder) as store:
        assert [m.content for m in store.list()] == ["Served over HTTP"]


def test_integers_and_ages_are_bounded(client: httpx.Client) -> None:
    remember(client, "We pin the database driver")
    far = client.get(f"/v1/memories?offset={MAX_OFFSET}")
    assert far.status_code == 200 and far.json() == {"memories": [], "total": 1}
    assert_error(client.get(f"/v1/memories?offset={MAX_OFFSET + 1}"), 422, "invalid_input")
    documented = client.get("/openapi.json").json()["paths"]["/v1/memories"]["get"]
    (offset,) = (p for p in documented["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == MAX_OFFSET  # the schema says what the store accepts
    old = client.post("/v1/recall", json={"query": "driver", "since": "999999999w"})
    assert_error(old, 422, "invalid_input")


@pytest.mark.parametrize("path", ["/v1/memories", "/v1/recall"])
def test_deeply_nested_json_is_invalid_input(client: httpx.Client, path: str) -> None:
    response = client.post(
        path, content=b"[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert "JSON" in assert_error(response, 422, "invalid_input")
    undecodable = client.post(
        path, content=b'{"content": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert "JSON" in assert_error(undecodable, 422, "invalid_input")
