"""Prometheus text exposition for the sync server: request and sync counters, log gauges.

Labels never hold workspace names or key ids (they may be private, and they are unbounded);
per-workspace figures are aggregated.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cairn.server.storage import Totals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_COUNTERS = {
    "cairn_mutations_pushed_total": "Mutations stored by pushes.",
    "cairn_mutations_duplicate_total": "Pushed mutations that were already stored (ignored).",
    "cairn_mutations_pulled_total": "Mutations returned by pulls.",
    "cairn_push_payload_bytes_total": "Payload bytes received by pushes (duplicates too).",
    "cairn_pull_payload_bytes_total": "Payload bytes of the mutations returned by pulls.",
}


class Metrics:
    """Counters in memory (since the process started); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, int]] = Counter()
        self._counters: Counter[str] = Counter()
        self._auth_failures: Counter[tuple[str, bool]] = Counter()

    def request(self, route: str, method: str, status: int) -> None:
        with self._lock:
            self._requests[(route, method, status)] += 1

    def pushed(self, stored: int, duplicates: int, payload_bytes: int) -> None:
        with self._lock:
            self._counters["cairn_mutations_pushed_total"] += stored
            self._counters["cairn_mutations_duplicate_total"] += duplicates
            self._counters["cairn_push_payload_bytes_total"] += payload_bytes

    def pulled(self, count: int, payload_bytes: int) -> None:
        with self._lock:
            self._counters["cairn_mutations_pulled_total"] += count
            self._counters["cairn_pull_payload_bytes_total"] += payload_bytes

    def auth_failed(self, reason: str, limited: bool) -> None:
        """A failed authentication: ``reason`` is one of the few ``keys.Rejection`` names;
        ``limited``: answered 429 instead of 401."""
        with self._lock:
            self._auth_failures[(reason, limited)] += 1

    def render(
        self,
        totals: Totals,
        waiting: int = 0,
        transactions: Mapping[str, int] | None = None,
        keys_cached: int = 0,
    ) -> str:
        """The exposition text: these counters, the database ``transactions`` this process
        began (by access), then gauges over every workspace, the long-polls ``waiting`` and
        the API keys cached in this process, and which process answered (its pid)."""
        with self._lock:
            requests = sorted(self._requests.items())
            counters = dict(self._counters)
            failures = sorted(self._auth_failures.items())
        lines = [
            "# HELP cairn_http_requests_total HTTP requests by route template, method and status.",
            "# TYPE cairn_http_requests_total counter",
        ]
        for (route, method, status), count in requests:
            labels = f'route="{_escape(route)}",method="{method}",status="{status}"'
            lines.append(f"cairn_http_requests_total{{{labels}}} {count}")
        for name, help_text in _COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines.append(f"{name} {counters.get(name, 0)}")
        lines += [
            "# HELP cairn_auth_failures_total Failed authentications by reason and by whether "
            "they were answered 429 (over a failure limit) instead of 401.",
            "# TYPE cairn_auth_failures_total counter",
        ]
        for (reason, limited), count in failures:
            labels = f'reason="{reason}",limited="{str(limited).lower()}"'
            lines.append(f"cairn_auth_failures_total{{{labels}}} {count}")
        lines += [
            "# HELP cairn_db_transactions_total Database transactions this process began, by "
            "access (read or write): what it costs the database.",
            "# TYPE cairn_db_transactions_total counter",
        ]
        for access, count in sorted((transactions or {}).items()):
            lines.append(f'cairn_db_transactions_total{{access="{access}"}} {count}')
        gauges = {
            "cairn_workspaces": ("Workspaces on this server.", totals.workspaces),
            "cairn_mutations_stored": ("Mutations stored, all workspaces.", totals.mutations),
            "cairn_latest_seq_max": ("The highest seq of any workspace.", totals.max_seq),
            "cairn_long_polls_waiting": ("Long-polls waiting for news in this process.", waiting),
            "cairn_api_keys_cached": ("API keys this process keeps in memory.", keys_cached),
        }
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        lines += [
            "# HELP cairn_process The server process that answered (a worker, with --workers).",
            "# TYPE cairn_process gauge",
            f'cairn_process{{pid="{os.getpid()}"}} 1',
        ]
        return "\n".join(lines) + "\n"


class RequestMetrics:
    """ASGI middleware counting each response by its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.request(template, method, status)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
