"""Cross-site request checks for both web UIs: signed form tokens, and the browser's own headers.

A request that changes something (any method but GET, HEAD, OPTIONS) passes when all hold:

- the browser does not call it cross-site: ``Sec-Fetch-Site`` is absent, ``same-origin`` or
  ``none`` (typed by the user), and ``Origin``, when sent, names this very host;
- it carries a token this process issued (the ``csrf_token`` form field or the
  ``X-CSRF-Token`` header), bound to what the page was made for (the admin console binds it to
  the session; the local browser to nothing) and younger than ``max_age``.

A page on another origin can neither read a token (the same-origin policy, and the Host checks
of both apps against DNS rebinding) nor forge the headers, so either check alone refuses it;
both together cover browsers that send one of the headers but not the other.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

from fastapi import Request

from cairn.errors import CrossSiteRequest

FIELD = "csrf_token"
HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKEN = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{16})\.([0-9a-f]{64})")


class CsrfTokens:
    """Issues and checks tokens signed with a secret of this process (a restart makes the open
    forms stale: the user reloads)."""

    def __init__(
        self,
        secret: bytes | None = None,
        max_age: float = 12 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._max_age = max_age
        self._clock = clock

    def issue(self, binding: str = "") -> str:
        """A fresh token for a form of the page made for ``binding``."""
        body = f"{int(self._clock())}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(binding, body)}"

    def valid(self, token: str | None, binding: str = "") -> bool:
        """Whether ``token`` was issued by this process for ``binding`` and is not too old."""
        found = _TOKEN.fullmatch(token or "")
        if found is None:
            return False
        age = self._clock() - int(found[1])
        if not 0 <= age <= self._max_age:
            return False
        return hmac.compare_digest(found[3], self._mac(binding, f"{found[1]}.{found[2]}"))

    def _mac(self, binding: str, body: str) -> str:
        message = f"{binding}\n{body}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def cross_site(headers: Mapping[str, str]) -> str | None:
    """Why the browser's own headers say a request comes from another site, or None."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"the browser marks it {fetch_site}"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        return f"it comes from {origin[:100]!r}"
    return None


def guard(
    tokens: CsrfTokens, binding: Callable[[Request], str] = lambda request: ""
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that raises ``CrossSiteRequest`` (403) for a request that changes
    something and fails either check; ``binding`` names what the request's tokens are bound to."""

    async def check(request: Request) -> None:
        if request.method in SAFE_METHODS:
            return
        reason = cross_site(request.headers)
        if reason is not None:
            raise CrossSiteRequest(
                f"refused a request from another site ({reason}); use this page itself"
            )
        token = request.headers.get(HEADER)
        if token is None:
            value = (await request.form()).get(FIELD)
            token = value if isinstance(value, str) else None
        if not tokens.valid(token, binding(request)):
            raise CrossSiteRequest(
                "this form is out of date or did not come from this page; reload the page and "
                "try again"
            )

    return check
