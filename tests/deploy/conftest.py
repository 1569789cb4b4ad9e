"""Helpers for the deployment tests: external tools that CI installs (a missing one fails the
test under CI=true and skips it elsewhere), and the processes that the definitions start."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.deploy.definitions import ROOT


def require_tool(name: str) -> str:
    """The path of an external program (nginx, promtool, systemd-analyze, pg_dump)."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; .ci/run installs it")
    pytest.skip(f"{name} is not installed (CI installs it)")


def unprivileged_user() -> int | None:
    """The image's and the units' non-root uid (10001) when this runs as root and both the
    checkout and its interpreter can be reached by others; else None (run as whoever runs
    the suite: a machine whose Python lives under a private home cannot lend it)."""
    if os.geteuid() != 0:
        return None
    interpreter = Path(os.path.realpath(ROOT / ".venv" / "bin" / "python"))
    for folder in (*ROOT.parents, *interpreter.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return None
    return 10001


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
    return process.returncode
