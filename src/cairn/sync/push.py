"""Pushing: each changed entity's current state, sealed, sent in batches under a byte budget.

Outbox entries are cleared only once the remote acknowledged their batch; a batch the remote
finds too large is split; mutations it refuses go to the dead-letter list (with the reason)
and the rest still go. A push the remote refuses because another device revoked its key is
sealed again, once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cairn.errors import MutationRejected, PayloadTooLarge, RateLimited
from cairn.protocol import WireMutation
from cairn.store import outbox
from cairn.sync import payload
from cairn.sync.channel import Channel, Progress

Item = tuple[outbox.Pending, WireMutation]
FRAME = 64
"""Bytes a push body takes beyond its mutations (``{"mutations": [...]}``: 16 in JSON, at most
16 in MessagePack), with room to spare."""


@dataclass
class PushReport:
    pushed: int = 0
    stored: int = 0
    duplicates: int = 0
    kept_local: int = 0
    dead_lettered: int = 0
    batches: int = 0
    bytes: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    """How many changes were refused for each reason code (``revoked_key``, ...)."""


def push(channel: Channel, progress: Progress | None = None) -> PushReport:
    """Send every pending change; returns what happened (raises on transport failures)."""
    total = channel.state.pending_count()
    report = PushReport()
    after = 0
    done = 0
    while True:
        queued, wire, local_only = _envelopes(channel, after)
        if not queued:
            break
        after = queued[-1].seq
        if local_only:
            channel.state.acknowledge(local_only)
            report.kept_local += len(local_only)
        _send_all(channel, wire, report)
        done += len(queued)
        if progress:
            progress(done, max(total, done))
    if report.batches:
        channel.state.pushed()
    return report


def _envelopes(
    channel: Channel, after: int
) -> tuple[list[outbox.Pending], list[Item], list[outbox.Pending]]:
    """The next pending changes; each one's state, sealed in an envelope; and the ones the
    rules keep local."""
    queued, states, relations = channel.state.outgoing(channel.batch_size, after)
    rules = channel.rules
    wire: list[Item] = []
    local_only: list[outbox.Pending] = []
    for pending in queued:
        entity_id = pending.mutation.entity_id
        if pending.mutation.entity == "memory" and entity_id in states:
            state = states[entity_id][1]
            if not rules.allows(state.memory):
                local_only.append(pending)
                continue
            body, hlc, project = payload.encode_memory(state), state.hlc, state.memory.project
            wire_id = entity_id
        elif entity_id in relations:
            relation = relations[entity_id]
            endpoints = [states.get(e) for e in (relation.from_id, relation.to_id)]
            if any(e is None or not rules.allows(e[1].memory) for e in endpoints):
                local_only.append(pending)
                continue
            body, hlc = payload.encode_relation(relation), relation.hlc
            project = endpoints[0][1].memory.project if endpoints[0] else ""
            wire_id = payload.relation_entity_id(relation)
        else:  # nothing to send (cannot happen: rows are never removed)
            local_only.append(pending)
            continue
        wire.append(
            (
                pending,
                WireMutation(
                    pending.mutation.mutation_id,
                    channel.device_id,
                    hlc,
                    wire_id,
                    channel.scope(project),
                    channel.envelopes.seal(wire_id, pending.mutation.mutation_id, body),
                ),
            )
        )
    return queued, wire, local_only


def _send_all(channel: Channel, items: list[Item], report: PushReport) -> None:
    """Send ``items`` in batches under the byte budget, counting into ``report``: each
    mutation costs what it adds to the request in the form the remote sends (binary or JSON),
    plus a separator; the body's own framing has ``FRAME`` bytes kept for it."""
    batch: list[Item] = []
    size = FRAME
    for item in items:
        cost = channel.remote.push_size(item[1]) + 1
        if batch and size + cost > channel.batch_bytes:
            _send(channel, batch, report)
            batch, size = [], FRAME
        batch.append(item)
        size += cost
    if batch:
        _send(channel, batch, report)


def _send(channel: Channel, batch: list[Item], report: PushReport, resealed: bool = False) -> None:
    """Push one batch; split it when too large; seal again what is under a revoked key;
    dead-letter what the remote refuses otherwise."""
    for attempt in range(5):
        try:
            result = channel.remote.push([w for _, w in batch])
            break
        except PayloadTooLarge as exc:
            if len(batch) == 1:
                _dead_letter(channel, batch, exc.code, exc.message, report)
                return
            half = len(batch) // 2
            _send(channel, batch[:half], report, resealed)
            _send(channel, batch[half:], report, resealed)
            return
        except MutationRejected as exc:
            refused = [item for item in batch if item[1].mutation_id in exc.rejected]
            if not refused:  # the remote named none: the batch as a whole is refused
                _dead_letter(channel, batch, exc.code, exc.message, report)
                return
            rest = [item for item in batch if item[1].mutation_id not in exc.rejected]
            stale = []  # sealed under a key another device revoked: sealed again, once
            for item in refused:
                code, message = exc.rejected[item[1].mutation_id]
                if code == "revoked_key" and not resealed:
                    stale.append(item)
                else:
                    _dead_letter(channel, [item], code, message, report)
            if stale:
                channel.envelopes.refresh()
                fresh = [(p, channel.envelopes.reseal(w)) for p, w in stale]
                _send(channel, fresh, report, resealed=True)
            if rest:
                _send(channel, rest, report, resealed)
            return
        except RateLimited as exc:
            if attempt == 4:
                raise
            time.sleep(min(exc.retry_after, 30.0))
    channel.state.acknowledge([p for p, _ in batch])
    report.pushed += len(batch)
    report.stored += result.stored
    report.duplicates += result.duplicates
    report.batches += 1
    report.bytes += sum(len(w.payload) for _, w in batch)


def _dead_letter(
    channel: Channel, items: Sequence[Item], code: str, message: str, report: PushReport
) -> None:
    channel.state.dead_letter("push", [p.mutation for p, _ in items], code, message)
    report.dead_lettered += len(items)
    report.dead_letter_reasons[code] = report.dead_letter_reasons.get(code, 0) + len(items)
