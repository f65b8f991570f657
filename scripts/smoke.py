"""Smoke test and traffic for a running feedsvc, over HTTP only (standard library, no venv).

    python3 scripts/smoke.py check BASE_URL
        POST one message; see it on /feed and in GET /messages; print `ID=<id>`.
    python3 scripts/smoke.py flow BASE_URL --seconds 60 [--rate 5] [--allow 503]
            [--require 503] [--bound 10] [--feed-bound 60] [--no-reset] [--ids-file FILE]
        POST at a steady rate while a /feed subscriber watches, then check that every
        202-accepted message is stored (GET /messages/{id}) and reached the feed. Any
        answer other than 202 fails the run unless it is `--allow`ed; an allowed one must
        still come within `--bound` seconds, and each `--require`d status must be seen.
        `--feed-bound` fails the run when a message reached the feed more than that many
        seconds after its 202 (the feed stalled); `--no-reset` when the feed sent a
        `reset` (a gap).

The same commands run against the native stack (`scripts/local-stack up` prints the
URL) and, in .github/workflows/docker.yml, against `./run.sh`'s stack during the node
and Kafka drills. Exit status 0 when every check held, 1 otherwise, with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from http.client import HTTPResponse
from typing import Any

FEED_TIMEOUT_S = 90.0


def post(base: str, author: str, text: str, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST /messages with an Idempotency-Key; returns the status and the JSON body."""
    request = urllib.request.Request(
        f"{base}/messages",
        data=json.dumps({"author": author, "text": text}).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return 0, {"error": repr(exc)}


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, None


class FeedWatcher(threading.Thread):
    """Reads /feed in the background, reconnecting with Last-Event-ID; collects message ids."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        # Each message id, with when (time.monotonic()) it first came.
        self.seen: dict[str, float] = {}
        self.events: Counter[str] = Counter()
        self.connected = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        last_id: str | None = None
        while True:
            url = f"{self.base}/feed?limit=1"
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=30) as response:
                    self.connected.set()
                    last_id = self._read(response, last_id)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
                pass
            time.sleep(0.5)  # the server's `retry:` hint is 2 s; reconnect sooner

    def _read(self, response: HTTPResponse, last_id: str | None) -> str | None:
        event, data, eid = "message", "", None
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    with self.lock:
                        self.events[event] += 1
                        if event == "message":
                            self.seen.setdefault(json.loads(data)["id"], time.monotonic())
                    if event == "reset":
                        last_id = None
                    elif eid:
                        last_id = eid
                event, data, eid = "message", "", None
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line.startswith("id:"):
                eid = line[3:].strip()
        return last_id

    def has(self, ids: set[str]) -> set[str]:
        """The ids of `ids` not seen yet."""
        with self.lock:
            return ids - self.seen.keys()

    def arrivals(self) -> dict[str, float]:
        """When each message id first came."""
        with self.lock:
            return dict(self.seen)


def stalled(accepted: dict[str, float], arrived: dict[str, float], bound: float) -> list[str]:
    """Each accepted message that reached the feed more than `bound` seconds after its 202."""
    return [
        f"{mid} reached the feed {arrived[mid] - at:.1f} s after its 202"
        for mid, at in sorted(accepted.items(), key=lambda item: item[1])
        if mid in arrived and arrived[mid] - at > bound
    ]


def wait_for(what: str, missing: Any, timeout: float = FEED_TIMEOUT_S) -> set[str]:
    """Polls `missing()` until it is empty or `timeout` passes; returns what is still missing."""
    deadline = time.monotonic() + timeout
    left: set[str] = missing()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = missing()
    print(f"{what}: {'all there' if not left else f'{len(left)} missing'}", flush=True)
    return left


def stored(base: str, ids: set[str]) -> set[str]:
    """The ids GET /messages/{id} does not find (yet)."""
    return {i for i in ids if get_json(f"{base}/messages/{i}")[0] != 200}


def check(base: str) -> int:
    watcher = FeedWatcher(base)
    watcher.start()
    if not watcher.connected.wait(30):
        print("FAIL: /feed did not answer within 30 s")
        return 1
    text = f"smoke {uuid.uuid4()}"
    status, body = post(base, "smoke_test", text)
    if status != 202:
        print(f"FAIL: POST /messages answered {status}: {body}")
        return 1
    mid = str(body["id"])
    print(f"accepted {mid}", flush=True)
    if wait_for("on /feed", lambda: watcher.has({mid})):
        return 1

    def listed() -> set[str]:
        _, page = get_json(f"{base}/messages?limit=100")
        return set() if page and mid in {m["id"] for m in page["items"]} else {mid}

    if wait_for("in GET /messages", listed):
        return 1
    print(f"ID={mid}")
    return 0


def flow(args: argparse.Namespace) -> int:
    base, allowed, required = args.base_url, set(args.allow), set(args.require)
    watcher = FeedWatcher(base)
    watcher.start()
    if not watcher.connected.wait(30):
        print("FAIL: /feed did not answer within 30 s")
        return 1
    statuses: Counter[int] = Counter()
    accepted_at: dict[str, float] = {}
    failures: list[str] = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < args.seconds:
        sent = time.monotonic()
        status, body = post(base, "drill", f"flow {n} {uuid.uuid4()}")
        took = time.monotonic() - sent
        statuses[status] += 1
        if status == 202:
            accepted_at[str(body["id"])] = time.monotonic()
        elif status not in allowed:
            failures.append(f"POST {n} answered {status} after {took:.1f} s: {body}")
        elif took > args.bound:
            failures.append(f"POST {n} answered {status} only after {took:.1f} s")
        n += 1
        time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - sent)))
    print(f"posted {n}: {dict(statuses)}", flush=True)
    accepted = set(accepted_at)
    for status in required - set(statuses):
        failures.append(f"no POST answered {status}")
    if args.ids_file:
        with open(args.ids_file, "w") as out:
            out.write("\n".join(sorted(accepted)) + "\n")
    if wait_for("stored", lambda: stored(base, accepted)):
        failures.append("accepted messages are missing from the database")
    if wait_for("on /feed", lambda: watcher.has(accepted)):
        failures.append("accepted messages never reached the feed")
    print(f"feed events: {dict(watcher.events)}")
    if args.feed_bound is not None:
        late = stalled(accepted_at, watcher.arrivals(), args.feed_bound)
        failures += late[:10] + ([f"... {len(late) - 10} more late"] if len(late) > 10 else [])
    if args.no_reset and watcher.events["reset"]:
        failures.append(f"the feed sent {watcher.events['reset']} reset event(s): a gap")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("check", help="one message through POST, /feed, GET /messages")
    one.add_argument("base_url")
    many = commands.add_parser("flow", help="steady posts; every accepted one stored and fed")
    many.add_argument("base_url")
    many.add_argument("--seconds", type=float, required=True)
    many.add_argument("--rate", type=float, default=5.0, help="posts per second")
    many.add_argument("--allow", type=int, action="append", default=[], help="status allowed")
    many.add_argument("--require", type=int, action="append", default=[], help="must be seen")
    many.add_argument("--bound", type=float, default=10.0, help="max seconds for an allowed one")
    many.add_argument("--feed-bound", type=float, help="max seconds from a 202 to the feed")
    many.add_argument("--no-reset", action="store_true", help="a `reset` event fails the run")
    many.add_argument("--ids-file", help="write the accepted ids here, one a line")
    args = parser.parse_args(argv)
    args.base_url = args.base_url.rstrip("/")
    return check(args.base_url) if args.command == "check" else flow(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
