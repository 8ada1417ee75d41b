"""`scripts/audit_deps.py`, the dependency audit `make lint` runs: what fails CI and what only
warns. The service's answers are pip-audit's own output shapes; an outage is a real one (a
proxy on a closed local port)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "audit_deps.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(*dependencies: dict[str, object]) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


CLEAN = {"name": "fastapi", "version": "0.165.0", "vulns": []}
NOT_FOUND = {"name": "uvicorn", "skip_reason": "Dependency not found on PyPI and could not be"}


def test_a_known_vulnerability_fails_with_its_fix(audit: ModuleType) -> None:
    vuln = {"id": "GHSA-xxxx", "fix_versions": ["0.40.0"], "aliases": [], "description": "d"}
    bad = {"name": "starlette", "version": "0.39.0", "vulns": [vuln]}
    outcome, message = audit.verdict(1, report(CLEAN, bad), "")
    assert outcome == "vulnerable" and "starlette 0.39.0: GHSA-xxxx (fixed in 0.40.0)" in message


def test_a_clean_audit_passes_and_names_what_it_could_not_audit(audit: ModuleType) -> None:
    outcome, message = audit.verdict(0, report(CLEAN, NOT_FOUND), "")
    assert outcome == "ok" and "1 distributions" in message and "uvicorn" in message


def test_a_service_that_knows_no_release_audited_nothing(audit: ModuleType) -> None:
    """A mirror answering 404 for every release makes pip-audit say "no known
    vulnerabilities": that must never pass for an audit."""
    assert audit.verdict(0, report(NOT_FOUND, NOT_FOUND), "")[0] == "unavailable"


@pytest.mark.parametrize(
    ("stderr", "outcome"),
    [
        ("Traceback ...\nrequests.exceptions.ReadTimeout: read timed out", "unavailable"),
        ("ERROR:pip_audit._cli:Could not connect to PyPI's vulnerability feed", "unavailable"),
        ("Traceback ...\npip_audit._service.interface.ServiceError", "unavailable"),
        ("usage: pip-audit ...\npip-audit: error: unrecognized arguments: --bad", "failed"),
    ],
)
def test_only_network_failures_are_outages(audit: ModuleType, stderr: str, outcome: str) -> None:
    assert audit.verdict(1, "", stderr)[0] == outcome


def test_an_unreachable_service_warns_unless_strict(tmp_path: Path) -> None:
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    env.pop("CAIRN_AUDIT_STRICT", None)
    run = [sys.executable, str(SCRIPT)]
    lenient = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert lenient.returncode == 0, lenient.stderr
    assert "dependency audit SKIPPED" in lenient.stderr and "127.0.0.1" not in lenient.stdout
    strict = subprocess.run(
        run, env={**env, "CAIRN_AUDIT_STRICT": "1"}, capture_output=True, text=True, timeout=120
    )
    assert strict.returncode == 1 and "dependency audit SKIPPED" in strict.stderr
