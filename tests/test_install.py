"""Installing Cairn as users do: a built wheel installed as a tool, and a refusal on old Pythons."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `uv build` makes of this checkout."""
    dist = tmp_path_factory.mktemp("dist")
    built = run(BIN / "uv", "build", "--wheel", "-o", dist, ROOT)
    assert built.returncode == 0, built.stderr
    (found,) = dist.glob("cairn_memory-*.whl")
    return found


def test_a_built_wheel_installs_as_a_tool_and_runs(tmp_path: Path, wheel: Path) -> None:
    """`uv tool install` of the wheel puts `cairn` on PATH in its own environment: what an MCP
    client config or a service unit then runs."""
    env = {
        **os.environ,
        "UV_TOOL_DIR": str(tmp_path / "tools"),
        "UV_TOOL_BIN_DIR": str(tmp_path / "bin"),
        "CAIRN_HOME": str(tmp_path / "home"),
    }
    env.pop("PYTHONPATH", None)  # the tool must run from its own environment, not this checkout
    installed = run(BIN / "uv", "tool", "install", "--python", sys.executable, wheel, env=env)
    assert installed.returncode == 0, installed.stderr
    cairn = tmp_path / "bin" / "cairn"
    assert run(cairn, "--version", env=env).stdout.startswith("cairn ")
    remembered = run(cairn, "remember", "Installed tools find their model offline", env=env)
    assert remembered.returncode == 0, remembered.stderr
    found = run(cairn, "recall", "does the tool work without a network?", env=env)
    assert found.returncode == 0 and "Installed tools find their model offline" in found.stdout


def test_pip_refuses_python_3_10_and_names_the_version(wheel: Path) -> None:
    refused = run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--no-deps",
        "--python-version",
        "3.10",
        "--only-binary=:all:",
        wheel,
    )
    assert refused.returncode != 0
    assert "requires a different Python: 3.10.0 not in '>=3.11'" in refused.stderr


def test_the_supported_pythons_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert "Python >= 3.11" in (ROOT / "README.md").read_text()


def test_the_wheel_holds_the_web_pages_templates_and_assets(wheel: Path) -> None:
    """Every template, stylesheet, script and vendored file of the web UIs ships in the wheel:
    the pages are served from the installed package, never from the network."""
    web = ROOT / "src" / "cairn" / "web"
    wanted = {
        f"cairn/{path.relative_to(web.parent).as_posix()}"
        for folder in ("templates", "static")
        for path in (web / folder).rglob("*")
        if path.is_file()
    }
    assert "cairn/web/static/vendor/swagger-ui/swagger-ui-bundle.js" in wanted
    assert "cairn/web/templates/base.html" in wanted
    with zipfile.ZipFile(wheel) as archive:
        assert wanted - set(archive.namelist()) == set()
