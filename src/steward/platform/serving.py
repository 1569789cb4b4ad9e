"""The gunicorn worker class of the production deployment (deploy/gunicorn.conf.py): the
uvicorn worker, with a shutdown that does not reset connections it has just accepted.

uvicorn's shutdown stops accepting, then at once closes every connection that is not in the
middle of a request, including one accepted a moment ago whose request has arrived but not
yet been read: the client (nginx) gets a reset, and a reset after the request was sent is
not retried. Here the worker stops accepting, lets such requests arrive and start for
`ACCEPTED_DRAIN_S`, then shuts down as uvicorn does (requests in flight finish; streams
follow their own grace). Written here because neither uvicorn nor uvicorn-worker has the
setting; the override is `_serve`, whose body is uvicorn-worker's own with this server."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import ClassVar

import uvicorn
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]

from steward.platform import sse

ACCEPTED_DRAIN_S = 0.5

# uvicorn's options, the same under `steward api` and gunicorn. No permessage-deflate on
# WebSockets: realtime events are a few hundred bytes, which compression barely shrinks,
# while it costs a compressor per connection (most of a socket's ~80 KiB of memory) and a
# compression per message per socket (6% of the API's CPU in a 1,000-socket fan-out).
SERVER_OPTIONS: dict[str, object] = {"ws_per_message_deflate": False}


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections from here on
        # Open streams begin their drain at once (their grace, then a farewell or their end).
        sse.stop_streams()
        await asyncio.sleep(ACCEPTED_DRAIN_S)
        await super().shutdown(sockets)


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, object]] = {**_UvicornWorker.CONFIG_KWARGS, **SERVER_OPTIONS}

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
