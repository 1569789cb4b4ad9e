"""Email: the messages Steward sends (plain text and HTML from one template each) and their
delivery over SMTP (`SMTP_HOST`, `SMTP_PORT`, `SMTP_USERNAME`, `SMTP_PASSWORD`, `SMTP_TLS`
none|starttls|tls, `MAIL_FROM`). Without `SMTP_HOST`, a message is logged as one line instead;
its link (which carries a token) is in that line only outside production.

Messages are sent by Celery tasks (notifications/tasks.py) from jobs recorded in the same
transaction as the change that causes them (the job outbox), so a rolled-back sign-up sends
nothing and a committed one is sent even if the broker was down at the time."""

from __future__ import annotations

import html
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from string import Template

import structlog

from steward.jobs.base import TransientError
from steward.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str
    link: str | None = None  # the action link, carrying a token: never logged in production


_TEMPLATES = {
    "verify_email": (
        "Confirm your email address",
        "Hello,\n\nconfirm that $email is your address by opening this link:\n\n$link\n\n"
        "It works once and expires in $hours hours. If you did not sign up, ignore this email.",
    ),
    "password_reset": (
        "Reset your password",
        "Hello,\n\nsomeone (we hope you) asked to reset the password of $email. Choose a new "
        "one here:\n\n$link\n\nThe link works once and expires in $hours hours. Every device "
        "signed in to the account will be signed out. If you did not ask, ignore this email; "
        "your password stays as it is.",
    ),
}


def compose(kind: str, *, to: str, link: str, ttl_s: int) -> Mail:
    """The message of `kind`, with its link: the same words as text and as HTML."""
    subject, body = _TEMPLATES[kind]
    values = {"email": to, "link": link, "hours": f"{ttl_s / 3600:g}"}
    text = Template(body).substitute(values)
    escaped = {key: html.escape(value) for key, value in values.items()}
    paragraphs = (
        Template(body)
        .substitute({**escaped, "link": f'<a href="{escaped["link"]}">{escaped["link"]}</a>'})
        .split("\n\n")
    )
    page = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in paragraphs)
    return Mail(to=to, subject=subject, text=text,
                html=f"<!doctype html><html><body>{page}</body></html>", link=link)  # fmt: skip


def action_link(settings: Settings, path: str, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}{path}?token={token}"


def _message(settings: Settings, mail: Mail) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = formataddr(("", mail.to))
    message["Subject"] = mail.subject
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message


def deliver(settings: Settings, mail: Mail) -> None:
    """Send `mail` now (or log it without SMTP). A failure worth retrying (the server away,
    a 4xx answer) raises TransientError; a refusal (5xx) raises SMTPException."""
    if not settings.smtp_host:
        link = mail.link if not settings.is_prod else "(hidden in production)"
        log.info("mail.logged", to=mail.to, subject=mail.subject, link=link)
        return
    message = _message(settings, mail)
    try:
        with _connect(settings) as smtp:
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise TransientError(f"SMTP {exc.smtp_code}") from exc
        raise
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
        raise TransientError(f"SMTP unreachable: {type(exc).__name__}") from exc
    log.info("mail.sent", to=mail.to, subject=mail.subject)


def _connect(settings: Settings) -> smtplib.SMTP:
    assert settings.smtp_host is not None
    timeout = settings.smtp_timeout_s
    smtp: smtplib.SMTP
    if settings.smtp_tls == "tls":
        smtp = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout,
                                context=ssl.create_default_context())  # fmt: skip
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
        if settings.smtp_tls == "starttls":
            smtp.starttls(context=ssl.create_default_context())
    if settings.smtp_username and settings.smtp_password:
        smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
    return smtp
