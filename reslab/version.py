"""The package's version (its one home), and the git commit the running code came from."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def code_version() -> dict[str, Any]:
    """reslab's version, and the git commit (with a dirty flag) when the package runs from a git checkout."""
    facts: dict[str, Any] = {"reslab_version": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        top = Path(_git(here, "rev-parse", "--show-toplevel"))
        if (top / "reslab" / "version.py").resolve() != Path(__file__).resolve():
            return facts   # installed inside some other repository: its commit says nothing about reslab
        commit = _git(here, "rev-parse", "HEAD")
        # Tracked files only: untracked run folders or data in the checkout do not change the code.
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):   # no git, or not a checkout (an installed wheel)
        return facts
    facts.update(git_commit=commit, git_dirty=bool(dirty))
    return facts


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
