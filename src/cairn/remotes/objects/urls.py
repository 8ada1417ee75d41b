"""Opening an object remote from its URL: a folder (file://) or an S3 bucket (AWS credentials)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cairn.errors import AuthFailed, InvalidInput, RemoteUnreachable
from cairn.remotes.objects.repository import ObjectRemote


def open_url(
    url: str, endpoint_url: str | None = None, device_id: str | None = None, create: bool = False
) -> ObjectRemote:
    """The object remote a URL names: ``file:///path/to/folder`` or ``s3://bucket/prefix``.

    A folder must exist unless ``create`` (``cairn sync setup --create``): a typo never makes
    a new, empty workspace, and a folder that went away (unmounted, moved) is unreachable
    until it is back. S3 credentials and region come the usual AWS way (environment
    variables, then the shared config and credentials files and ``AWS_PROFILE``, through
    boto3's chain); ``endpoint_url`` points at an S3-compatible service (R2, B2, MinIO, ...)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInput(f"{url!r}: a folder remote is file:///absolute/path")
        folder = Path(unquote(parsed.path))
        if not folder.is_absolute():
            raise InvalidInput(f"{url!r}: a folder remote is file:///absolute/path")
        if not create and not folder.is_dir():
            raise RemoteUnreachable(
                f"the sync folder {folder} does not exist (moved, or not mounted?); sync "
                "waits for it to be back"
            )
        from obstore.store import LocalStore

        try:
            store = LocalStore(folder, mkdir=create)
        except Exception as exc:  # obstore raises its own errors for a folder it cannot make
            raise InvalidInput(f"cannot use {folder} as a sync folder: {exc}") from exc
        return ObjectRemote(store, folder.as_uri(), device_id)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidInput(f"{url!r}: name the bucket, s3://bucket/optional/prefix")
        return ObjectRemote(_s3_store(url, endpoint_url), url.rstrip("/"), device_id)
    raise InvalidInput(f"{url!r} is not an object storage URL (file:///path or s3://bucket)")


def _s3_store(url: str, endpoint_url: str | None) -> Any:
    import boto3  # type: ignore[import-untyped]
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    config: dict[str, Any] = {}
    session = boto3.Session()  # environment, then AWS_PROFILE / ~/.aws files, SSO, roles
    if session.get_credentials() is None:
        raise AuthFailed(
            f"no AWS credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE (a profile in ~/.aws/credentials)"
        )
    provider = Boto3CredentialProvider(session)
    if endpoint_url:
        config["endpoint"] = endpoint_url.rstrip("/")
    client: dict[str, Any] = {"connect_timeout": "5s", "timeout": "60s"}
    if (endpoint_url or "").startswith("http://"):
        client["allow_http"] = True
    retry: dict[str, Any] = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
    try:
        return S3Store.from_url(
            url,
            config=config or None,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config=retry,  # type: ignore[arg-type]
            credential_provider=provider,
        )
    except Exception as exc:  # obstore's configuration errors
        raise InvalidInput(f"cannot use {url}: {exc}") from exc
