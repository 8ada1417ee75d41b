"""Audit the installed dependencies for known vulnerabilities with pip-audit (`make lint`).

pip-audit asks PyPI's JSON API (``/pypi/<name>/<version>/json``, its default service) about
every distribution installed in this environment: the project's runtime and dev dependencies.
What the run decides:

- A known vulnerability fails it (exit 1), unless ``IGNORED`` lists its id with the reason it
  does not apply here. Fix by raising the floor in pyproject.toml to a fixed version.
- The service not answering (no network, a timeout, a proxy error, a 5xx) does not fail it: the
  run says ``dependency audit SKIPPED`` and why, and exits 0, so an outage at PyPI cannot turn
  CI red; the next run audits again. ``CAIRN_AUDIT_STRICT=1`` (a release job) fails instead.
- A service that answers but knows none of the installed releases audited nothing: a PyPI
  mirror or proxy that serves the project pages but not per-release JSON (every lookup a 404,
  so pip-audit reports each as "not found" and "no known vulnerabilities"). That is treated
  like an outage, never as a pass.
- Anything else pip-audit fails on (a bug, a bad option) fails the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

IGNORED: dict[str, str] = {}
"""Vulnerability id -> why it does not apply to Cairn (passed as ``--ignore-vuln``)."""
REQUEST_TIMEOUT = 15  # seconds per request to the service
RUN_TIMEOUT = 300  # seconds for the whole audit
# What pip-audit's output holds when the service could not be asked (it lets most network
# errors escape as tracebacks; its own ConnectionError messages; a non-404 HTTP error).
_UNAVAILABLE = (
    "requests.exceptions.",
    "urllib3.exceptions.",
    "Could not connect to PyPI",
    "PyPI is not redirecting properly",
    "ServiceError",
)


def verdict(returncode: int, stdout: str, stderr: str) -> tuple[str, str]:
    """(``ok`` | ``vulnerable`` | ``unavailable`` | ``failed``, what to print) for a run of
    ``pip-audit --format json``."""
    try:
        report: Any = json.loads(stdout)
        dependencies = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        last = stderr.strip().splitlines()[-1:] or [f"exit code {returncode}, no output"]
        if any(marker in stderr for marker in _UNAVAILABLE):
            return "unavailable", f"the vulnerability service did not answer: {last[0]}"
        return "failed", f"pip-audit failed:\n{stderr.strip()}"
    vulnerable = [
        f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in "
        f"{', '.join(vuln.get('fix_versions') or []) or 'no release yet'})"
        for dep in dependencies
        for vuln in dep.get("vulns") or []
    ]
    if vulnerable:
        return "vulnerable", "known vulnerabilities:\n  " + "\n  ".join(vulnerable)
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    skipped = [dep["name"] for dep in dependencies if "skip_reason" in dep]
    if not audited:
        return "unavailable", (
            f"the vulnerability service knew none of the {len(skipped)} installed "
            "distributions (a PyPI mirror without per-release JSON?): nothing was audited"
        )
    message = f"no known vulnerabilities in {len(audited)} distributions"
    if skipped:
        message += f" ({len(skipped)} not on PyPI, not audited: {', '.join(skipped)})"
    return "ok", message


def probe() -> str | None:
    """Why the service cannot audit anything, found with one request before the whole run
    (which takes as many requests as there are distributions); None when it answers."""
    url = f"https://pypi.org/pypi/pip-audit/{version('pip-audit')}/json"
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"{url} is not found: this PyPI serves no per-release JSON (a mirror?)"
        return f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # URLError, timeouts, TLS errors
        return f"{url}: {exc}"


def main() -> int:
    pip_audit = Path(sys.executable).with_name("pip-audit")
    command = [str(pip_audit), "--format", "json", "--progress-spinner", "off"]
    command += ["--skip-editable", "--timeout", str(REQUEST_TIMEOUT)]
    for vuln_id in IGNORED:
        command += ["--ignore-vuln", vuln_id]
    unanswered = probe()
    try:
        if unanswered is not None:
            outcome, message = "unavailable", unanswered
        else:
            done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
            outcome, message = verdict(done.returncode, done.stdout, done.stderr)
    except subprocess.TimeoutExpired:
        outcome, message = "unavailable", f"pip-audit did not finish within {RUN_TIMEOUT} s"
    strict = os.environ.get("CAIRN_AUDIT_STRICT") == "1"
    if outcome == "unavailable":
        print(f"dependency audit SKIPPED: {message}", file=sys.stderr)
        if not strict:
            print("(not a failure; CAIRN_AUDIT_STRICT=1 makes it one)", file=sys.stderr)
        return 1 if strict else 0
    print(f"dependency audit: {message}", file=sys.stderr if outcome != "ok" else sys.stdout)
    return 0 if outcome == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
