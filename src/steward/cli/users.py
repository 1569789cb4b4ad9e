"""`steward user create|list|disable|enable|set-role`: accounts from an operator's shell.

Each command works in every mode: configured URLs, the engines of a running `steward run`,
or the embedded engines started for the command (`engines_for`). Changes go through the same
service functions as the admin API (a disabled user's sessions are revoked, caches dropped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from steward.accounts.scopes import Role
from steward.cli.common import cli, console, engines_for, out, settings_or_exit

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from steward.accounts.models import User
    from steward.platform.resources import Resources
    from steward.settings import Settings

T = TypeVar("T")

user_cli = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
cli.add_typer(user_cli, name="user")

Email = Annotated[str, typer.Argument(help="the account's email")]


def _run(work: Callable[[Resources], Awaitable[T]]) -> T:
    """Open the app's resources on the engines for this mode, run `work`, close them."""
    from steward.platform.resources import Resources

    async def main(settings: Settings) -> T:
        resources = Resources.open(settings)
        try:
            return await work(resources)
        finally:
            await resources.close()

    with engines_for(settings_or_exit()) as settings:
        return asyncio.run(main(settings))


async def _find(session: AsyncSession, email: str) -> User:
    from steward.accounts import service

    user = await service.get_by_email(session, email.strip().lower())
    if user is None:
        console.print(f"[red]no user has the email {email}[/red]")
        raise typer.Exit(1)
    return user


@user_cli.command("create")
def create_user(
    email: Annotated[str, typer.Option(help="the account's email")],
    admin: Annotated[bool, typer.Option("--admin", help="give the account the admin role")] = False,
    display_name: Annotated[str | None, typer.Option()] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="STEWARD_PASSWORD", help="prompted for when not given"),
    ] = None,
) -> None:
    """Create a user (use --admin for the first administrator)."""
    from pydantic import ValidationError

    from steward.accounts import service
    from steward.accounts.schemas import UserCreate
    from steward.platform.errors import Conflict
    from steward.platform.security import Passwords

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        user_in = UserCreate(email=email, password=password, display_name=display_name)
    except ValidationError as exc:
        console.print(f"[red]{exc.errors()[0]['msg']}[/red]")
        raise typer.Exit(2) from None

    async def create(resources: Resources) -> str:
        async with resources.transaction() as session:
            user = await service.create(
                session, user_in=user_in, passwords=resources.get(Passwords),
                role=Role.ADMIN if admin else Role.USER,
            )  # fmt: skip
            return str(user.id)

    try:
        user_id = _run(create)
    except Conflict as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from None
    console.print(f"created {'admin' if admin else 'user'} {user_in.email} ({user_id})")


@user_cli.command("list")
def list_users(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest first")] = 50,
    email: Annotated[str | None, typer.Option(help="only emails containing this")] = None,
) -> None:
    """List accounts, newest first: email, role, active, verified, created."""
    from sqlalchemy import select

    from steward.accounts.models import User

    async def rows(resources: Resources) -> list[User]:
        query = select(User).order_by(User.created_at.desc(), User.id.desc()).limit(limit)
        if email:
            query = query.where(User.email.contains(email.strip().lower(), autoescape=True))
        async with resources.transaction() as session:
            return list((await session.execute(query)).scalars())

    found = _run(rows)
    table = Table("email", "role", "active", "verified", "created", "id")
    for user in found:
        table.add_row(user.email, user.role, "yes" if user.is_active else "[red]no[/red]",
                      "yes" if user.email_verified else "no",
                      f"{user.created_at:%Y-%m-%d %H:%M}", str(user.id))  # fmt: skip
    out.print(table)
    console.print(f"{len(found)} user(s)")


def _change(email: str, *, role: Role | None = None, is_active: bool | None = None) -> User:
    from steward.accounts import service
    from steward.accounts.schemas import AdminUserUpdate

    async def change(resources: Resources) -> User:
        async with resources.transaction() as session:
            user = await _find(session, email)
            update = AdminUserUpdate(role=role, is_active=is_active)
            return await service.admin_update(session, user=user, change=update, admin_id=None)

    return _run(change)


@user_cli.command("disable")
def disable(email: Email) -> None:
    """Disable an account: it cannot sign in, and its sessions are signed out."""
    user = _change(email, is_active=False)
    console.print(f"disabled {user.email}; its sessions are revoked")


@user_cli.command("enable")
def enable(email: Email) -> None:
    """Enable a disabled account again."""
    user = _change(email, is_active=True)
    console.print(f"enabled {user.email}")


@user_cli.command("set-role")
def set_role(email: Email, role: Annotated[Role, typer.Argument(help="user or admin")]) -> None:
    """Give an account the `user` or the `admin` role."""
    user = _change(email, role=role)
    console.print(f"{user.email} is now {user.role}")
