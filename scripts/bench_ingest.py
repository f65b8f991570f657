"""`scripts/bench ingest`: POST throughput and latency of a fresh native stack, with a baseline.

Loads the api with wrk (one Lua-scripted load generator for both targets), keeps every
id the api returned with 202, waits for the writer to store them and prints one JSON
object: accepted and stored rates, lost and duplicated ids, POST latency, and the rate of
a bare Litestar handler that only validates the same body, measured in the same run.

Note: wrk and the services share the machine's cores, so the figures are those of a
machine that also generates its own load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from bench_common import baseline_server, fresh_stack, loadavg, machine, say
from local_stack import Stack

# One request pool per wrk thread (bodies built once), ids kept in a table that done()
# collects: files written from response() would need a flush that done() cannot do.
LUA = r"""
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local run = os.getenv("BENCH_RUN")
  local authors = tonumber(os.getenv("BENCH_AUTHORS"))
  local rate = tonumber(os.getenv("BENCH_RATE"))
  local threads = tonumber(os.getenv("BENCH_THREADS"))
  pool = {}
  for i = 0, authors - 1 do
    local body = string.format(
      '{"author":"%s_%d_%d","text":"benchmark message %d from thread %d: ' ..
      'a short text of about a hundred characters, like most posts."}',
      run, tid, i, i, tid)
    pool[#pool + 1] = wrk.format("POST", "/messages",
      {["Content-Type"] = "application/json"}, body)
  end
  n = 0
  ids = {}
  statuses = {}
  -- Paced mode: this thread's share of the rate, on an absolute schedule.
  interval_ms = rate > 0 and 1000 * threads / rate or 0
  next_slot = nil
end

function request()
  n = n + 1
  return pool[(n % #pool) + 1]
end

if tonumber(os.getenv("BENCH_RATE")) > 0 then
  -- wrk runs LuaJIT; its FFI reads the monotonic clock (Lua itself has none finer than 1 s).
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end

  -- Each request takes the next free slot of the schedule, so the rate holds whatever the
  -- latency; after a stall it catches up on at most one second of missed slots.
  function delay()
    local t = now_ms()
    if next_slot == nil or next_slot < t - 1000 then
      next_slot = t
    end
    local slot = next_slot
    next_slot = next_slot + interval_ms
    return math.max(0, slot - t)
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 202 then
    ids[#ids + 1] = body:match('"id":"([%x%-]+)"')
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  local codes = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      codes[tostring(code)] = (codes[tostring(code)] or 0) + count
    end
    for _, id in ipairs(thread:get("ids")) do
      out:write("id ", id, "\n")
    end
  end
  for code, count in pairs(codes) do
    out:write("status ", code, " ", count, "\n")
  end
  local e = summary.errors
  out:write("requests ", summary.requests, "\n")
  out:write("duration_us ", summary.duration, "\n")
  out:write("errors ", e.connect + e.read + e.write + e.timeout, "\n")
  out:write("timeouts ", e.timeout, "\n")
  for _, p in ipairs({50, 90, 99, 99.9}) do
    out:write("p", p, " ", latency:percentile(p), "\n")
  end
  out:write("max ", latency.max, "\n")
  out:close()
end
"""


def ensure_wrk() -> str:
    """wrk's path; installed with apt when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("bench: wrk is missing; install it (apt-get install wrk)")
    say("apt-get install wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True, env=env
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: wrk still missing after apt-get install")
    return found


class Load:
    """One wrk run against `url`; `result` holds what its done() wrote."""

    def __init__(self, wrk: str, url: str, args: argparse.Namespace, seconds: float) -> None:
        self.wrk = wrk
        self.url = url
        self.args = args
        self.seconds = seconds
        self.ids: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.result: dict[str, float] = {}

    def run(self, workdir: Path) -> None:
        script = workdir / "post.lua"
        script.write_text(LUA)
        out = workdir / f"wrk-{uuid.uuid4().hex[:8]}.txt"
        env = {
            **os.environ,
            "BENCH_RUN": "b" + uuid.uuid4().hex[:10],
            "BENCH_AUTHORS": str(self.args.authors),
            "BENCH_RATE": str(self.args.rate),
            "BENCH_THREADS": str(self.args.threads),
            "BENCH_OUT": str(out),
        }
        argv = [
            self.wrk,
            f"-t{self.args.threads}",
            f"-c{self.args.connections}",
            f"-d{self.seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{self.url}/messages",
        ]
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        for line in out.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "id":
                self.ids.append(rest)
            elif kind == "status":
                code, count = rest.split()
                self.statuses[code] += int(count)
            else:
                self.result[kind] = float(rest)

    @property
    def duration_s(self) -> float:
        return self.result["duration_us"] / 1e6

    def latency_ms(self, name: str) -> float:
        return round(self.result[name] / 1000, 2)


def baseline(wrk: str, args: argparse.Namespace, workdir: Path) -> Load:
    """The bare handler's throughput, served by uvicorn like the api."""
    with baseline_server("bench_baseline.py", workdir) as (_, url):
        load = Load(wrk, url, args, args.baseline_seconds)
        load.run(workdir)
        return load


class RowCounter:
    """Counts the stored rows in the background and notes when a target is reached."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.changed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RowCounter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.2):
                row = conn.execute("SELECT count(*) FROM messages").fetchone()
                count = int(row[0]) if row else 0
                if count != self.count:
                    self.count, self.changed_at = count, time.monotonic()

    def wait(self, target: int, idle_s: float) -> float:
        """Wait until `target` rows exist or nothing changed for `idle_s`; when it ended."""
        while self.count < target and time.monotonic() - self.changed_at < idle_s:
            time.sleep(0.1)
        return self.changed_at


def ingest(args: argparse.Namespace) -> dict[str, Any]:
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="feedsvc-bench-"))
    try:
        # The changefeed stand-in is CockroachDB's work in production: it is left out here.
        with fresh_stack("feedsvc-bench-stack-", roles=("writer", "api")) as stack:
            return _ingest(wrk, stack, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ingest(wrk: str, stack: Stack, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = loadavg()
    base = None
    if args.baseline_seconds > 0:
        say(f"baseline: bare Litestar handler for {args.baseline_seconds:g}s")
        base = baseline(wrk, args, workdir)
    say(f"ingest: {args.seconds:g}s at {args.rate or 'full'} posts/s")
    with RowCounter(stack.postgres.url("feedsvc")) as rows:
        began = time.monotonic()
        load = Load(wrk, stack.api_url, args, args.seconds)
        load.run(workdir)
        load_done = time.monotonic()
        load_after = loadavg()
        accepted = len(load.ids)
        say(f"ingest: {accepted} accepted; waiting for the writer to store them")
        stored_at = rows.wait(accepted, idle_s=30)
    with psycopg.connect(stack.postgres.url("feedsvc")) as conn:
        stored = [r[0] for r in conn.execute("SELECT id::text FROM messages").fetchall()]
    stored_set = set(stored)
    accepted_set = set(load.ids)
    store_s = max(stored_at - began, load.duration_s)
    return {
        "mode": "paced" if args.rate else "full",
        "accepted": accepted,
        "accepted_per_s": round(accepted / load.duration_s),
        "stored": len(stored_set),
        "stored_per_s": round(len(stored_set) / store_s),
        "drain_after_load_s": round(max(0.0, stored_at - load_done), 2),
        "lost": len(accepted_set - stored_set),
        "duplicates": (accepted - len(accepted_set)) + (len(stored) - len(stored_set)),
        "stored_unacknowledged": len(stored_set - accepted_set),
        "statuses": dict(load.statuses),
        "errors": int(load.result["errors"]),
        "post_p50_ms": load.latency_ms("p50"),
        "post_p90_ms": load.latency_ms("p90"),
        "post_p99_ms": load.latency_ms("p99"),
        "post_p999_ms": load.latency_ms("p99.9"),
        "post_max_ms": load.latency_ms("max"),
        "baseline_post_per_s": (
            round(sum(base.statuses.values()) / base.duration_s) if base else None
        ),
        "baseline_p99_ms": base.latency_ms("p99") if base else None,
        "conditions": {
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "seconds": args.seconds,
            "baseline_seconds": args.baseline_seconds,
            "target_rate": args.rate or None,
            # Paced, the baseline runs at the same rate: its p99 is the framework's share.
            "baseline_paced": bool(args.rate),
            "connections": args.connections,
            "wrk_threads": args.threads,
            "authors_per_thread": args.authors,
            "load_generator": "wrk (same machine)",
            "processes": "1 api, 1 writer, PostgreSQL, 1 Kafka broker; no changefeed",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("ingest", help="POST throughput and latency against a fresh stack")
    run.add_argument("--seconds", type=float, default=60.0, help="length of the load (60)")
    run.add_argument("--rate", type=int, default=0, help="posts/s to pace at; 0: full speed")
    run.add_argument("--connections", type=int, default=64, help="open connections (64)")
    run.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    run.add_argument("--authors", type=int, default=50, help="distinct authors per thread")
    run.add_argument(
        "--baseline-seconds", type=float, default=20.0, help="baseline load length; 0: skip"
    )
    args = parser.parse_args(argv)
    print(json.dumps(ingest(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
