"""What an import loads: plain modules load the standard library only, the package root loads no
embedder, remote or worker, and a sync server serving end-to-end workspaces never loads
onnxruntime. Each check runs in a fresh interpreter and inspects its ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("onnxruntime", "tokenizers", "numpy", "httpx", "obstore", "fastapi", "keyring")


def loaded_after(code: str) -> list[str]:
    """Top-level names of the modules ``code`` loads beyond a bare interpreter's."""
    script = textwrap.dedent(
        """
        import json, sys
        before = set(sys.modules)
        {code}
        print(json.dumps(sorted({{m.split(".")[0] for m in set(sys.modules) - before}})))
        """
    ).format(code=textwrap.dedent(code).strip())
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout.splitlines()[-1])
    return names


@pytest.mark.parametrize("module", ["cairn.model", "cairn.errors", "cairn.protocol", "cairn.hlc"])
def test_plain_modules_load_the_standard_library_only(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert "cairn" in loaded
    outside = [n for n in loaded if n != "cairn" and n not in sys.stdlib_module_names]
    assert outside == [], f"{module} loads {outside}"


def test_the_package_root_loads_no_embedder_remote_or_worker() -> None:
    loaded = loaded_after("import cairn; cairn.__version__; cairn.Memory")
    outside = [n for n in loaded if n != "cairn" and n not in sys.stdlib_module_names]
    assert outside == [] and not set(HEAVY) & set(loaded)


def test_cairn_open_loads_the_store_on_first_use() -> None:
    loaded = loaded_after("import cairn; cairn.Store")
    assert "sqlite3" in loaded and "onnxruntime" not in loaded


def test_a_sync_server_serving_end_to_end_workspaces_never_loads_onnxruntime(
    tmp_path: Path,
) -> None:
    """A push and a pull of a sealed mutation through the server's HTTP routes."""
    code = f"""
        from pathlib import Path
        from fastapi.testclient import TestClient
        from cairn.server.context import now_ms
        from cairn.protocol import SEALED_HEADER, SEALED_VERSION, WireMutation
        from cairn.server import keys
        from cairn.server.app import create_app
        from cairn.server.backends import open_storage

        storage = open_storage(Path({str(tmp_path)!r}))
        workspace, admin = keys.create_workspace(storage, "e2e", now_ms())
        sealed = SEALED_HEADER.pack(SEALED_VERSION, 1, b"s" * 16, b"n" * 12) + b"x" + b"t" * 16
        wire = WireMutation("m-1", "dev-a", "1700000000000-0000-dev-a", "e", None, sealed)
        with TestClient(create_app(storage)) as client:
            client.headers["Authorization"] = "Bearer " + admin
            pushed = client.post("/v1/sync/push", json={{"mutations": [wire.to_json()]}})
            assert pushed.status_code == 200, pushed.text
            pulled = client.get("/v1/sync/pull", params={{"since": 0}})
            assert pulled.status_code == 200 and "m-1" in pulled.text, pulled.text
        storage.close()
    """
    loaded = loaded_after(code)
    assert "fastapi" in loaded  # it did serve
    assert "onnxruntime" not in loaded and "tokenizers" not in loaded


def test_heavy_list_names_real_dependencies() -> None:
    """The names checked above are the real top-level modules of installed dependencies."""
    import importlib.util

    missing = [n for n in HEAVY if importlib.util.find_spec(n) is None]
    assert missing == []
