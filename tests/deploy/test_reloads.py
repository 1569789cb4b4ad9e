"""Reloads and restarts under load fail no request: a gunicorn `HUP` (workers forked anew
from the preloaded application), and the documented rolling restart behind nginx, where each
instance is stopped with SIGTERM and replaced while the other serves. Open server-sent event
streams end cleanly on the stopping instance and reconnect through nginx to the other.

How long /health waited is printed here and measured by `make bench` (bench/reload.py);
this test holds the behaviour: nothing fails, the workers or instances really changed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.deploy.conftest import require_tool
from tests.deploy.definitions import DEPLOY
from tests.deploy.nginx import configure, running
from tests.deploy.serving import (
    apply_load,
    gunicorn,
    gunicorn_env,
    start_gunicorn,
    stop_gunicorn,
    wait_ready,
    workers_of,
)
from tests.engines import EngineSet
from tests.factories import make_account
from tests.live import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


async def test_a_gunicorn_reload_under_load_fails_nothing(
    engines: EngineSet, tmp_path: Path
) -> None:
    binary = require_tool("nginx")
    port = free_port()
    env = gunicorn_env(engines, port, tmp_path / "metrics")
    site = configure(tmp_path / "nginx", [f"127.0.0.1:{port}"])
    tls = ssl.create_default_context(cafile=str(site.certificate))
    base = f"https://127.0.0.1:{site.https}"
    with gunicorn(env, tmp_path / "gunicorn.log") as master, running(binary, site):
        async with httpx.AsyncClient(base_url=base, verify=tls) as http:
            alice = await make_account(http)
        before = workers_of(master.pid)
        assert len(before) == 2
        stop = asyncio.Event()
        load = asyncio.create_task(apply_load(base, alice.access_token, stop, verify=tls))
        await asyncio.sleep(1.5)
        os.kill(master.pid, signal.SIGHUP)

        def replaced() -> bool:
            now = workers_of(master.pid)
            return len(now) == 2 and not now & before

        await wait_until(replaced, within_s=30, every_s=0.05, what="new workers")
        await asyncio.sleep(1.5)
        stop.set()
        result = await load
    print(f"HUP: {result.answered} answered ({result.retried} retried on a new connection), "
          f"/health waited at most {result.health_max_s:.3f} s")  # fmt: skip
    assert result.failures == []
    assert result.answered > 50 and set(result.statuses) <= {200, 201}


async def test_the_rolling_restart_behind_nginx_fails_nothing(
    engines: EngineSet, tmp_path: Path
) -> None:
    """deploy/systemd/rolling-restart.sh, as written, with this test's instances in place of
    the units (tests/deploy/restart_instance.py does what `systemctl restart` does)."""
    binary = require_tool("nginx")
    ports = [free_port(), free_port()]
    state = tmp_path / "instances"
    state.mkdir()
    # The systemd deployment's upstream file, with this test's ports for 8001 and 8002.
    upstream = (DEPLOY / "nginx" / "upstream.systemd.conf").read_text()
    servers = [
        line.removeprefix("server ").rstrip(";").replace("8001", str(ports[0]))
        .replace("8002", str(ports[1]))
        for line in upstream.splitlines() if line.startswith("server ")
    ]  # fmt: skip
    assert len(servers) == 2
    site = configure(tmp_path / "nginx", servers)
    tls = ssl.create_default_context(cafile=str(site.certificate))
    first: list[subprocess.Popen[bytes]] = []
    for port in ports:
        env = gunicorn_env(engines, port, tmp_path / f"metrics-{port}", SHUTDOWN_GRACE_S="2")
        (state / f"{port}.env").write_text(json.dumps(env))
        first.append(start_gunicorn(env, state / f"{port}.log"))
        (state / f"{port}.pid").write_text(str(first[-1].pid))
    nginx_command = f"{binary} -p {site.prefix} -c {site.prefix / 'conf' / 'nginx.conf'}"
    script_env = {
        **os.environ,
        "STEWARD_UPSTREAM": str(site.prefix / "conf" / "steward-upstream.conf"),
        "STEWARD_RESTART": f"{sys.executable} {HERE / 'restart_instance.py'} {state} %s",
        "STEWARD_NGINX": nginx_command,
        "STEWARD_DRAIN_S": "1",
    }
    try:
        for port, process in zip(ports, first, strict=True):
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}", process,
                                    state / f"{port}.log")  # fmt: skip
        with running(binary, site):
            base = f"https://127.0.0.1:{site.https}"
            async with httpx.AsyncClient(base_url=base, verify=tls, timeout=30) as http:
                alice = await make_account(http)
                stop = asyncio.Event()
                load = asyncio.create_task(apply_load(base, alice.access_token, stop, verify=tls))
                stream_ends: list[str] = []

                async def follow() -> None:
                    # A live stream; when its instance stops, it ends and the client comes
                    # back. Reconnecting may meet a kept-alive connection that nginx's reload
                    # closed (no answer at all): a client tries again, as EventSource does. A
                    # stream cut in the middle is not excused.
                    while True:
                        async with contextlib.AsyncExitStack() as stack:
                            try:
                                source = await stack.enter_async_context(aconnect_sse(
                                    http, "GET", "/api/v1/realtime/events", headers=alice.headers
                                ))  # fmt: skip
                            except httpx.RemoteProtocolError:
                                stream_ends.append("reconnect")
                                continue
                            if source.response.status_code != 200:
                                body = await source.response.aread()
                                stream_ends.append(f"{source.response.status_code} {body[:200]!r}")
                                continue
                            async for event in source.aiter_sse():
                                stream_ends.append(event.event)
                        stream_ends.append("end")

                follower = asyncio.create_task(follow())
                await asyncio.sleep(1.5)
                script = await asyncio.create_subprocess_exec(
                    str(DEPLOY / "systemd" / "rolling-restart.sh"), *map(str, ports),
                    env=script_env, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                output = (await asyncio.wait_for(script.communicate(), 240))[0].decode()
                assert script.returncode == 0, output
                await asyncio.sleep(1.5)
                stop.set()
                result = await load
                follower.cancel()  # its last stream stays open: nobody stops that instance
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
    finally:
        for process in first:
            stop_gunicorn(process)
        for port in ports:
            pid = int((state / f"{port}.pid").read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    print(f"rolling restart: {result.answered} answered ({result.retried} retried on a new "
          f"connection), /health waited at most {result.health_max_s:.3f} s")  # fmt: skip
    done = [line for line in output.splitlines() if line.endswith(" restarted")]
    assert done == [f"instance {p} restarted" for p in ports]
    # The instances were stopped with SIGTERM and exited cleanly, and replaced.
    assert [p.returncode for p in first] == [0, 0]
    assert all(int((state / f"{p}.pid").read_text()) not in (f.pid for f in first) for p in ports)
    assert result.failures == []
    assert result.answered > 50 and set(result.statuses) <= {200, 201}
    # A stream on a stopping instance ends cleanly, and the client gets back in.
    assert [e for e in stream_ends if e not in ("ready", "end", "todo.created", "reconnect")] == []
    assert stream_ends.count("ready") >= 2
