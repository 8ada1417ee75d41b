"""Pulling: pages from the remote, opened and merged, each committed with the cursor after it.

A pull applies each page in one transaction together with the cursor that follows it, so a
crash never skips or half-applies a page. Every payload is opened before it is merged; one
that fails to open is dead-lettered and the rest of its page still applies. Pulled memories
keep the vector they were sent with: nothing is embedded again unless it came from another
embedding model.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn.errors import CairnError, CryptoError
from cairn.protocol import WireMutation
from cairn.replication import MemoryState, Mutation, RelationState
from cairn.sync import payload
from cairn.sync.apply import apply
from cairn.sync.channel import Channel, Progress

FIRST_PAGE = 1000


@dataclass
class PullReport:
    received: int = 0
    applied: int = 0
    unchanged: int = 0
    own: int = 0
    filtered: int = 0
    failed: int = 0
    embedded: int = 0
    duplicates_merged: int = 0
    pages: int = 0


@dataclass
class _Page:
    """A pulled page, decoded: the states to apply and what was skipped or unreadable."""

    cursor: str
    has_more: bool
    received: int
    own: int = 0
    filtered: int = 0
    states: list[MemoryState | RelationState] = field(default_factory=list)
    failed: list[tuple[WireMutation, CairnError]] = field(default_factory=list)


def pull(channel: Channel, progress: Progress | None = None, wait: float = 0.0) -> PullReport:
    """Apply everything the remote has after this device's cursor.

    The next page is fetched and decoded on a second thread while this one is applied
    (SQLite releases the GIL while it writes); each page still commits with its own cursor.
    """
    scopes = [channel.scope(p) for p in channel.rules.include_projects]
    counts = PullReport()
    cursor, own = channel.state.cursor()
    start = cursor
    page_size = channel.page_size
    # Trigger: the first page has nothing to overlap with. Why: a small one starts the
    # apply sooner, while later pages stay large (each commit costs the keyword index a
    # segment merge). Outcome: measured in bench/bench_sync.py. It is fetched on this
    # thread: a long-poll on the pool's (non-daemon) thread would hold up interpreter exit.
    page = _fetch(channel, cursor, scopes or None, wait, min(page_size, FIRST_PAGE), own)
    finished = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-pull") as fetcher:
        while True:
            ahead = None
            if page.has_more:
                ahead = fetcher.submit(
                    _fetch, channel, page.cursor, scopes or None, 0.0, page_size, own
                )
            if not _apply_page(channel, page, cursor, counts):
                break  # another pull of this store moved the cursor first: it goes on
            cursor = page.cursor
            if progress:
                progress(counts.received, counts.received + (page_size if ahead else 0))
            if ahead is None:
                finished = True
                break
            page = ahead.result()
    if cursor is not None and cursor != start and not channel.closed:
        channel.remote.mark_read(cursor)  # an object remote records how far this device read
    # the remote was read to its end: restored (see ``cairn.store.sync_state.RESTORE``)
    channel.state.pulled(bool(counts.received), own and finished)
    return counts


def _fetch(
    channel: Channel,
    cursor: str | None,
    scopes: Sequence[str] | None,
    wait: float,
    limit: int,
    own: bool = False,
) -> _Page:
    """One page from the remote, decoded and sorted into what to apply and what not
    (this device's own mutations are skipped unless ``own``: see ``RESTORE``)."""
    page = channel.remote.pull(cursor, limit, scopes, wait)
    decoded = _Page(page.cursor, page.has_more, len(page.mutations))
    for mutation in page.mutations:
        if mutation.device_id == channel.device_id and not own:
            decoded.own += 1  # this device's own change: already here
            continue
        try:
            state = payload.decode(mutation, channel.envelopes.open(mutation))
        except (payload.PayloadError, CryptoError) as exc:
            decoded.failed.append((mutation, exc))
            continue
        if isinstance(state, MemoryState) and not channel.rules.allows(state.memory):
            decoded.filtered += 1
            continue
        decoded.states.append(state)
    return decoded


def _apply_page(channel: Channel, page: _Page, after: str | None, counts: PullReport) -> bool:
    """Apply ``page`` (fetched after cursor ``after``) and move the cursor past it; False,
    changing nothing, when the cursor is no longer ``after`` (a concurrent pull, such as a
    worker's long-poll beside a requested round, applied it already) or when the channel
    was closed meanwhile (a long-poll answered after its worker stopped)."""
    state = channel.state
    failed = [
        (Mutation(bad.mutation_id, bad.device_id, bad.hlc, "?", bad.entity_id), e.code, e.message)
        for bad, e in page.failed
    ]
    result = state.apply_page(
        after,
        page.cursor,
        lambda conn: apply(conn, page.states, state.model_id),
        failed,
        lambda: channel.closed,
    )
    if result is None:
        return False
    counts.received += page.received
    counts.applied += result.memories + result.relations
    counts.unchanged += result.unchanged
    counts.own += page.own
    counts.filtered += page.filtered
    counts.failed += len(page.failed)
    counts.embedded += state.embed_missing(result.needs_vector)
    counts.duplicates_merged += result.duplicates_merged
    counts.pages += 1 if page.received else 0  # pages that brought something
    return True
