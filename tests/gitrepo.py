"""A real Git repository in a temporary folder, for tests that load manifests or revisions from Git."""

from __future__ import annotations

import shutil
from pathlib import Path

import git


class ConfigRepo:
    """Wraps a GitPython repo with the two moves tests make: write files and commit them."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.repo = git.Repo.init(path, initial_branch="main")
        with self.repo.config_writer() as config:
            config.set_value("user", "name", "fleetshift tests")
            config.set_value("user", "email", "tests@fleetshift.invalid")

    def write(self, relative: str, content: str | bytes) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return target

    def remove(self, relative: str) -> None:
        target = self.path / relative
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    def copy_tree(self, source: Path, relative: str = ".") -> None:
        shutil.copytree(source, self.path / relative, dirs_exist_ok=True)

    def commit(self, message: str) -> str:
        self.repo.git.add(A=True)
        self.repo.index.commit(message)
        return str(self.repo.head.commit.hexsha)
