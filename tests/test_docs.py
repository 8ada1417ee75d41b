"""The README and the manual in docs/ stay true: every example a user would paste runs here.

Each page's fenced blocks run in order, as a reader would go through the page, in a home of
their own (a temporary ``HOME``, so ``~/.cairn`` is a fresh store) with ``cairn`` on ``PATH``:

- ``sh`` blocks run through bash (``set -e -o pipefail``: every line must succeed);
- ``python`` blocks run with this interpreter;
- ``console`` blocks are transcripts: each ``$ command`` runs, must exit 0, and what it prints
  (stdout and stderr, as a terminal shows them) must match the lines shown under it once ids,
  times, keys and scores are normalised (``normalise``); ``...`` in a shown line stands for any
  text, and a line of ``...`` alone for any number of lines;
- ``toml`` and ``json`` blocks must parse.

Exported variables and the working folder carry from one block to the next. A block that
cannot run here is marked right above it with ``<!-- not-run: the reason -->``, which the
reader does not see on GitHub or the site. A page whose examples talk to ``127.0.0.1:8787`` (a
sync server) or ``127.0.0.1:7777`` (``cairn serve``) gets that process started on a free port
(and the address rewritten both ways), with the page's own home and data folder. The
temporary home shows as ``/home/you`` in what the commands print.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from markdown_it import MarkdownIt

from cairn import errors
from cairn.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
TIMEOUT = 120  # seconds per command: generous for a loaded 2-core machine, bounded

RUN = {"sh", "console", "python"}
PARSE = {"toml": tomllib.loads, "json": json.loads, "yaml": yaml.safe_load}
SHOWN = {"text", "ini", "xml", "nginx", "sql"}  # shown for reading, not run
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>\S[^\n]*?)\s*-->\s*", re.ASCII)
MARKER = re.compile(r"^<!--\s*not-run\b", re.ASCII | re.MULTILINE)

SYNC_SERVER = "127.0.0.1:8787"
LOCAL_API = "127.0.0.1:7777"


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language, its text, and why it is not run (if so)."""

    page: Path
    line: int
    lang: str
    text: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The page's fenced blocks in order, each with the not-run reason written above it."""
    tokens = MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8"))
    found = []
    for before, token in zip([None, *tokens], tokens, strict=False):
        if token.type not in ("fence", "code_block"):
            continue
        assert token.map is not None
        marker = None
        if before is not None and before.type == "html_block":
            match = NOT_RUN.fullmatch(before.content)
            marker = match["reason"] if match else None
        lang = token.info.split()[0] if token.type == "fence" and token.info else ""
        found.append(Block(page, token.map[0] + 1, lang, token.content, marker))
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


# --- normalising a transcript's output ----------------------------------------------------------

NORMALISE = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{8}\b"), "<conflict-id>"),
    (re.compile(r"\bcairn_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\b"), "<api-key>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?([+-]\d\d:\d\d|Z)?"), "<time>"),
    (re.compile(r"\b[A-Z2-7]{4}(-[A-Z2-7]{4}){5,}\b"), "<recovery-key>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<hex>"),  # key ids, device ids, hashes, clocks
    (re.compile(r"(?<![\w.])\d+(\.\d+)?e[+-]\d+\b"), "<n>"),  # tiny BM25 scores: 3e-06
    (re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])"), "<n>"),  # scores, cosines; not addresses
]


def normalise(text: str) -> str:
    """What may differ between two correct runs, replaced by placeholders."""
    for pattern, placeholder in NORMALISE:
        text = pattern.sub(placeholder, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def matches(shown: str, actual: str) -> bool:
    """Whether ``actual`` output fits the ``shown`` one (``...`` elides, see the module doc)."""
    parts = []
    for line in normalise(shown).split("\n"):
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.split("...")) + "\n")
    return re.fullmatch("".join(parts), normalise(actual) + "\n", re.DOTALL) is not None


def transcript(text: str) -> list[tuple[str, str]]:
    """``(command, shown output)`` pairs of a console block (``\\`` continues a command)."""
    steps: list[tuple[list[str], list[str]]] = []
    continued = False
    for line in text.splitlines():
        if continued:
            steps[-1][0].append(line)
        elif line.startswith("$ "):
            steps.append(([line[2:]], []))
        else:
            assert steps, f"a transcript starts with a `$ ` command line, not {line!r}"
            steps[-1][1].append(line)
        continued = line.endswith("\\") and not steps[-1][1]
    return [("\n".join(cmd), "\n".join(out)) for cmd, out in steps]


# --- running a page -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Reader:
    """A reader going through one page: a home, a shell state, and the servers the page uses."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.cwd = self.home / "work"
        self.cwd.mkdir(parents=True)
        self.state = tmp / "state.sh"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
        env.update(
            HOME=str(self.home),
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",  # stdout and stderr interleave as on a terminal
            CAIRN_KEY_STORE="file",  # never the OS keyring of the machine running the tests
            COLUMNS="100",
        )
        self.env = env
        self.state.write_text("", encoding="utf-8")
        # The variables a fresh bash has: the ones a page sets are the others.
        baseline = subprocess.run(
            ["bash", "-c", "compgen -v"], env=env, capture_output=True, text=True, check=True
        )
        self.baseline = tmp / "baseline"
        self.baseline.write_text(baseline.stdout, encoding="utf-8")
        self.servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def rewrite(self, text: str) -> str:
        """The page's default addresses pointed at the servers started for it."""
        for address, (_process, actual) in self.servers.items():
            for host in ("127.0.0.1", "localhost"):
                text = text.replace(f"{host}:{address.rsplit(':', 1)[1]}", actual)
        return text

    def unrewrite(self, text: str) -> str:
        for address, (_process, actual) in self.servers.items():
            text = text.replace(actual, address)
        return text.replace(str(self.home), "/home/you")

    def shell(
        self, script: str, stdin: str | None = None, strict: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in bash with the state the earlier blocks left, then save it;
        ``strict`` stops at the first failing line (a transcript's line runs as typed)."""
        self.serve_for(script)
        save = (
            f"{{ export -p; declare -p $(compgen -v | grep -vxF -f {self.baseline}) 2>/dev/null; "
            f"}} > {self.state}; pwd > {self.state}.cwd"
        )
        wrapped = (
            f'cd "$(cat {self.state}.cwd 2>/dev/null || echo {self.cwd})"\n'
            f". {self.state}\n"
            f"trap '{save}' EXIT\n"
            + ("set -eo pipefail\n" if strict else "")
            + self.rewrite(script)
        )
        return subprocess.run(
            ["bash", "-c", wrapped],
            input=stdin,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )

    def serve_for(self, text: str) -> None:
        """Start the servers ``text`` talks to that are not running yet."""
        for address in (SYNC_SERVER, LOCAL_API):
            port = address.rsplit(":", 1)[1]
            if f":{port}" in text and address not in self.servers:
                self.start(address)

    def start(self, address: str) -> None:
        """A sync server (on the page's ``~/.cairn/server``) or ``cairn serve`` on a free port,
        started with the exports the page made so far."""
        port = free_port()
        if address == SYNC_SERVER:
            command = f"exec cairn server run --port {port} --data ~/.cairn/server"
        else:
            command = f"exec cairn serve --port {port} --no-autosync"
        wrapped = f". {self.state}\n{command}"
        log = self.state.with_name(f"server-{port}.log")
        with log.open("wb") as sink:  # a file, not a pipe: a pipe nobody reads fills and blocks
            process = subprocess.Popen(
                ["bash", "-c", wrapped], env=self.env, cwd=self.cwd, stdout=sink, stderr=sink
            )
        actual = f"127.0.0.1:{port}"
        self.servers[address] = (process, actual)
        for _ in range(TIMEOUT * 10):
            try:
                httpx.get(f"http://{actual}/healthz", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if process.poll() is not None:
                    error = log.read_text(encoding="utf-8", errors="replace")
                    raise AssertionError(f"`{command}` exited: {error}") from None
                time.sleep(0.1)
        raise AssertionError(f"`{command}` did not answer /healthz")

    def stop(self) -> None:
        for process, _actual in self.servers.values():
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def run(self, block: Block) -> list[str]:
        """The block's failures, as messages (empty when it ran as shown)."""
        if block.lang == "sh":
            done = self.shell(block.text)
            if done.returncode != 0:
                return [f"{block.where}: exit {done.returncode}\n{done.stdout}"]
        elif block.lang == "python":
            self.serve_for(block.text)
            done = self.shell(f"exec {sys.executable} -", stdin=self.rewrite(block.text))
            if done.returncode != 0:
                return [f"{block.where}: exit {done.returncode}\n{done.stdout}"]
        elif block.lang == "console":
            failures = []
            for command, shown in transcript(block.text):
                done = self.shell(command, strict=False)
                actual = self.unrewrite(done.stdout)
                if done.returncode != 0:
                    failures.append(f"{block.where}: `{command}` exit {done.returncode}\n{actual}")
                elif not matches(shown, actual):
                    failures.append(
                        f"{block.where}: `{command}` printed\n{actual}\n"
                        f"which does not match the page's\n{shown}\n"
                        f"(normalised: {normalise(actual)!r} vs {normalise(shown)!r})"
                    )
            return failures
        return []


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    page_reader = Reader(tmp_path)
    try:
        yield page_reader
    finally:
        page_reader.stop()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_examples_run_as_shown(page: Path, reader: Reader) -> None:
    failures: list[str] = []
    for block in blocks_of(page):
        if block.lang in RUN and block.not_run is None:
            failures.extend(reader.run(block))
            if failures:
                break  # later blocks build on this one
    assert not failures, "\n\n".join(failures)


# --- the rules every page keeps -----------------------------------------------------------------


def test_every_block_is_run_parsed_or_says_why_not() -> None:
    """A block runs, parses, or is plainly for reading; a skipped one says why, visibly."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        markers = len(MARKER.findall(text))
        with_reason = sum(1 for b in blocks_of(page) if b.not_run is not None)
        assert markers == with_reason, f"{page}: a not-run marker without a reason or a block"
    for block in ALL_BLOCKS:
        assert block.lang in RUN | set(PARSE) | SHOWN, f"{block.where}: fence language?"
        if block.not_run is not None:
            assert block.lang in RUN, f"{block.where}: only runnable blocks are marked not-run"
        if block.lang in PARSE:
            try:
                PARSE[block.lang](block.text)
            except ValueError as exc:
                pytest.fail(f"{block.where}: does not parse as {block.lang}: {exc}")


def test_readme_is_the_front_door() -> None:
    """At most 200 lines: what Cairn is, the two commands, a transcript, a map of the docs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"README links to {link}, which is not in docs/"


def test_pages_cite_only_files_in_the_repository() -> None:
    """A document (`DESIGN.md`) or source file (`src/...py`) the pages name is in this repository:
    the docs stand on their own."""
    cited = re.compile(r"`((?:[\w.-]+/)*[A-Z][A-Z_-]*\.md|(?:src|bench|tests)/[\w./-]+\.py)`")
    for page in PAGES:
        for name in set(cited.findall(page.read_text(encoding="utf-8"))):
            assert (ROOT / name).is_file(), f"{page.name} cites `{name}`, not in the repository"


def _commands(group: typer.Typer, prefix: str) -> Iterator[str]:
    for info in group.registered_commands:
        assert info.callback is not None
        yield f"{prefix} {info.name or info.callback.__name__.rstrip('_').replace('_', '-')}"
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        name = sub.name or sub.typer_instance.info.name
        yield from _commands(sub.typer_instance, f"{prefix} {name}")


def test_the_cli_reference_names_every_command() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [c for c in _commands(app, "cairn") if f"`{c}" not in reference]
    assert not missing, f"docs/cli.md does not document {missing}"


def test_the_error_table_is_the_code() -> None:
    """docs/troubleshooting.md lists every error code with its exit code and HTTP status."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(\w+)` \| (\d+) \| (\d+) \|", page, re.MULTILINE))
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    expected = {
        (c.code, str(c.exit_code), str(c.http_status))
        for c in classes
        if issubclass(c, errors.CairnError)
    }
    assert rows == expected


def test_the_site_builds_strict_and_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    """`mkdocs build --strict` passes (no broken link or anchor), and no page pulls a script,
    a stylesheet or a font from another site: the manual reads offline."""
    site = tmp_path / "site"
    built = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert built.returncode == 0, built.stderr
    external = re.compile(
        r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//"""
    )
    for page in site.rglob("*.html"):
        found = external.findall(page.read_text(encoding="utf-8"))
        assert not found, f"{page.name} loads {found}"
    for sheet in site.rglob("*.css"):
        assert "//fonts." not in sheet.read_text(encoding="utf-8"), sheet


def test_the_module_map_in_the_architecture_page_is_the_tree() -> None:
    """docs/architecture.md's module map is what scripts/module_map.py makes of src/cairn now."""
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "module_map.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert made in page, "run `python scripts/module_map.py --write` after moving a module"
