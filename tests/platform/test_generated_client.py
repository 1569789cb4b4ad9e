"""A Python client generated from `/openapi.json` by openapi-python-client works: a todo
flow, and errors that arrive as the document's Problem model."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from steward.settings import Settings
from tests.live import live_server

pytestmark = pytest.mark.slow
PACKAGE = "steward_generated_client"


def _generate(spec: Path, folder: Path) -> None:
    tool = Path(sys.executable).parent / "openapi-python-client"
    env = {**os.environ, "PATH": f"{tool.parent}:{os.environ.get('PATH', '')}"}  # its ruff
    result = subprocess.run(
        [str(tool), "generate", "--path", str(spec), "--output-path", str(folder / PACKAGE),
         "--meta", "none"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # every schema understood


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_runs_a_todo_flow_and_reads_problems(
    settings: Settings, clean_state: None, tmp_path: Path
) -> None:
    async with live_server(settings) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            spec = tmp_path / "openapi.json"
            spec.write_bytes((await http.get("/openapi.json")).content)
        _generate(spec, tmp_path)
        sys.path.insert(0, str(tmp_path))
        try:
            client = _module("client")
            models = _module("models")
            register = _module("api.auth.register_api_v1_auth_register_post")
            token = _module("api.auth.token_api_v1_auth_token_post")
            create = _module("api.todos.create_todo_api_v1_todos_post")
            listing = _module("api.todos.list_todos_api_v1_todos_get")
            read = _module("api.todos.read_todo_api_v1_todos_todo_id_get")
            complete = _module("api.todos.complete_todo_api_v1_todos_todo_id_complete_post")

            anonymous = client.Client(base_url=base)
            email, password = f"gen-{uuid.uuid4().hex[:8]}@example.com", "correct-horse-42"
            made = await register.asyncio_detailed(
                client=anonymous, body=models.UserCreate(email=email, password=password)
            )
            assert made.status_code == 201, made.content
            pair = await token.asyncio(client=anonymous, body=models.BodyTokenApiV1AuthTokenPost(
                username=email, password=password))  # fmt: skip
            assert isinstance(pair, models.TokenPair)
            signed_in = client.AuthenticatedClient(base_url=base, token=pair.access_token)

            todo = await create.asyncio(client=signed_in, body=models.TodoCreate(title="generated"))
            assert isinstance(todo, models.TodoRead) and todo.title == "generated"
            done = await complete.asyncio(client=signed_in, todo_id=todo.id)
            assert isinstance(done, models.TodoRead) and done.done is True
            page = await listing.asyncio(client=signed_in)
            assert [item.id for item in page.items] == [todo.id]

            # Errors are the document's Problem: a missing todo, then an invalid body.
            missing = await read.asyncio(client=signed_in, todo_id=uuid.uuid4())
            assert isinstance(missing, models.Problem), missing
            assert missing.status == 404 and missing.type_.endswith("/not-found")
            invalid = await create.asyncio(client=signed_in, body=models.TodoCreate(title=""))
            assert isinstance(invalid, models.Problem) and invalid.status == 422
            assert [list(error.loc) for error in invalid.errors] == [["body", "title"]]
            refused = await listing.asyncio_detailed(client=anonymous)
            assert refused.status_code == 401 and isinstance(refused.parsed, models.Problem)
        finally:
            sys.path.remove(str(tmp_path))
            for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
                del sys.modules[name]
