"""README's three curl lines, run as written with the system's curl against the front door."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from devstack import Stack
from devstack.poll import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"
WITHIN_S = 60.0
"""A post reaches the list and the feed in well under a second; the bound allows a loaded
machine and the stand-in's resolved lag."""

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None, reason="needs the system's curl, which this image lacks"
)


def _curl_lines() -> list[str]:
    """The `curl` lines of README's "Post and read" section, in order."""
    section = README.read_text().split("\n## Post and read\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```console\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert block, "no console block under README's Post and read"
    return [line for line in block.group(1).splitlines() if line.startswith("curl ")]


def _run(line: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def test_the_readme_curl_lines_post_list_and_follow(stack: Stack) -> None:
    """The post answers accepted with an id; that id then shows in the list and on the feed."""
    post, listing, follow = _curl_lines()
    env = {**os.environ, "FEED_URL": stack.api_url}
    # The feed first, so the post arrives live (or in its history, if stored before it read).
    with subprocess.Popen(
        ["bash", "-c", f"exec {follow}"], env=env, stdout=subprocess.PIPE, text=True
    ) as feed:
        deadline = threading.Timer(WITHIN_S, feed.kill)
        deadline.start()
        try:
            accepted = json.loads(_run(post, env))
            assert accepted["status"] == "accepted", accepted
            message_id = accepted["id"]
            assert feed.stdout is not None
            events = []
            for line in feed.stdout:
                events.append(line.rstrip("\n"))
                if line.startswith("data: ") and json.loads(line[6:]).get("id") == message_id:
                    break
            else:
                pytest.fail(f"{message_id} not on the feed within {WITHIN_S} s: {events[-10:]}")
        finally:
            deadline.cancel()
            feed.kill()
    wait_until(
        lambda: message_id in {m["id"] for m in json.loads(_run(listing, env))["items"]},
        WITHIN_S,
        f"{message_id} in README's listing",
    )
