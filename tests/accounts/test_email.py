"""Email verification and password reset, end to end: the API records the job, a real worker
sends the email to a real SMTP server (aiosmtpd, started here), and the link in it works once.
Reset requests answer alike for any address; a reset signs every device out."""

from __future__ import annotations

import asyncio
import email
import re
import time
import uuid
from collections.abc import Iterator
from email.message import Message
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from celery import Celery
from fastapi import FastAPI
from sqlalchemy import select
from structlog.testing import capture_logs

from steward.accounts import email_tokens
from steward.accounts.models import AccountToken
from steward.notifications import mail
from steward.settings import Settings
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import PASSWORD, login, make_account
from tests.live import free_port
from tests.workers import running_worker

PUBLIC_URL = "https://app.example.com"


class Inbox:
    """What the SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def wait_for(self, to: str, count: int = 1, within_s: float = 20) -> list[Message]:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            mine = [m for m in self.messages if m["To"] == to]
            if len(mine) >= count:
                return mine
            time.sleep(0.05)
        raise AssertionError(f"{count} email(s) to {to} did not arrive within {within_s} s")


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture(scope="module")
def mailer(engines: EngineSet, smtp: tuple[Inbox, int]) -> Iterator[Celery]:
    """A worker that sends through the test's SMTP server."""
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp[1]), "SMTP_TLS": "none",
           "MAIL_FROM": "Steward <no-reply@example.com>", "PUBLIC_URL": PUBLIC_URL}  # fmt: skip
    with running_worker(engines, env) as (client, _):
        yield client


def _parts(message: Message) -> tuple[str, str]:
    text = html = ""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            text = part.get_payload(decode=True).decode()  # type: ignore[union-attr]
        elif part.get_content_type() == "text/html":
            html = part.get_payload(decode=True).decode()  # type: ignore[union-attr]
    return text, html


def _token(message: Message, path: str) -> str:
    text, html = _parts(message)
    link = re.search(rf"{re.escape(PUBLIC_URL + path)}\?token=(\S+)", text)
    assert link, text
    assert f'href="{PUBLIC_URL}{path}?token={link.group(1)}"' in html
    return link.group(1)


@pytest.mark.slow
async def test_sign_up_emails_a_link_that_verifies_the_address_once(
    mailer: Celery, smtp: tuple[Inbox, int], client: httpx.AsyncClient
) -> None:
    assert mailer
    inbox, _ = smtp
    alice = await make_account(client)
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).json()[
        "email_verified"] is False  # fmt: skip
    [message] = await asyncio.to_thread(inbox.wait_for, alice.email)
    assert message["Subject"] == "Confirm your email address"
    assert message["From"] == "Steward <no-reply@example.com>"
    token = _token(message, "/verify-email")

    tampered = await client.post("/api/v1/auth/verify-email", json={"token": token[:-2] + "AA"})
    assert tampered.status_code == 422
    assert tampered.headers["content-type"] == "application/problem+json"
    verified = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 200 and verified.json()["email_verified"] is True
    me = await client.get("/api/v1/users/me", headers=alice.headers)
    assert me.json()["email_verified"] is True
    again = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert again.status_code == 422  # single use
    resend = await client.post("/api/v1/auth/verify-email/resend", headers=alice.headers)
    assert resend.status_code == 409  # nothing left to verify


@pytest.mark.slow
async def test_a_password_reset_sets_the_password_and_signs_every_device_out(
    mailer: Celery, smtp: tuple[Inbox, int], client: httpx.AsyncClient
) -> None:
    assert mailer
    inbox, _ = smtp
    alice = await make_account(client)
    phone = await login(client, alice.email)  # a second device
    stranger = f"nobody-{uuid.uuid4().hex[:8]}@example.com"

    unknown = await client.post("/api/v1/auth/password-reset", json={"email": stranger})
    known = await client.post("/api/v1/auth/password-reset", json={"email": alice.email.upper()})
    assert (unknown.status_code, unknown.content) == (known.status_code, known.content)
    assert (known.status_code, known.json()) == (202, {"status": "queued"})
    messages = await asyncio.to_thread(inbox.wait_for, alice.email, 2)  # verification + reset
    reset = next(m for m in messages if m["Subject"] == "Reset your password")
    token = _token(reset, "/reset-password")

    weak = await client.post("/api/v1/auth/password-reset/confirm",
                             json={"token": token, "new_password": "short"})  # fmt: skip
    assert weak.status_code == 422
    new_password = "a-brand-new-passphrase-42"
    done = await client.post("/api/v1/auth/password-reset/confirm",
                             json={"token": token, "new_password": new_password})  # fmt: skip
    assert done.status_code == 204
    # Every device is signed out: refresh tokens and access tokens alike.
    for refresh in (alice.refresh_token, phone["refresh_token"]):
        refused = await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
        assert refused.status_code == 401
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 401
    old = await client.post("/api/v1/auth/token",
                            data={"username": alice.email, "password": PASSWORD})  # fmt: skip
    assert old.status_code == 401
    fresh = await login(client, alice.email, new_password)
    me = await client.get("/api/v1/users/me",
                          headers={"Authorization": f"Bearer {fresh['access_token']}"})  # fmt: skip
    assert me.json()["email_verified"] is True  # the link reached the address
    again = {"token": token, "new_password": "another-passphrase-43"}
    reused = await client.post("/api/v1/auth/password-reset/confirm", json=again)
    assert reused.status_code == 422
    await asyncio.sleep(1)  # the unknown address's task has run by now: it sent nothing
    assert not [m for m in inbox.messages if m["To"] == stranger]


async def _token_for(app: FastAPI, user_id: str, purpose: email_tokens.Purpose) -> str:
    """The token a sent email would carry (no worker in these tests)."""
    resources = app.state.resources
    async with resources.transaction() as session:
        row = (await session.execute(
            select(AccountToken).where(AccountToken.user_id == uuid.UUID(user_id),
                                       AccountToken.purpose == purpose)
        )).scalars().one()  # fmt: skip
    return email_tokens.encode(row.id, purpose, resources.settings.secret_key.get_secret_value())


@pytest.mark.usefixtures("clean_state")
async def test_sign_in_can_require_a_verified_address(engines: EngineSet) -> None:
    from steward.app import create_app

    app = create_app(make_settings(engines, require_email_verification=True))
    async with app_client(app) as client:
        credentials = {"email": "v@example.com", "password": PASSWORD}
        created = await client.post("/api/v1/auth/register", json=credentials)
        form = {"username": "v@example.com", "password": PASSWORD}
        refused = await client.post("/api/v1/auth/token", data=form)
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("/email-not-verified")
        token = await _token_for(app, created.json()["id"], "verify_email")
        assert (await client.post("/api/v1/auth/verify-email", json={"token": token})).is_success
        assert (await login(client, "v@example.com"))["access_token"]


@pytest.mark.usefixtures("clean_state")
async def test_emails_for_one_account_are_rate_limited(engines: EngineSet) -> None:
    from steward.app import create_app

    app = create_app(make_settings(engines, rate_limit_email="2/hour"))
    async with app_client(app) as client:
        alice = await make_account(client)
        codes = [(await client.post("/api/v1/auth/verify-email/resend", headers=alice.headers))
                 .status_code for _ in range(3)]  # fmt: skip
        assert codes == [202, 202, 429]
        address = {"email": f"x-{uuid.uuid4().hex[:8]}@example.com"}
        resets = [(await client.post("/api/v1/auth/password-reset", json=address)).status_code
                  for _ in range(3)]  # fmt: skip
        assert resets == [202, 202, 429]
        assert (await client.post("/api/v1/auth/verify-email/resend")).status_code == 401


def test_without_smtp_an_email_is_one_log_line_and_its_token_stays_out_of_production_logs(
) -> None:  # fmt: skip
    link = f"{PUBLIC_URL}/reset-password?token=SECRET-TOKEN"
    message = mail.compose("password_reset", to="a@example.com", link=link, ttl_s=3600)
    for environment, shown in (("dev", True), ("prod", False)):
        settings = Settings(environment=environment, secret_key="k" * 40)
        with capture_logs() as logs:
            mail.deliver(settings, message)
        assert [entry["event"] for entry in logs] == ["mail.logged"]
        assert ("SECRET-TOKEN" in str(logs)) is shown


async def test_smtp_answers_decide_retry_or_give_up(smtp: tuple[Inbox, int]) -> None:
    """A 4xx answer or no server is worth a retry; a 5xx is final."""
    from aiosmtpd.controller import Controller as SmtpController

    from steward.jobs.base import TransientError

    class Answer:
        def __init__(self, code: str) -> None:
            self.code = code

        async def handle_DATA(self, *_: Any) -> str:  # noqa: N802
            return self.code

    message = mail.compose("verify_email", to="a@example.com", link="https://x/y?token=t",
                           ttl_s=3600)  # fmt: skip
    for code, expected in (("451 try later", TransientError), ("554 refused", Exception)):
        port = free_port()
        server = SmtpController(Answer(code), hostname="127.0.0.1", port=port)
        server.start()
        try:
            settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none")
            with pytest.raises(expected) as raised:
                await asyncio.to_thread(mail.deliver, settings, message)
            assert (raised.type is TransientError) == (expected is TransientError)
        finally:
            server.stop()
    away = Settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_tls="none")
    with pytest.raises(TransientError):
        await asyncio.to_thread(mail.deliver, away, message)
