"""wrk, the load generator for POST rates: one Lua script for the api and the baselines.

wrk (C, LuaJIT) offers far more requests per second than a Python client on the same
cores; the script keeps every id answered with 202 and counts every status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import say

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


@dataclass
class Load:
    """One wrk run against `url`: paced at `rate` per second, or as fast as it answers (0)."""

    url: str
    seconds: float
    rate: int = 0
    connections: int = 64
    threads: int = 1
    authors: int = 50
    ids: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    result: dict[str, float] = field(default_factory=dict)

    def run(self, workdir: Path) -> Load:
        """Run wrk to the end and read what its done() wrote."""
        script = workdir / "post.lua"
        script.write_text(LUA)
        out = workdir / f"wrk-{uuid.uuid4().hex[:8]}.txt"
        env = {
            **os.environ,
            "BENCH_RUN": "b" + uuid.uuid4().hex[:10],
            "BENCH_AUTHORS": str(self.authors),
            "BENCH_RATE": str(self.rate),
            "BENCH_THREADS": str(self.threads),
            "BENCH_OUT": str(out),
        }
        argv = [
            ensure_wrk(),
            f"-t{self.threads}",
            f"-c{self.connections}",
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
        return self

    @property
    def duration_s(self) -> float:
        """How long wrk ran."""
        return self.result["duration_us"] / 1e6

    @property
    def answered(self) -> int:
        """Requests answered with any status."""
        return sum(self.statuses.values())

    def latency_ms(self, name: str) -> float:
        """A latency figure (p50, p90, p99, p99.9, max) of every answer, in ms."""
        return round(self.result[name] / 1000, 2)
