"""The README's walkthroughs run as written: every ```bash walkthrough block, in order, in one
bash session against a live Steward with a worker, each `curl` failing on an error status."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from steward.settings import Settings
from tests.engines import EngineSet
from tests.live import live_server
from tests.workers import running_worker

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```bash walkthrough\n(.*?)^```", re.S | re.M)
# Each curl of the walkthrough fails the run on a 4xx/5xx (and never hangs).
PREAMBLE = """set -euo pipefail
curl() { command curl --fail-with-body --max-time 60 "$@"; }
"""


def walkthrough() -> str:
    blocks = BLOCK.findall(README.read_text())
    assert len(blocks) >= 5, "the README lost its walkthrough blocks"
    return "\n".join(blocks)


async def test_the_readme_walkthroughs_run_as_written(
    engines: EngineSet, settings: Settings, clean_state: None, tmp_path: Path
) -> None:
    assert shutil.which("curl"), "curl is needed by the README"
    script = walkthrough()
    with running_worker(engines, {"ASSISTANT_OFFLINE_DELAY_S": "0"}):
        async with live_server(
            settings.model_copy(update={"assistant_offline_delay_s": 0})
        ) as base:
            address = base.removeprefix("http://")
            runnable = re.sub(r"(localhost|127\.0\.0\.1):8000", address, script)
            (tmp_path / "walkthrough.sh").write_text(PREAMBLE + runnable)
            process = await asyncio.create_subprocess_exec(
                "bash", str(tmp_path / "walkthrough.sh"), cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(process.communicate(), 180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    # What each part shows did happen: the todo, the key, the answer, the job, the search.
    assert '"title":"Try Steward"' in text
    assert '"name":"steward.ingest.document","state":' in text  # the job, read by its id
    assert "event: token" in text and "event: done" in text
    assert "[offline]" in text
    assert '"mode":"hybrid"' in text or '"mode":"lexical"' in text
