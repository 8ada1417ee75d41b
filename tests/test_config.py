"""Settings: the default project of a folder (from real git repositories) and config.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cairn import config
from cairn.errors import ConfigError


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"


def test_every_clone_and_worktree_of_a_repository_gets_the_same_project(tmp_path: Path) -> None:
    """One repository, cloned into folders named after people, over ssh and https, with a
    worktree and a renamed clone: one project, named by the origin remote."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    for folder, origin in (
        (alice, "git@github.com:Acme/Shop.git"),
        (bob, "https://bob:ghp_s3cret@github.com/acme/shop/"),
    ):
        git(tmp_path, "init", "-q", str(folder))
        git(folder, "remote", "add", "origin", origin)
    git(alice, "commit", "-q", "--allow-empty", "-m", "start")
    git(alice, "worktree", "add", "-q", str(tmp_path / "shop-feature"))
    (bob / "src" / "deep").mkdir(parents=True)
    renamed = tmp_path / "old-name-of-bobs-clone"
    shutil.copytree(bob, renamed)

    names = {
        config.default_project(folder)
        for folder in (alice, bob / "src" / "deep", tmp_path / "shop-feature", renamed)
    }
    assert names == {"acme/shop"}


def test_without_an_origin_the_project_is_the_repositorys_folder(tmp_path: Path) -> None:
    solo = tmp_path / "solo"
    git(tmp_path, "init", "-q", str(solo))
    git(solo, "commit", "-q", "--allow-empty", "-m", "start")
    git(solo, "worktree", "add", "-q", str(tmp_path / "solo-hotfix"))
    assert config.default_project(solo) == "solo"
    assert config.default_project(tmp_path / "solo-hotfix") == "solo"  # the repository's name
    assert config.default_project(tmp_path) == "default"  # not in a repository


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("git@github.com:acme/shop.git", "acme/shop"),
        ("git@github.com:acme/shop", "acme/shop"),
        ("ssh://git@github.com:22/acme/shop.git", "acme/shop"),
        ("https://github.com/acme/shop", "acme/shop"),
        ("https://user:token@github.com/Acme/Shop.git/", "acme/shop"),
        ("git://example.org/group/sub/tool.git", "group/sub/tool"),
        ("/srv/git/shop.git", "shop"),
        ("file:///srv/git/shop.git", "shop"),
        ("../shop", "shop"),
        ("https://github.com/", None),
        ("", None),
    ],
)
def test_origin_urls_are_normalised_to_one_name(url: str, name: str | None) -> None:
    assert config.repository_name(url) == name


def test_config_errors_name_the_section_and_unknown_sections_are_reported(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"CAIRN_HOME": str(home)}
    (home / "config.toml").write_text('[recall]\nnear_duplicate = "high"\n')
    with pytest.raises(ConfigError, match=r"recall\.near_duplicate"):
        config.load(env)
    (home / "config.toml").write_text('[embedding]\nmax_tokens = "many"\n')
    with pytest.raises(ConfigError, match=r"embedding\.max_tokens"):
        config.load(env)
    (home / "config.toml").write_text("[syncing]\nexclude_projects = []\n")
    with pytest.raises(ConfigError, match=r"unknown table \'syncing\'"):
        config.load(env)
    (home / "config.toml").write_text("[recall]\nnear_dupe = 0.9\n")
    with pytest.raises(ConfigError, match=r"unknown key recall\.near_dupe"):
        config.load(env)
