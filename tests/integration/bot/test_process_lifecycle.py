"""`python -m bot` as a process: bad flags stop it at start, SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

if TYPE_CHECKING:  # fixtures, handed in by pytest; the import is for the type checker only
    from tests.integration.bot.conftest import RecordingApi, StartBot


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--rate", "-1"], {}, "--rate"),
        (["--concurrency", "0"], {}, "--concurrency"),
        ([], {"BOT_REQS_PER_MIN": "lots"}, "BOT_REQS_PER_MIN"),
    ],
)
def test_invalid_flag_exits_2_naming_it(args: list[str], env: dict[str, str], named: str) -> None:
    """A bad value ends the process at once with exit code 2 and a message naming it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert named in done.stderr
    assert "error" in done.stderr


async def test_sigterm_stops_cleanly(api: RecordingApi, start_bot: StartBot) -> None:
    """SIGTERM while posting: exit 0 within seconds, a final stats line, no more requests."""
    bot = await start_bot("--api-url", api.url, "--rate", "20")
    await api.wait_for(5, within=10)
    assert await bot.stop(within=5) == 0
    stopped = [line for line in bot.logs() if line["msg"] == "bot stopped"]
    assert len(stopped) == 1
    assert stopped[0]["accepted"] == stopped[0]["sent"] == len(api.arrivals)


async def test_sigterm_ends_a_long_retry_after_wait(api: RecordingApi, start_bot: StartBot) -> None:
    """A bot told to wait 60 s still stops at once on SIGTERM."""
    api.plan[0] = (429, "60")
    bot = await start_bot("--api-url", api.url, "--rate", "5")
    await bot.wait_for_log("api asked to wait")
    start = anyio.current_time()
    assert await bot.stop(within=5) == 0
    assert anyio.current_time() - start < 2
    assert len(api.arrivals) == 1


async def test_unreachable_api_backs_off_and_keeps_running(start_bot: StartBot) -> None:
    """With nothing listening the bot retries with growing pauses and never exits by itself."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = await start_bot("--api-url", f"http://127.0.0.1:{port}", "--rate", "100")
    await bot.wait_for_log("api unreachable")
    await anyio.sleep(2)  # time for several backoff steps; the bot must still be running
    assert bot.process.returncode is None
    assert await bot.stop() == 0
    (stopped,) = [line for line in bot.logs() if line["msg"] == "bot stopped"]
    # 100/s would be ~200 attempts; backoff from 0.1 s doubling allows a handful.
    assert 2 <= stopped["errors"] <= 10
    assert stopped["accepted"] == 0


async def test_count_and_duration_end_the_run(api: RecordingApi, start_bot: StartBot) -> None:
    """`--count 10` posts ten messages and exits 0; `--duration 1` exits 0 after a second."""
    counted = await start_bot("--api-url", api.url, "--rate", "50", "--count", "10")
    with anyio.fail_after(10):
        assert await counted.process.wait() == 0
    assert len(api.arrivals) == 10
    timed = await start_bot("--api-url", api.url, "--rate", "5", "--duration", "1")
    started = await timed.wait_for_log("bot starting")
    with anyio.fail_after(10):
        assert await timed.process.wait() == 0
    assert 5 <= len(api.arrivals) - 10 <= 7
    assert started["duration"] == 1


async def test_delay_holds_the_first_post(api: RecordingApi, start_bot: StartBot) -> None:
    """With `--delay 1.5` nothing is posted until the delay has passed."""
    bot = await start_bot("--api-url", api.url, "--rate", "5", "--delay", "1.5")
    await bot.control_url()  # the bot is up from here on
    up_at = anyio.current_time()
    (first,) = await api.wait_for(1, within=10)
    assert first.at - up_at >= 1.4
    assert await bot.stop() == 0
