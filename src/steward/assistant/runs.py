"""A run's life, in one place: how it starts, streams, ends, is cancelled, and is followed
again after a dropped connection. SSE, JSON, the WebSocket and the worker all use it the
same way; the routers only translate HTTP.

**Start.** `start()` reads the sender's conversation with its recent history (404 for anyone
else's), refuses a spent quota or a message that cannot fit (`plan.check_fits`), and plans
the run. The run's task starts at once, and its rows (the run, "running", and the user's
message) are stored and committed in the same unit of work meanwhile: the provider's wait
for a first token hides the commit's round trips. Writes about the run wait for that commit
(`Execution.stored`); if it fails, the run stops unrecorded and the sender gets the error.
`queue()` stores a background run "queued" and enqueues its job in one transaction; a
worker executes it with `execute_queued()`, which claims it first (a redelivered job after
a worker died retries a run that had streamed nothing, else closes it as failed:
`repository.claim_run`).

**Stream.** The run's task (`_drive`) writes every event to the run's log, a Redis Stream
(`streams.RunLog`), and hands it to the live reader (`LiveRun`). The task, not the reader,
owns the run: a reader that goes away cancels it, and the run still records "cancelled".

**End.** Every path ends in one final state, recorded once (`Execution.close`): succeeded,
failed or cancelled; a cancel that got there first wins. The last event is always `done`.

**Cancel.** `cancel()` stops a run wherever it executes: here directly, in another process
through a flag in Redis that its watcher polls; a run still queued is closed at once.

**Follow.** `follow()` replays the run's log from the start or after `Last-Event-ID`, then
follows it live, from any process: how a client picks a stream back up after a dropped
connection (the log outlives the run by `RUN_STREAM_TTL_S`, then it is 410 Gone).

Over 400 lines on purpose: a run's whole life in one module is what this module is for
(the model/tool loop itself is `execution.py`, the queries `repository.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from prometheus_client import Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant import prompts, repository, service
from steward.assistant.execution import Execution
from steward.assistant.models import RunStatus
from steward.assistant.plan import (
    Plan,
    Preloaded,
    Sender,
    check_extra_body,
    check_fits,
    checked_response_format,
    choose_provider,
)
from steward.assistant.providers import Usage
from steward.assistant.resilience import Providers
from steward.assistant.schemas import MessageCreate, MessageRead, Reply, RunRead
from steward.assistant.streams import EntryIds, RunEvent, RunFollowers, RunLog, is_after
from steward.jobs import service as jobs
from steward.platform.api import API_V1
from steward.platform.errors import Conflict, Gone
from steward.platform.resources import Resources
from steward.platform.transactions import after_commit

log = structlog.get_logger(__name__)

ACTIVE = Gauge("steward_assistant_runs_active", "Runs executing now (summed over processes).",
               multiprocess_mode="livesum")  # fmt: skip
RUN_SECONDS = Histogram(
    "steward_assistant_run_seconds", "Run duration by provider.", ["provider"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)  # fmt: skip
CANCEL_POLL_S = 0.5
RUN_TASK = "steward.assistant.run"

Entry = tuple[str | None, RunEvent]  # (the event's id in the run's log, the event)


# --- start ---------------------------------------------------------------------------------


async def start(
    resources: Resources,
    active: ActiveRuns,
    *,
    sender: Sender,
    conversation_id: uuid.UUID,
    message: MessageCreate,
) -> LiveRun:
    """Plan, store and start an interactive run; read its events from the LiveRun."""
    committed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    try:
        async with resources.transaction() as session:
            found, recent = await repository.conversation_with_history(
                session, owner_id=sender.user_id, conversation_id=conversation_id
            )
            plan, prompt = await _plan(resources, session, sender, found, message)
            preloaded = Preloaded(prompt, [*recent, {"role": "user", "content": message.content}])
            live = active.start(resources, plan, preloaded, committed)
            # Let the run's task get its provider request going before the rows' write and
            # the commit take the loop (the task runs until it first waits).
            await asyncio.sleep(0)
            await repository.store_run(session, plan=plan, prompt=prompt,
                                       content=message.content, background=False)  # fmt: skip
    except BaseException:
        if not committed.done():
            committed.set_result(False)
        raise
    committed.set_result(True)
    return live


async def queue(
    resources: Resources,
    *,
    sender: Sender,
    conversation_id: uuid.UUID,
    message: MessageCreate,
) -> RunRead:
    """Plan and store a background run, "queued", and enqueue its job in the same transaction."""
    async with resources.transaction() as session:
        conversation = await service.get_conversation(
            session, owner_id=sender.user_id, conversation_id=conversation_id
        )
        plan, prompt = await _plan(resources, session, sender, conversation.id, message)
        await repository.store_run(session, plan=plan, prompt=prompt, content=message.content,
                                   background=True)  # fmt: skip
        job_id = await jobs.enqueue(session, owner_id=plan.user_id, task=RUN_TASK,
                                    kwargs={"plan": plan.to_json()})  # fmt: skip
        run = await service.read_run(session, owner_id=plan.user_id, run_id=plan.run_id)
        run.job_id = job_id
        return run


async def _plan(
    resources: Resources,
    session: AsyncSession,
    sender: Sender,
    conversation_id: uuid.UUID,
    message: MessageCreate,
) -> tuple[Plan, prompts.ActivePrompt]:
    settings = resources.settings
    provider, model = choose_provider(
        resources.get(Providers), name=message.provider, model=message.model
    )
    response_format = checked_response_format(provider, model, message.response_format)
    check_extra_body(provider, message.extra_body or {})
    await service.check_quota(
        session, settings, user_id=sender.user_id, api_key_id=sender.api_key_id
    )  # fmt: skip
    prompt = await prompts.active(
        session, name=settings.assistant_prompt_name, cache=resources.cache
    )
    check_fits(
        message.content, prompt=prompt, user_name=sender.name, scopes=sender.scopes,
        provider=provider, model=model, max_input_tokens=settings.assistant_max_input_tokens,
    )  # fmt: skip
    plan = Plan(
        run_id=uuid.uuid4(),
        conversation_id=conversation_id,
        user_id=sender.user_id,
        api_key_id=sender.api_key_id,
        scopes=sender.scopes,
        user_name=sender.name,
        provider=provider.name,
        model=model,
        prompt_name=settings.assistant_prompt_name,
        response_format=response_format,
        extra_body=message.extra_body or None,
    )
    return plan, prompt


async def execute_queued(resources: Resources, plan: Plan) -> RunStatus | None:
    """Execute a background run to its end (in a worker); its events go to its log."""
    return await _drive(resources, plan)


async def reply(resources: Resources, live: LiveRun, *, owner_id: uuid.UUID) -> Reply:
    """Wait for a live run to end, and answer with it and the messages it added."""
    async for _ in live.events():
        pass
    async with resources.transaction() as session:
        run = await repository.get_run(session, owner_id=owner_id, run_id=live.run_id)
        messages = await repository.run_messages(session, run=run)
    return Reply(run=service.run_read(run, messages),
                 messages=[MessageRead.model_validate(m) for m in messages])  # fmt: skip


# --- executing -----------------------------------------------------------------------------


class ActiveRuns:
    """The runs executing in this process, so they can be cancelled and drained."""

    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, asyncio.Task[RunStatus | None]] = {}

    def start(
        self,
        resources: Resources,
        plan: Plan,
        preloaded: Preloaded,
        committed: asyncio.Future[bool] | None = None,
    ) -> LiveRun:
        """Execute a fresh run in its own task; its events go to the LiveRun and the log.
        With `committed`, the run may start before its rows are committed (see `start`)."""
        deliver: asyncio.Queue[Entry | None] = asyncio.Queue()
        task = asyncio.create_task(
            _drive(resources, plan, deliver, preloaded=preloaded, committed=committed),
            name=f"run-{plan.run_id}",
        )
        self._tasks[plan.run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(plan.run_id, None))
        return LiveRun(run_id=plan.run_id, task=task, queue=deliver)

    def cancel(self, run_id: uuid.UUID) -> bool:
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def cancel_all(self, timeout_s: float = 5.0) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)


@dataclass(slots=True)
class LiveRun:
    """A started run: read its events with `events()` or `batches()`, stop it with `cancel()`."""

    run_id: uuid.UUID
    task: asyncio.Task[RunStatus | None]
    queue: asyncio.Queue[Entry | None]

    async def events(self) -> AsyncIterator[Entry]:
        """(log entry id, event) until the run ends. Leaving early cancels the run."""
        async for batch in self.batches(1):
            for item in batch:
                yield item

    async def batches(self, size: int) -> AsyncIterator[list[Entry]]:
        """The same, in lists of what is already waiting (at most `size`)."""
        try:
            while (item := await self.queue.get()) is not None:
                batch = [item]
                while len(batch) < size and not self.queue.empty():
                    following = self.queue.get_nowait()
                    if following is None:
                        yield batch
                        return
                    batch.append(following)
                yield batch
        finally:
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self.task)

    def cancel(self) -> None:
        self.task.cancel()


async def _drive(
    resources: Resources,
    plan: Plan,
    deliver: asyncio.Queue[Entry | None] | None = None,
    *,
    preloaded: Preloaded | None = None,
    committed: asyncio.Future[bool] | None = None,
) -> RunStatus | None:
    """Execute `plan` to the end: every event to the run's log (and to `deliver`), while
    watching for a cancel asked from anywhere and for a stalled reply. Returns the final
    status. With `committed`, see `start`."""
    stream = resources.get(RunLog)
    execution = Execution(resources, plan, preloaded, committed)
    current = asyncio.current_task()
    ACTIVE.inc()
    started = time.perf_counter()

    async def watch() -> None:
        if not await execution.stored() and current is not None:
            current.cancel()
            return
        assert current is not None
        asked = asyncio.ensure_future(stream.cancel_asked(plan.run_id))
        asked.add_done_callback(lambda done: None if done.cancelled() else current.cancel())
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(CANCEL_POLL_S)
                # A stalled reply: a timer per streamed chunk (asyncio.timeout) cost more
                # than this check; the stall is noticed up to CANCEL_POLL_S late.
                deadline = execution.idle_deadline
                if deadline is not None and loop.time() > deadline:
                    execution.stalled = True
                    current.cancel()
                    return
        finally:
            asked.cancel()

    # A run started here for a live reader is fresh, and nothing else appends to its log
    # while it lasts (cancels of queued runs and retries concern background runs): its ids
    # are assigned here, and each event reaches the reader at once, its XADD off that path
    # (the process's writer sends every run's pending events in one round trip).
    ids = EntryIds() if deliver is not None else None

    def emit(event: RunEvent) -> None:
        if ids is None:
            stream.enqueue(plan.run_id, event)
            return
        entry_id = ids.next()
        assert deliver is not None
        deliver.put_nowait((entry_id, event))
        stream.enqueue(plan.run_id, event, entry_id)

    watcher = asyncio.create_task(watch())
    ended = False
    try:
        async for event in execution.events():
            emit(event)
        ended = True
        await stream.flush()
    except asyncio.CancelledError:
        if not ended:
            # Cancelled at any point (even before it started): recorded, every reader told.
            await asyncio.shield(execution.close(RunStatus.CANCELLED, None))
            emit(RunEvent("done", {"run_id": str(plan.run_id), "status": "cancelled"}))
        with contextlib.suppress(Exception):
            await asyncio.shield(stream.flush())
        raise
    finally:
        watcher.cancel()
        ACTIVE.dec()
        RUN_SECONDS.labels(plan.provider).observe(time.perf_counter() - started)
        if deliver is not None:
            # Unbounded: a run's events are bounded by its token budget, and a slow reader
            # must not stall the provider call (which has its own idle timeout).
            deliver.put_nowait(None)
    return execution.status


# --- cancel --------------------------------------------------------------------------------


async def cancel(
    resources: Resources, active: ActiveRuns, *, owner_id: uuid.UUID, run_id: uuid.UUID
) -> RunRead:
    """Stop the owner's run wherever it executes: here directly, elsewhere through the Redis
    flag its process polls. A run still queued for a worker is closed here (the worker then
    finds it ended)."""
    async with resources.transaction() as session:
        run = await repository.get_run(session, owner_id=owner_id, run_id=run_id)
        if RunStatus(run.status).finished:
            raise Conflict(f"the run has already ended ({run.status})")
        log.info("assistant.run_cancel_requested", run_id=str(run.id))
        if not active.cancel(run.id):
            stream = resources.get(RunLog)
            await stream.request_cancel(run.id)
            if run.status == RunStatus.QUEUED.value:
                await repository.finish_run(session, run_id=run.id, status=RunStatus.CANCELLED,
                                            usage=Usage(0, 0, 0))  # fmt: skip
                done = RunEvent("done", {"run_id": str(run.id), "status": "cancelled"})

                async def announce() -> None:
                    await stream.append(run_id, done)

                after_commit(session).call(announce)
        await session.refresh(run)  # the UPDATE above bypassed the loaded object
        return service.run_read(run, [])


# --- follow --------------------------------------------------------------------------------


async def follow(
    resources: Resources,
    followers: RunFollowers,
    *,
    owner_id: uuid.UUID,
    run_id: uuid.UUID,
    after: str,
    batch: int,
) -> AsyncIterator[list[Entry]]:
    """The owner's run's events after entry `after` ("0": all), in lists of what is waiting
    (at most `batch`), until `done` or the stream lifetime. Checked before the first event:
    404 for anyone else's run, 410 when a finished run's log has expired."""
    stream = resources.get(RunLog)
    async with resources.transaction() as session:
        run = await repository.get_run(session, owner_id=owner_id, run_id=run_id)
    if RunStatus(run.status).finished and not await stream.exists(run_id):
        raise Gone(
            f"this run's events have expired; GET {API_V1}/assistant/runs/{run_id} "
            "for its final message",
            extra={"run": f"{API_V1}/assistant/runs/{run_id}"},
        )
    return _replay(resources, followers, run_id, after, batch)


async def _replay(
    resources: Resources, followers: RunFollowers, run_id: uuid.UUID, after: str, size: int
) -> AsyncIterator[list[Entry]]:
    stream = resources.get(RunLog)
    deadline = time.monotonic() + resources.settings.realtime_max_lifetime_s
    heartbeat = resources.settings.realtime_heartbeat_s
    follower, catch_up = await followers.follow(run_id, after)
    try:
        for entry_id, event in catch_up:
            yield [(entry_id, event)]
            after = entry_id
            if event.event == "done":
                return
        if not catch_up and await stream.ended_by(run_id, after):
            return  # the reader has seen the run's last event already
        while (remaining := deadline - time.monotonic()) > 0:
            try:  # not wait_for: see notifications/hub.py Subscription.next
                async with asyncio.timeout(min(heartbeat, remaining)):
                    waiting = await follower.queue.get()
            except TimeoutError:
                if not await stream.exists(run_id):
                    return  # expired (or was never written) while we waited
                continue
            if not follower.queue.empty():
                waiting = list(waiting)  # the lists are shared by every reader: never extended
                while len(waiting) < size and not follower.queue.empty():
                    waiting.extend(follower.queue.get_nowait())
            fresh: list[Entry] = []
            for entry_id, event in waiting:
                if not is_after(entry_id, after):
                    continue  # this reader had it already
                fresh.append((entry_id, event))
                after = entry_id
                if event.event == "done":
                    break
            for start in range(0, len(fresh), size):
                yield fresh[start : start + size]
            if fresh and fresh[-1][1].event == "done":
                return
    finally:
        followers.leave(follower)
