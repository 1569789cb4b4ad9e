"""`systemctl restart steward-api@PORT` for the rolling-restart test's instances: SIGTERM the
instance, wait until it has exited, start it again with the environment it had. Usage:
python tests/deploy/restart_instance.py STATE_DIR PORT (STATE_DIR holds PORT.pid, PORT.env)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # exited; its parent (the test) has not reaped it yet


def main(state: Path, port: str) -> None:
    pid = int((state / f"{port}.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while not _gone(pid):
        if time.monotonic() > deadline:
            sys.exit(f"instance {port} did not stop within 60 s")
        time.sleep(0.05)
    env = json.loads((state / f"{port}.env").read_text())
    with (state / f"{port}.log").open("ab") as log:
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
             "steward.app:app"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    (state / f"{port}.pid").write_text(str(process.pid))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
