"""Hosted workspaces over real HTTP, on each storage backend: the server embeds, remembers and
recalls; end-to-end workspaces refuse all of it; the search index follows the log."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.ids import uuid7
from cairn.memory_rules import MAX_OFFSET
from cairn.model import Filters, Memory
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.replication import MemoryState, RelationState
from cairn.server import hosted_index, keys
from cairn.server.context import now_ms
from cairn.server.hosted import Hosted
from cairn.store.db import Database
from cairn.sync import payload
from cairn.sync.engine import Syncer

from ..conftest import envelope

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)


class Agent:
    """A cloud agent: plain HTTP calls with one API key."""

    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})

    def remember(self, content: str, **fields: Any) -> httpx.Response:
        return self.client.post("/v1/remember", json={"content": content, **fields})

    def recall(self, query: str, **fields: Any) -> list[dict[str, Any]]:
        answer = self.client.post("/v1/recall", json={"query": query, **fields})
        assert answer.status_code == 200, answer.text
        results: list[dict[str, Any]] = answer.json()["results"]
        return results


@pytest.fixture
def hosted(sync_server: SyncServer) -> tuple[SyncServer, str, str]:
    """The server, a hosted workspace's id and its admin key."""
    workspace, admin = keys.create_workspace(sync_server.storage, "hosted", now_ms(), "hosted")
    return sync_server, workspace.id, admin


def state(memory_id: str, content: str, hlc: str, deleted: bool = False, **fields: Any) -> bytes:
    """A device's payload for one memory state (no vector: the server embeds it)."""
    memory = Memory(
        memory_id,
        "" if deleted else content,
        fields.get("kind", "note"),
        fields.get("project", "p"),
        tuple(fields.get("tags", ())),
        fields.get("topic_key"),
        "laptop",
        1_700_000_000_000,
        1_700_000_000_000,
        deleted,
        "" if deleted else f"h-{content}",
        None,
        hlc,
    )
    return payload.encode_memory(MemoryState(memory, hlc, {}, (), None))


def test_end_to_end_workspaces_refuse_the_hosted_endpoints(sync_server: SyncServer) -> None:
    agent = Agent(sync_server.url, sync_server.new_key(["write"]))
    calls = [
        agent.client.post("/v1/embed", json={"texts": ["hello"]}),
        agent.remember("the deploy runs on Fridays"),
        agent.client.post("/v1/recall", json={"query": "deploy"}),
        agent.client.get("/v1/memories"),
        agent.client.get(f"/v1/memories/{uuid7(1)}"),
        agent.client.patch(f"/v1/memories/{uuid7(1)}", json={"kind": "fact"}),
        agent.client.delete(f"/v1/memories/{uuid7(1)}"),
    ]
    for answer in calls:
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert error["code"] == "not_hosted"
        assert "end-to-end encrypted" in error["message"] and "--mode hosted" in error["message"]
    assert sync_server.storage.latest_seq(sync_server.workspace.id) == 0  # nothing written


def test_an_agent_remembers_and_recalls_over_http(hosted: tuple[SyncServer, str, str]) -> None:
    server, workspace_id, admin = hosted
    agent = Agent(server.url, admin)
    made = [
        agent.remember("We deploy with blue-green releases behind the load balancer", kind="fact"),
        agent.remember("Use pnpm, never npm, in the web repo", tags=["tooling"]),
        agent.remember("The staging database is reset every Sunday night", project="ops"),
    ]
    assert [m.status_code for m in made] == [201, 201, 201]
    ids = [m.json()["id"] for m in made]
    hits = agent.recall("how do we ship releases to production?")
    assert hits[0]["id"] == ids[0]
    assert hits[0]["match"]["semantic_rank"] == 1 and hits[0]["match"]["cosine"] > 0.3
    assert hits[0]["model_id"] == made[0].json()["model_id"] and hits[0]["source"] == "api"
    keyword = agent.recall("pnpm")
    assert keyword[0]["id"] == ids[1] and keyword[0]["match"]["keyword_rank"] == 1
    assert [h["id"] for h in agent.recall("database", project="ops")] == [ids[2]]
    assert [h["id"] for h in agent.recall("repo", tags=["tooling"])] == [ids[1]]
    assert agent.recall("blue-green", kinds=["decision"]) == []
    # Metered and audited: five recalls; a refused one is neither.
    assert agent.client.post("/v1/recall", json={"query": " "}).status_code == 422
    usage = agent.client.get("/v1/usage").json()
    assert usage["days"][0]["recalls"] == 5
    assert usage["mutations"] == 3
    actions = [e["action"] for e in agent.client.get("/v1/audit").json()["entries"]]
    assert actions.count("recall") == 5 and actions.count("remember") == 3


def test_an_agent_gets_edits_and_forgets_and_devices_follow(
    hosted: tuple[SyncServer, str, str], device_embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    server, workspace_id, admin = hosted
    agent = Agent(server.url, admin)
    made = agent.remember("The cache TTL is 60 seconds", kind="fact", tags=["cache"]).json()
    other = agent.remember("Cached pages live for five minutes").json()
    memory_id = made["id"]
    assert agent.client.get(f"/v1/memories/{memory_id}").json()["content"] == made["content"]

    edited = agent.client.patch(
        f"/v1/memories/{memory_id}",
        json={"content": "The cache TTL is 300 seconds", "kind": "gotcha", "add_tags": ["cdn"]},
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["kind"], edited.json()["tags"]) == ("gotcha", ["cache", "cdn"])
    assert agent.recall("how long do cache entries live?", kinds=["gotcha"])[0]["id"] == memory_id
    same = agent.client.patch(f"/v1/memories/{memory_id}", json={"content": other["content"]})
    assert same.status_code == 422 and "already says exactly this" in same.text
    empty_kind = agent.remember("A memory of no kind at all", kind="")
    assert empty_kind.status_code == 422 and "kind" in empty_kind.text  # not silently a note
    read_only = Agent(server.url, server.new_key(["read"], workspace_id))
    assert read_only.client.delete(f"/v1/memories/{memory_id}").status_code == 403

    with Store(Database(tmp_path / "laptop.db"), device_embedder, project="p") as laptop:
        syncer = Syncer(laptop, HttpRemote(server.url, admin, device_id="laptop"), None)
        syncer.pull()
        pulled = laptop.get(memory_id)
        assert (pulled.content, pulled.kind, pulled.tags) == (
            "The cache TTL is 300 seconds",
            "gotcha",
            ("cache", "cdn"),
        )
        assert syncer.conflicts() == []  # the server's edit descends from the version it replaced
        gone = agent.client.delete(f"/v1/memories/{memory_id}")
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        assert agent.client.get(f"/v1/memories/{memory_id}").status_code == 404
        again = agent.client.delete(f"/v1/memories/{memory_id}")  # forgetting is idempotent
        assert again.status_code == 200 and again.json()["deleted"] is True
        syncer.pull()
        assert laptop.count() == 1  # the other memory; the forgotten one is a tombstone
    actions = [e["action"] for e in agent.client.get("/v1/audit").json()["entries"]]
    assert actions.count("edit") == 1 and actions.count("forget") == 1


def test_remembering_the_same_text_twice_adds_tags_and_nothing_else(
    hosted: tuple[SyncServer, str, str],
) -> None:
    server, workspace_id, admin = hosted
    agent = Agent(server.url, admin)
    first = agent.remember("Rotate the signing key every 90 days", tags=["security"])
    again = agent.remember("Rotate  the signing key every 90 days ", tags=["security"])
    tagged = agent.remember("Rotate the signing key every 90 days", tags=["keys"])
    assert (first.status_code, again.status_code, tagged.status_code) == (201, 200, 200)
    assert again.json()["id"] == first.json()["id"] == tagged.json()["id"]
    assert tagged.json()["tags"] == ["keys", "security"] and not tagged.json()["created"]
    listed = agent.client.get("/v1/memories").json()
    assert listed["total"] == 1 and listed["memories"][0]["tags"] == ["keys", "security"]
    assert server.storage.latest_seq(workspace_id) == 2  # the memory, then its new tag


def test_a_topic_key_supersedes_and_recall_prefers_the_successor(
    hosted: tuple[SyncServer, str, str],
) -> None:
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    old = agent.remember("The API rate limit is 100 requests per minute", topic_key="rate")
    new = agent.remember("The API rate limit is 500 requests per minute", topic_key="rate")
    assert new.json()["supersedes"] == old.json()["id"]
    hits = agent.recall("what is the API rate limit?")
    assert [h["id"] for h in hits[:2]] == [new.json()["id"], old.json()["id"]]
    assert hits[1]["match"]["superseded_by"] == new.json()["id"]
    usage = agent.client.get("/v1/usage").json()  # two memories and the relation between them
    assert (usage["entities"], usage["memories"]) == (3, 2)
    # A stale removal of the link (an older clock) loses to the link the index holds.
    stale = RelationState(
        new.json()["id"], old.json()["id"], "supersedes", 0, True, "0" * 13 + "-0000-dev"
    )
    device = HttpRemote(server.url, admin, device_id="dev")
    relation_id = payload.relation_entity_id(stale)
    device.push(
        [
            WireMutation(
                "m-stale", "dev", stale.hlc, relation_id, None, payload.encode_relation(stale)
            )
        ]
    )
    assert (
        agent.recall("what is the API rate limit?")[1]["match"]["superseded_by"] == new.json()["id"]
    )


def test_near_duplicates_are_reported_not_merged(hosted: tuple[SyncServer, str, str]) -> None:
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    first = agent.remember("The CI pipeline caches the node_modules folder between runs")
    second = agent.remember("The CI pipeline caches the node_modules folder between the runs")
    assert second.status_code == 201
    near = second.json()["near_duplicates"]
    assert [n["id"] for n in near] == [first.json()["id"]] and near[0]["similarity"] > 0.92


def test_embed_returns_the_vectors_a_device_makes(
    hosted: tuple[SyncServer, str, str], embedder: OnnxEmbedder
) -> None:
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    texts = ["retry with exponential backoff", "the cache key includes the lockfile hash"]
    answer = agent.client.post("/v1/embed", json={"texts": texts})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["model_id"], body["dim"]) == (embedder.model_id, 384)
    vectors = np.asarray(body["vectors"], dtype=np.float32)
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-6)
    assert agent.client.post("/v1/embed", json={"texts": []}).status_code == 422
    too_many = agent.client.post("/v1/embed", json={"texts": ["x"] * 257})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "invalid_input"


def test_listing_filters_and_pages(hosted: tuple[SyncServer, str, str]) -> None:
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    for n in range(5):
        agent.remember(f"fact number {n} about the build", kind="fact", tags=["build"])
    agent.remember("a note about lunch", project="other")
    page = agent.client.get("/v1/memories", params={"kind": "fact", "limit": 2, "offset": 2})
    body = page.json()
    assert body["total"] == 5 and len(body["memories"]) == 2
    assert [m["content"] for m in body["memories"]] == [
        "fact number 2 about the build",
        "fact number 1 about the build",
    ]
    assert agent.client.get("/v1/memories", params={"project": "other"}).json()["total"] == 1
    bad = agent.client.get("/v1/memories", params={"kind": "Not A Kind!"})
    assert bad.status_code == 422


def test_scopes_apply(hosted: tuple[SyncServer, str, str]) -> None:
    server, workspace_id, admin = hosted
    reader = Agent(server.url, server.new_key(["read"], workspace_id))
    refused = reader.remember("readers cannot write")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert reader.recall("anything") == []


def test_a_hosted_push_must_be_readable_and_is_searchable_once_acknowledged(
    hosted: tuple[SyncServer, str, str],
) -> None:
    server, workspace_id, admin = hosted
    device = HttpRemote(server.url, admin, device_id="laptop")
    bad = WireMutation("m-bad", "laptop", "1700000000000-0000-laptop", "e-1", None, envelope())
    with pytest.raises(Exception) as refused:
        device.push([bad])
    assert getattr(refused.value, "rejected", {})["m-bad"][0] == "bad_payload"
    assert server.storage.latest_seq(workspace_id) == 0
    hlc = "1700000000001-0000-laptop"
    good = WireMutation(
        "m-1", "laptop", hlc, "mem-1", None, state("mem-1", "flamegraphs show the hot path", hlc)
    )
    device.push([good])
    agent = Agent(server.url, admin)
    (hit,) = agent.recall("flamegraphs")
    # The device sent no vector: the server embedded it, so semantic search finds it too.
    assert hit["id"] == "mem-1" and hit["match"]["semantic_rank"] == 1
    # A tombstone from the device removes it from search.
    later = "1700000000002-0000-laptop"
    gone = WireMutation("m-2", "laptop", later, "mem-1", None, state("mem-1", "", later, True))
    device.push([gone])
    assert agent.recall("flamegraphs") == []
    assert agent.client.get("/v1/memories").json()["total"] == 0


@pytest.mark.parametrize("page", [2000, 40])
def test_the_index_is_a_projection_of_the_log(
    sync_server_factory: Callable[..., SyncServer],
    embedder: OnnxEmbedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    page: int,
) -> None:
    """Two server processes fold the same log concurrently (compare-and-swap on the position):
    the index ends equal to one fold of the whole log, whatever the order; also when it is
    read in pages of 40 (each read while the one before is written, a memory's later states
    merged into the earlier ones the index holds)."""
    monkeypatch.setattr(hosted_index, "FOLD_PAGE", page)
    server = sync_server_factory()
    storage = server.storage
    workspace, _ = keys.create_workspace(storage, "fold", now_ms(), "hosted")
    wire = []
    for n in range(300):
        hlc = f"{1_700_000_000_000 + n:013d}-0000-dev"
        memory_id = f"mem-{n % 100}"  # three states of each memory, the last one wins
        wire.append(
            WireMutation(
                uuid7(),
                "dev",
                hlc,
                memory_id,
                None,
                state(memory_id, f"text {n} of {n % 100}", hlc),
            )
        )
    for start in range(0, 300, 50):
        storage.push(workspace.id, wire[start : start + 50], "dev", now_ms())
    assert storage.index_lag(workspace.id) == (0, 300)
    first, second = Hosted(storage, embedder), Hosted(storage, embedder)
    with ThreadPoolExecutor(4) as pool:
        positions = list(pool.map(lambda h: h.fold(workspace.id), [first, second, first, second]))
    assert positions == [300] * 4 and storage.index_lag(workspace.id) == (300, 300)
    listed, total = storage.list_indexed(workspace.id, Filters(), 1000, 0)
    assert total == 100
    assert {m.id: m.content for m in listed} == {
        f"mem-{k}": f"text {200 + k} of {k}" for k in range(100)
    }
    vectors = storage.nearest(
        workspace.id, embedder.embed(["text 250 of 50"])[0].tobytes(), Filters(), 3
    )
    assert vectors[0][0] == "mem-50"


def test_recall_filters_by_time(hosted: tuple[SyncServer, str, str]) -> None:
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    agent.remember("the release train leaves on Tuesdays")
    assert len(agent.recall("release train", since="1d")) == 1
    assert agent.recall("release train", until="2000-01-01") == []
    bad = agent.client.post("/v1/recall", json={"query": "x", "since": "yesterday-ish"})
    assert bad.status_code == 422


def test_memory_state_is_merged_like_a_device(hosted: tuple[SyncServer, str, str]) -> None:
    """Concurrent edits from two devices: the index keeps the newer content, the union of the
    tags, and the losing version travels on (devices see it as a conflict)."""
    server, workspace_id, admin = hosted
    device = HttpRemote(server.url, admin, device_id="a")
    base = "1700000000000-0000-a"
    left, right = "1700000000005-0000-a", "1700000000006-0000-b"
    first = state("mem-x", "the queue is SQS", base, tags=["infra"])
    a = payload.decode(WireMutation("m", "a", base, "mem-x", None, first))
    assert isinstance(a, MemoryState)

    def edit(content: str, hlc: str, tag: str) -> bytes:
        memory = replace(
            a.memory, content=content, content_hash=f"h-{content}", tags=(tag,), hlc=hlc
        )
        return payload.encode_memory(MemoryState(memory, base, {"content": hlc}, (base,), None))

    device.push(
        [
            WireMutation("m-0", "a", base, "mem-x", None, first),
            WireMutation("m-2", "b", right, "mem-x", None, edit("the queue is Kafka", right, "b")),
            WireMutation("m-1", "a", left, "mem-x", None, edit("the queue is RabbitMQ", left, "a")),
        ]
    )
    listed = Agent(server.url, admin).client.get("/v1/memories").json()["memories"]
    assert [(m["content"], m["tags"]) for m in listed] == [
        ("the queue is Kafka", ["a", "b", "infra"])
    ]
    stored = server.storage.indexed_payloads(workspace_id, ["mem-x"])["mem-x"]
    merged = payload.decode(WireMutation("i", "s", base, "mem-x", None, stored))
    assert isinstance(merged, MemoryState)
    assert [r.content for r in merged.revisions] == ["the queue is RabbitMQ"]


@pytest.fixture(scope="module")
def device_embedder() -> OnnxEmbedder:
    """The device's own model instance, so its count of texts embedded is its own."""
    model = OnnxEmbedder()
    model.load()
    return model


def test_devices_and_cloud_agents_share_one_hosted_workspace(
    hosted: tuple[SyncServer, str, str], device_embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    """A device syncs memories in and a cloud agent recalls them over HTTP; the agent remembers
    over HTTP and the device pulls that memory with its vector, embedding nothing."""
    server, workspace_id, admin = hosted
    key = server.new_key(["write"], workspace_id)
    with Store(Database(tmp_path / "laptop.db"), device_embedder, project="web") as laptop:
        syncer = Syncer(laptop, HttpRemote(server.url, key, device_id="laptop"), None)
        mine = laptop.remember("Our CDN purges its cache on every deploy", tags=["cdn"])
        laptop.remember("Feature flags live in LaunchDarkly", kind="fact")
        syncer.push()
        agent = Agent(server.url, key)
        hits = agent.recall("when is the CDN cache cleared?")
        assert hits[0]["id"] == mine.memory.id and hits[0]["tags"] == ["cdn"]
        assert hits[0]["project"] == "web" and hits[0]["source"] == laptop.source
        assert hits[0]["match"]["semantic_rank"] == 1

        cloud = agent.remember(
            "Load tests run against the perf cluster, never staging", project="web", kind="gotcha"
        ).json()
        embedded = device_embedder.texts_embedded
        syncer.pull()
        assert device_embedder.texts_embedded == embedded  # the vector came with it
        pulled = laptop.get(cloud["id"])
        assert (pulled.content, pulled.kind, pulled.model_id) == (
            cloud["content"],
            "gotcha",
            device_embedder.model_id,
        )
        (hit, *_) = laptop.recall("where do load tests run?")
        assert hit.memory.id == cloud["id"] and hit.match.semantic_rank == 1
        # Edits flow back: the device forgets the agent's memory, and the agent stops finding it.
        laptop.forget(cloud["id"])
        syncer.push()
        assert cloud["id"] not in [h["id"] for h in agent.recall("where do load tests run?")]


def test_listing_bounds_its_integers_and_ages(hosted: tuple[SyncServer, str, str]) -> None:
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    assert agent.remember("We pin the database driver").status_code == 201
    far = agent.client.get(f"/v1/memories?offset={MAX_OFFSET}")
    assert far.status_code == 200 and far.json() == {"memories": [], "total": 1}
    for query in (f"offset={2**63}", "since=999999999w", "until=999999999w"):
        response = agent.client.get(f"/v1/memories?{query}")
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"
    response = agent.client.post("/v1/recall", json={"query": "driver", "since": "999999999w"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"
    deep = agent.client.post(
        "/v1/recall", content=b"[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert deep.status_code == 422 and deep.json()["error"]["code"] == "invalid_input"


def test_a_nul_in_a_pushed_memory_never_stops_the_index(
    hosted: tuple[SyncServer, str, str],
) -> None:
    server, workspace_id, admin = hosted
    device = HttpRemote(server.url, admin, device_id="laptop")
    hlc = "1700000000001-0000-laptop"
    nul = WireMutation("m-nul", "laptop", hlc, "mem-0", None, state("mem-0", "a\x00b", hlc))
    with pytest.raises(Exception) as refused:
        device.push([nul])
    assert getattr(refused.value, "rejected", {})["m-nul"][0] == "bad_payload"
    # One already in the log (an older server took it) is skipped: the rest stays searchable.
    server.storage.push(workspace_id, [nul], None, now_ms())
    later = "1700000000002-0000-laptop"
    good = WireMutation(
        "m-1", "laptop", later, "mem-1", None, state("mem-1", "flamegraphs show hot paths", later)
    )
    device.push([good])
    agent = Agent(server.url, admin)
    assert [hit["id"] for hit in agent.recall("flamegraphs")] == ["mem-1"]
    assert agent.remember("We profile with flamegraphs").status_code == 201
    device.close()


def test_the_deepest_recall_is_served(hosted: tuple[SyncServer, str, str]) -> None:
    # limit 1000 searches 4000 deep: over pgvector's ef_search ceiling, which was a 500.
    server, _, admin = hosted
    agent = Agent(server.url, admin)
    assert agent.remember("We pin the database driver").status_code == 201
    assert len(agent.recall("database driver", limit=1000)) == 1
