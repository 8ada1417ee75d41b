"""The `cairn` command end to end, as a subprocess against a fresh CAIRN_HOME."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from cairn.cli.app import app
from cairn.embedding.onnx import OnnxEmbedder
from cairn.search import ivf

CAIRN = str(Path(sys.executable).with_name("cairn"))


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAIRN, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def ok_json(env: dict[str, str], *args: str) -> object:
    result = run(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_remember_recall_show_list_forget(cairn_env: dict[str, str]) -> None:
    made = ok_json(
        cairn_env,
        "remember",
        "We deploy with blue-green releases on Kubernetes",
        "--kind",
        "decision",
        "--project",
        "api",
        "--tag",
        "deploy,k8s",
    )
    assert isinstance(made, dict) and made["created"] is True
    assert made["tags"] == ["deploy", "k8s"] and made["project"] == "api"
    ok_json(
        cairn_env,
        "remember",
        "ERR_CONN_RESET means the proxy idle timeout expired",
        "-k",
        "gotcha",
        "-p",
        "web",
    )
    hits = ok_json(cairn_env, "recall", "how do we ship to production")
    assert isinstance(hits, list) and hits[0]["id"] == made["id"] and hits[0]["why"]
    only_web = ok_json(cairn_env, "recall", "ERR_CONN_RESET", "--project", "web")
    assert isinstance(only_web, list) and [h["project"] for h in only_web] == ["web"]
    listing = ok_json(cairn_env, "list", "--kind", "decision")
    assert isinstance(listing, dict) and listing["total"] == 1
    shown = ok_json(cairn_env, "show", made["id"])
    assert isinstance(shown, dict) and shown["content"].startswith("We deploy")
    human = run(cairn_env, "recall", "blue-green")
    assert human.returncode == 0 and "We deploy with blue-green" in human.stdout
    assert made["id"] in human.stdout
    ok_json(cairn_env, "forget", made["id"])
    gone = run(cairn_env, "show", made["id"])
    assert gone.returncode == 0 and "forgotten" in gone.stdout  # the tombstone
    stats = ok_json(cairn_env, "stats")
    assert isinstance(stats, dict) and stats["memories"] == 1 and stats["forgotten"] == 1


def test_edit_adds_tags_and_changes_kind(cairn_env: dict[str, str]) -> None:
    made = ok_json(cairn_env, "remember", "Feature flags live in LaunchDarkly", "--tag", "flags")
    assert isinstance(made, dict)
    edited = ok_json(cairn_env, "edit", made["id"][:8], "--kind", "fact", "--tag", "vendor,ops")
    assert isinstance(edited, dict)
    assert (edited["kind"], edited["tags"]) == ("fact", ["flags", "ops", "vendor"])
    assert edited["content"] == "Feature flags live in LaunchDarkly"
    nothing = run(cairn_env, "edit", made["id"])
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr


def test_shell_completion_completes_commands(cairn_env: dict[str, str]) -> None:
    # `--show-completion` guesses the shell from the parent process (CI runs under sh),
    # so the test asks for the bash script by name, the way `--install-completion` writes it.
    script = run({**cairn_env, "_CAIRN_COMPLETE": "source_bash"})
    assert (
        script.returncode == 0
        and "complete " in script.stdout
        and "_CAIRN_COMPLETE" in script.stdout
    )
    env = {**cairn_env, "_CAIRN_COMPLETE": "complete_bash", "COMP_WORDS": "cairn sync st"}
    completed = run({**env, "COMP_CWORD": "2"})
    assert completed.returncode == 0 and completed.stdout.split() == ["status"]


def test_remember_reads_stdin_and_reports_duplicates(cairn_env: dict[str, str]) -> None:
    first = run(cairn_env, "remember", "-", "--json", stdin="Backups run nightly at 02:00 UTC\n")
    again = run(cairn_env, "remember", "Backups run nightly at 02:00 UTC")
    assert json.loads(first.stdout)["created"] is True
    assert again.returncode == 0 and "already known" in again.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["remember", "   "], 2, "the memory is empty"),
        (["remember", "x", "--tag", "two words"], 2, "not valid"),
        (["recall", "x", "--since", "someday"], 2, "cannot read the time"),
        (["show", "01234567-89ab-7cde-8f01-23456789abcd"], 4, "no memory has the id"),
        (["import", "/nonexistent.jsonl"], 2, "does not exist"),
    ],
)
def test_bad_input_gets_a_clear_message_and_exit_code(
    cairn_env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    result = run(cairn_env, *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    listing = run(cairn_env, "list", "--json")
    assert json.loads(listing.stdout)["total"] == 0


def test_errors_are_json_on_stdout_with_json(cairn_env: dict[str, str]) -> None:
    result = run(cairn_env, "show", "missing-id", "--json")
    assert result.returncode == 4
    assert json.loads(result.stdout)["error"]["code"] == "not_found"


def test_corrupt_store_is_reported(cairn_env: dict[str, str]) -> None:
    home = Path(cairn_env["CAIRN_HOME"])
    home.mkdir(parents=True)
    (home / "cairn.db").write_text("garbage " * 1000)
    result = run(cairn_env, "list")
    assert result.returncode == 5 and "not a readable Cairn store" in result.stderr
    assert "cairn export" not in result.stderr  # which could not read it either


def test_export_import_round_trip(cairn_env: dict[str, str], tmp_path: Path) -> None:
    for text in ("Alpha service owns billing", "Beta service owns search", "Gamma owns email"):
        run(cairn_env, "remember", text, "-p", "svc")
    out = tmp_path / "export.jsonl"
    assert ok_json(cairn_env, "export", str(out)) == {"exported": 3, "file": str(out)}
    other = {**cairn_env, "CAIRN_HOME": str(tmp_path / "other")}
    report = ok_json(other, "import", str(out))
    assert isinstance(report, dict)
    assert (report["imported"], report["embedded"], report["errors"]) == (3, 0, [])
    again = ok_json(other, "import", str(out))
    assert isinstance(again, dict) and again["imported"] == 0 and again["unchanged"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "fine"}\n{oops\n')
    result = run(other, "import", str(bad))
    assert result.returncode == 2 and "line 2" in result.stderr
    assert json.loads(run(other, "list", "--json").stdout)["total"] == 4


def test_an_import_line_that_is_not_utf8_is_reported_and_the_rest_imports(
    cairn_env: dict[str, str], tmp_path: Path
) -> None:
    lines = [b'{"content": "first"}', b'{"content": "caf\xe9 latin-1"}', b'{"content": "third"}']
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    result = run(cairn_env, "import", str(bad))
    assert result.returncode == 2 and "line 2" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    piped = subprocess.run(
        [CAIRN, "import", "-", "--json"], env=cairn_env, input=bad.read_bytes(), capture_output=True
    )
    assert [e["line"] for e in json.loads(piped.stdout)["errors"]] == [2]
    listing = json.loads(run(cairn_env, "list", "--json").stdout)
    assert sorted(m["content"] for m in listing["memories"]) == ["first", "third"]


def _commands() -> list[list[str]]:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return [[name] for name in sorted(group.commands)]


def _walk(group: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every command under ``group``, sub-groups included, with its path of names."""
    found = []
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        found.append(((*path, name), command))
        if hasattr(command, "commands"):
            found.extend(_walk(command, (*path, name)))
    return found


def test_every_command_has_help_text() -> None:
    commands = _walk(typer.main.get_command(app))
    names = {" ".join(path) for path, _command in commands}
    assert {
        "remember",
        "recall",
        "list",
        "show",
        "edit",
        "forget",
        "export",
        "import",
        "stats",
        "doctor",
        "repair",
        "mcp",
        "serve",
        "sync setup",
        "sync push",
        "sync pull",
        "sync now",
        "sync status",
        "sync conflicts",
        "sync resolve",
        "sync dead-letters",
        "server run",
    } <= names
    for path, command in commands:
        assert command.help and len(command.help) > 15, path  # type: ignore[attr-defined]
        for param in command.params:  # type: ignore[attr-defined]
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{path} --{param.name} has no help"


@pytest.mark.parametrize("command", [[], ["remember"], ["recall"], ["import"]])
def test_help_runs(command: list[str], cairn_env: dict[str, str]) -> None:
    result = run(cairn_env, *command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


def test_missing_model_is_reported(cairn_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cairn_env, "CAIRN_MODEL_DIR": str(tmp_path / "no-model-here")}
    result = run(env, "remember", "anything")
    assert result.returncode == 6
    assert "model.onnx is missing" in result.stderr and "model_dir" in result.stderr
    assert (
        not (Path(cairn_env["CAIRN_HOME"]) / "cairn.db").exists()
        or json.loads(run(cairn_env, "list", "--json").stdout)["total"] == 0
    )


def test_config_file_sets_the_model_folder(cairn_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(cairn_env["CAIRN_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f'[embedding]\nmodel_dir = "{tmp_path / "absent"}"\n')
    result = run(cairn_env, "recall", "anything")
    assert result.returncode == 6 and str(tmp_path / "absent") in result.stderr
    (home / "config.toml").write_text("[embedding\n")
    broken = run(cairn_env, "list")
    assert broken.returncode == 7 and "config.toml" in broken.stderr


def test_a_kind_must_be_a_word_and_errors_quote_what_was_typed(cairn_env: dict[str, str]) -> None:
    empty = run(cairn_env, "remember", "Kinds are words", "--kind", "")
    assert empty.returncode == 2 and "kind '' is not valid" in empty.stderr
    bad = run(cairn_env, "remember", "Kinds are words", "--kind", "Bad Kind")
    assert bad.returncode == 2 and "kind 'Bad Kind' is not valid" in bad.stderr
    assert json.loads(run(cairn_env, "list", "--json").stdout)["total"] == 0


def test_show_says_superseded_by_and_forgetting_twice_shows_the_tombstone(
    cairn_env: dict[str, str],
) -> None:
    old = ok_json(cairn_env, "remember", "We lint with flake8", "--topic", "linter")
    new = ok_json(cairn_env, "remember", "We lint with ruff", "--topic", "linter")
    assert isinstance(old, dict) and isinstance(new, dict)
    shown_old = run(cairn_env, "show", old["id"]).stdout
    assert f"superseded by {new['id']}" in shown_old and "supersedes" not in shown_old
    assert f"supersedes {old['id']}" in run(cairn_env, "show", new["id"]).stdout
    short = run(cairn_env, "show", new["id"][:6])
    assert short.returncode == 4 and "at least 8 characters" in short.stderr

    first = run(cairn_env, "forget", new["id"])
    again = run(cairn_env, "forget", new["id"][:24])  # by a prefix, as typed
    assert (first.returncode, again.returncode) == (0, 0), again.stderr
    assert f"forgot {new['id']}" in first.stdout and "already forgotten" in again.stdout
    tombstone = run(cairn_env, "show", new["id"])
    assert tombstone.returncode == 0 and "forgotten" in tombstone.stdout
    assert ok_json(cairn_env, "show", new["id"])["deleted"] is True  # type: ignore[index]


def test_a_filter_on_an_unknown_project_names_the_projects_there_are(
    cairn_env: dict[str, str],
) -> None:
    run(cairn_env, "remember", "The API is versioned by URL", "--project", "api")
    for command in (["list"], ["recall", "versioning"]):
        result = run(cairn_env, *command, "--project", "apj")
        assert result.returncode == 0
        assert "no project is called 'apj'" in result.stderr and "api" in result.stderr


def test_usage_lines_name_arguments_plainly() -> None:
    runner = CliRunner()
    for command, usage in (
        (["show"], "Usage: cairn show [OPTIONS] ID"),
        (["edit"], "Usage: cairn edit [OPTIONS] ID [TEXT]"),
        (["sync", "resolve"], "Usage: cairn sync resolve [OPTIONS] ID"),
        (["export"], "Usage: cairn export [OPTIONS] [FILE]"),
    ):
        shown = runner.invoke(app, [*command, "--help"]).output
        assert usage in shown, shown


def test_serve_says_where_it_listens_and_a_busy_port_is_a_clear_error(
    cairn_env: dict[str, str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run(cairn_env, "serve", "--port", str(port), "--no-autosync")
        assert busy.returncode == 2, busy.stderr
        assert f"127.0.0.1:{port} is in use" in busy.stderr and "--port" in busy.stderr
        assert "Traceback" not in busy.stderr and "Errno" not in busy.stderr
    serving = subprocess.Popen(
        [CAIRN, "serve", "--port", str(port), "--no-autosync"],
        env=cairn_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert serving.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        serving.terminate()
        _out, err = serving.communicate(timeout=30)
    assert f"the local API on http://127.0.0.1:{port}" in err


def test_a_large_import_leaves_the_vector_index_built_and_saved_for_recall(
    cairn_env: dict[str, str], tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    count = ivf.MIN_ROWS  # the smallest store that gets inverted lists, saved beside it
    rng = np.random.default_rng(21)
    vectors = rng.normal(size=(count, embedder.dim)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    file = tmp_path / "big.jsonl"
    with file.open("w") as out:
        for i, vector in enumerate(vectors):
            record = {
                "content": f"imported memory {i}",
                "model_id": embedder.model_id,
                "embedding": base64.b64encode(vector.tobytes()).decode("ascii"),
            }
            out.write(json.dumps(record) + "\n")
    result = run(cairn_env, "import", str(file))
    assert result.returncode == 0, result.stderr
    assert "the vector index is built and saved for recall" in result.stderr
    path = Path(str(ok_json(cairn_env, "stats")["path"]))  # type: ignore[index]
    meta = json.loads(Path(f"{path}.vectors", "meta.json").read_text())
    assert meta["rows"] == count and meta["model_id"] == embedder.model_id
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(file.read_text().splitlines()[:10]) + "\n")
    other = {**cairn_env, "CAIRN_HOME": str(tmp_path / "other")}
    result = run(other, "import", str(small))
    assert result.returncode == 0 and "vector index" not in result.stderr
