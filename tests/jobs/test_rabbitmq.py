"""On RabbitMQ, a task that fails for good is rejected into a real dead-letter exchange and
queue (besides the dead-letter row admins see). Needs the machine's RabbitMQ."""

from __future__ import annotations

import os
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
from kombu import Connection

from steward.jobs.worker import DEAD_LETTER_QUEUE
from tests.engines import EngineSet
from tests.workers import running_worker

AMQP_URL = os.environ.get("STEWARD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _reachable(AMQP_URL), reason="no RabbitMQ on this machine"),
]


@pytest.mark.slow
def test_rejected_task_reaches_rabbitmqs_dead_letter_queue(engines: EngineSet) -> None:
    with running_worker(engines, broker=AMQP_URL) as (client, _), Connection(AMQP_URL) as amqp:
        channel = amqp.default_channel
        channel.queue_purge(DEAD_LETTER_QUEUE)
        key = uuid.uuid4().hex
        result = client.send_task("tests.broken_until_fixed", args=[key])  # fails for good
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=True)
            if message is None:
                time.sleep(0.1)
        assert message is not None, "nothing reached the dead-letter queue"
        headers = message.headers
        assert headers["id"] == result.id
        assert headers["task"] == "tests.broken_until_fixed"
        death = headers["x-death"][0]
        assert (death["reason"], death["queue"]) == ("rejected", "default")
