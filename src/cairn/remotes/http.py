"""A Cairn sync server as a remote: the ``Remote`` interface over HTTP (``cairn server run``).

Failures come back as the same exception classes the server raised (rebuilt by their error
code), so the sync engine handles a server exactly like any other remote. The API key travels
only in the Authorization header; no message ever includes it.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from cairn import binary_pages, keyring_rules
from cairn.errors import (
    CairnError,
    InvalidInput,
    MutationRejected,
    NotFound,
    RateLimited,
    RemoteUnreachable,
    SyncError,
    error_for,
)
from cairn.protocol import (
    API_KEY,
    MAX_SEQ,
    PullPage,
    PushResult,
    WireMutation,
    json_size,
    page_from_json,
    to_json,
)
from cairn.remotes.base import KEYRING_WALK, Frames, KeyringBlob, KeyringCheck, KeyringProof

DEFAULT_TIMEOUT = 30.0
MAX_RETRY_AFTER = 3600.0
"""The longest a server's Retry-After may hold this client back (seconds)."""
MAX_KEY_ID = 2**32 - 1
ACCEPT_PAGES = f"{binary_pages.MEDIA_TYPE}, application/json;q=0.5"
"""A pull asks for the binary form; a server that predates it answers JSON."""


class HttpRemote:
    """One workspace on a sync server, through one API key; keeps its connection alive.

    ``binary``: pages travel in the binary form (``cairn.binary_pages``) when the server speaks
    it, else as JSON (False: JSON always, as clients before it did).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        device_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        binary: bool = True,
    ) -> None:
        if not API_KEY.fullmatch(api_key.strip()):
            raise InvalidInput(  # none of it is shown: it may be a secret pasted wrong
                f"the API key given ({len(api_key)} characters) is not a Cairn API key: one "
                "reads cairn_, 12 hex digits, _ and a "
                "long secret; copy it again whole from `cairn server key create` (or the "
                "workspace's creation)"
            )
        self._url = url.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key.strip()}", "User-Agent": "cairn-http-remote"}
        if device_id is not None:
            headers["X-Cairn-Device"] = device_id
        self._client = httpx.Client(base_url=self._url, headers=headers, timeout=timeout)
        self._binary = binary
        self._binary_known = False
        """Whether the server has shown it reads the binary form (a binary page, a binary
        push taken): until then a push it refuses as unreadable is sent again as JSON."""

    @property
    def supports_long_poll(self) -> bool:
        return True

    @property
    def url(self) -> str:
        return self._url

    @property
    def pages(self) -> str:
        """The media type pages travel in: the binary form, or JSON once this remote is told
        not to use it or the server showed it predates it."""
        return binary_pages.MEDIA_TYPE if self._binary else "application/json"

    def push_size(self, mutation: WireMutation) -> int:
        if self._binary:
            return binary_pages.packed_size(mutation)
        return json_size(mutation)

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        body = self._push_binary(mutations) if self._binary else None
        if body is None:
            body = self._call("POST", "/v1/sync/push", json={"mutations": to_json(mutations)})
        return PushResult(
            _int(body, "stored", self._url),
            _int(body, "duplicates", self._url),
            _int(body, "last_seq", self._url) if body.get("last_seq") is not None else None,
        )

    def _push_binary(self, mutations: Sequence[WireMutation]) -> dict[str, Any] | None:
        """The server's answer to a binary push, or None when it does not read the binary form
        (a server that predates it refuses the body as not JSON: 415 or 422 ``invalid_input``);
        from then on this remote pushes JSON."""
        response = self._send(
            "POST",
            "/v1/sync/push",
            content=binary_pages.pack_push(mutations),
            headers={"Content-Type": binary_pages.MEDIA_TYPE},
        )
        if not self._binary_known and _unread(response):
            self._binary = False
            return None
        body = self._body(response)
        self._binary_known = True
        return body

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        params: list[tuple[str, str | int | float]] = [("since", cursor or "0"), ("limit", limit)]
        if scopes is not None:
            # An empty string asks for untagged mutations only (no scope param means no filter).
            params += [("scope", s) for s in scopes] or [("scope", "")]
        if wait > 0:
            params.append(("wait", wait))
        # A long-poll may hold the answer back for `wait` seconds before the usual timeout runs.
        response = self._send(
            "GET",
            "/v1/sync/pull",
            params=params,
            timeout=self.timeout + wait,
            headers={"Accept": ACCEPT_PAGES if self._binary else "application/json"},
        )
        binary = response.is_success and binary_pages.is_binary(
            response.headers.get("content-type")
        )
        body = None if binary else self._body(response)
        try:
            if body is not None:
                return page_from_json(body)
            page = binary_pages.unpack_page(response.content)
            self._binary_known = True
            return page
        except InvalidInput as exc:
            raise SyncError(
                f"{self._url} sent a pull page this client cannot read ({exc.message})"
            ) from exc

    def get_keyring(self) -> KeyringBlob | None:
        response = self._send("GET", "/v1/keyring")
        if response.status_code == 404:
            return None
        return self._keyring(self._body(response))

    def keyring_versions(self, limit: int = KEYRING_WALK) -> list[KeyringBlob]:
        body = self._call("GET", "/v1/keyring/versions", params={"limit": limit})
        items = body.get("versions")
        if not isinstance(items, list):
            raise SyncError(f"{self._url} sent keyring versions this client cannot read")
        return [self._keyring(item) for item in items]

    def _keyring(self, body: Any) -> KeyringBlob:
        """One keyring version as the server sent it, every field checked."""
        if not isinstance(body, dict):
            raise SyncError(f"{self._url} sent a keyring this client cannot read")
        revoked = body.get("revoked_key_ids", [])
        if not isinstance(revoked, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= MAX_KEY_ID for k in revoked
        ):
            raise SyncError(f"{self._url} sent a keyring whose revoked_key_ids are not key ids")
        version = _int(body, "version", self._url)
        try:
            blob = base64.b64decode(body["blob"], validate=True)
            proof = keyring_rules.proof_from(body, version)
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidInput) as exc:
            raise SyncError(f"{self._url} sent a keyring this client cannot read") from exc
        return KeyringBlob(blob, version, tuple(revoked), proof)

    def put_keyring(
        self,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        fields = keyring_rules.proof_fields(proof)
        del fields["signed_version"]  # the server signs nothing: it checks the next number
        body = self._call(
            "PUT",
            "/v1/keyring",
            json={
                "blob": base64.b64encode(blob).decode("ascii"),
                "expected_version": expected_version,
                "revoked_key_ids": sorted(set(revoked)),
                **{k: v for k, v in fields.items() if v is not None},
            },
        )
        return _int(body, "version", self._url)

    def register_device(self, device_id: str, name: str) -> None:
        self._call("POST", "/v1/devices", json={"device_id": device_id, "name": name})

    def unregister_device(self, device_id: str) -> None:
        self._call("DELETE", f"/v1/devices/{quote(device_id, safe='')}")

    def devices(self) -> dict[str, str]:
        body = self._call("GET", "/v1/devices")
        listed = body.get("devices")
        if not isinstance(listed, list):
            raise SyncError(f"{self._url} sent a device list this client cannot read")
        return {
            d["device_id"]: d["name"]
            for d in listed
            if isinstance(d, dict)
            and isinstance(d.get("device_id"), str)
            and isinstance(d.get("name"), str)
        }

    def mark_read(self, cursor: str) -> None:
        return None  # the server needs no read positions: it never removes what it stores

    def set_frames(self, frames: Frames) -> None:
        return None  # envelopes are sealed already; the remote adds no objects of its own

    def set_keyring_check(self, check: KeyringCheck) -> None:
        return None  # the server checks every keyring version it stores

    def status(self) -> dict[str, Any]:
        """The server's view of the workspace, and its clock (``server_date``, the HTTP Date
        header) so a device can tell how far its own clock is off."""
        response = self._send("GET", "/v1/sync/status")
        return {
            "remote": self._url,
            **self._body(response),
            "server_date": response.headers.get("date"),
        }

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._body(self._send(method, path, **kwargs))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise RemoteUnreachable(
                f"{self._url} did not answer in time ({type(exc).__name__}); "
                "check the server and the network, then sync again"
            ) from exc
        except httpx.TransportError as exc:
            raise RemoteUnreachable(
                f"cannot reach {self._url} ({type(exc).__name__}: {exc}); check the URL and "
                "that the server is running, then sync again"
            ) from exc

    def _body(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer; for any other, the error it stands for."""
        try:
            body = response.json()
        except (ValueError, RecursionError):  # RecursionError: nesting past the stack
            body = None
        if response.is_success and isinstance(body, dict):
            return body
        if response.is_success:
            raise SyncError(f"{self._url} answered with something other than a JSON object")
        raise _error(response, body, self._url)


def _error(response: httpx.Response, body: Any, url: str) -> CairnError:
    """The exception a server's error answer stands for (its class comes from the code)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return SyncError(
            f"{url} answered HTTP {response.status_code} without a Cairn error; "
            "is this URL a Cairn sync server?"
        )
    exc = error_for(error["code"], str(error.get("message", "")))
    if not isinstance(exc, SyncError | InvalidInput | NotFound):
        # The server's own failures (its database, a bug) are not this machine's store errors.
        kind = RemoteUnreachable if response.status_code == 503 else SyncError
        return kind(f"the server at {url} failed ({exc.code}): {exc.message}; sync again later")
    if isinstance(exc, MutationRejected):
        rejected = error.get("rejected")
        exc.rejected = {
            str(item.get("mutation_id")): (str(item.get("code")), str(item.get("message")))
            for item in (rejected if isinstance(rejected, list) else [])
            if isinstance(item, dict)
        }
    if isinstance(exc, RateLimited):
        exc.retry_after = _retry_after(response.headers.get("Retry-After", "1"))
    return exc


def _unread(response: httpx.Response) -> bool:
    """Whether a push answer says the server could not read the body's format at all."""
    if response.status_code == 415:
        return True
    if response.status_code != 422:
        return False
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(error, dict) and error.get("code") == "invalid_input"


def _retry_after(header: str) -> float:
    """Seconds to wait from a Retry-After header: NaN, negative, or past ``MAX_RETRY_AFTER``
    (which would make a client sleep forever, or crash ``time.sleep``) is bounded."""
    try:
        seconds = float(header)
    except ValueError:
        return 1.0
    return 1.0 if math.isnan(seconds) else min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _int(body: dict[str, Any], field: str, url: str) -> int:
    value = body.get(field)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ:
        return value
    raise SyncError(
        f"{url} sent no integer {field!r} from 0 to {MAX_SEQ}; is this URL a Cairn sync server?"
    )
