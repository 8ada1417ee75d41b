"""The admin console's sessions: a signed, expiring cookie naming the admin key that signed in.

The cookie holds the key's id (public) and a random session id, signed with itsdangerous under
the server run's secret (``ServerSettings.console_secret``, shared by its workers). It is
HttpOnly, SameSite=Strict and, when the request came over HTTPS, Secure (``over_https``). Every
request reads the key again: a key revoked, or stripped of its admin scope, ends its sessions at
once. Signing out clears the cookie; a copy taken before then lasts until it expires
(``console_session``) or its key is revoked. Forms carry ``cairn.web.csrf`` tokens bound to the
session id.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from cairn.server import keys
from cairn.server.context import ServerContext
from cairn.server.storage import ApiKey, Workspace

COOKIE = "cairn_console"
PATH = "/dashboard"
_KEY_ID = re.compile(r"[0-9a-f]{12}", re.ASCII)
_SID = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)


@dataclass(frozen=True)
class Session:
    """Who is signed in: their live admin key, its workspace, and what they may open."""

    key: ApiKey
    home: Workspace
    sid: str
    """The session's random id: what its forms' CSRF tokens are bound to."""
    operator: bool
    """Whether the key belongs to the operator workspace (``--operator-workspace``)."""

    def may_open(self, workspace: Workspace) -> bool:
        return self.operator or workspace.id == self.home.id


class Sessions:
    """Issues and reads session cookies for one server run."""

    def __init__(self, secret: str, max_age: float) -> None:
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(secret, salt="cairn.console.session")

    def start(self, response: Response, request: Request, key_id: str) -> None:
        """Sets a new session's cookie on ``response`` (with a new session id)."""
        value = self._serializer.dumps({"key": key_id, "sid": secrets.token_urlsafe(32)})
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self.max_age),
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=over_https(request),
        )

    @staticmethod
    def end(response: Response, request: Request) -> None:
        response.delete_cookie(
            COOKIE,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=over_https(request),
        )

    def claims(self, request: Request) -> tuple[str, str] | None:
        """The key id and session id of the request's cookie, if it is genuine and unexpired."""
        raw = request.cookies.get(COOKIE)
        if raw is None or len(raw) > 400:
            return None
        try:
            data = self._serializer.loads(raw, max_age=int(self.max_age))
        except BadSignature:  # forged, altered, or expired (SignatureExpired is one)
            return None
        if not isinstance(data, dict):
            return None
        key_id, sid = data.get("key"), data.get("sid")
        if not isinstance(key_id, str) or not isinstance(sid, str):
            return None
        if not _KEY_ID.fullmatch(key_id) or not _SID.fullmatch(sid):
            return None
        return key_id, sid

    def read(self, request: Request, ctx: ServerContext) -> Session | None:
        """The request's session, if its cookie holds one and its key is still a live admin
        key; else None."""
        claims = self.claims(request)
        if claims is None:
            return None
        key = ctx.storage.find_key(claims[0])
        if key is None or key.revoked_at is not None or not keys.grants(key.scopes, "admin"):
            return None
        home = ctx.storage.workspace_by_id(key.workspace_id)
        operator = ctx.settings.operator_workspace == home.name
        return Session(key, home, claims[1], operator)


def over_https(request: Request) -> bool:
    """Whether the browser reached the server over HTTPS: uvicorn's own TLS, a proxy trusted
    with ``--forwarded-allow-ips`` (uvicorn then sets the scheme), or any proxy saying so in
    ``X-Forwarded-Proto``. Believing that header untrusted is safe here: it can only add the
    Secure flag, which a browser on plain HTTP answers by not sending the cookie back."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"
