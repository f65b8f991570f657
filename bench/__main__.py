"""`python -m bench SCENARIO [--quick] [options]` and `python -m bench all [--quick]`.

Each scenario prints a human summary on stderr and its result as the last line on stdout
(one JSON object); `all` runs every scenario in turn and prints each result line as it
ends, then one object holding them all.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import Any

import msgspec

from bench import churn, fanout, faults, idle, ingest, overload, resume
from bench.proc import raise_fd_limit
from bench.report import emit, say, summary
from bench.result import All
from bench.stack import PATHS, Stacks

SCENARIOS = ("ingest", "overload", "fanout", "idle", "churn", "resume", "faults")


SHARED_ENV = {"FEED_MAX_SUBSCRIBERS": "42000", "FEED_MAX_BACKLOG": str(overload.BACKLOG_LIMIT)}
"""The settings of the stack `all` shares: the union of what the scenarios ask for."""


def _scenario(args: argparse.Namespace, name: str, stacks: Stacks) -> msgspec.Struct:
    quick: bool = args.quick
    if name == "ingest":
        opts = ingest.Options.make(
            quick, args.seconds, args.rate, args.connections, getattr(args, "workers", 0)
        )
        return ingest.run(opts, stacks)
    if name == "overload":
        return overload.run(overload.Options.make(quick, args.sustainable), stacks)
    if name == "fanout":
        return fanout.run(fanout.Options.make(quick, args.subscribers), stacks)
    if name == "idle":
        return idle.run(idle.Options.make(quick, args.connections), stacks)
    if name == "churn":
        return churn.run(churn.Options.make(quick, args.streams, args.rate, args.seconds), stacks)
    if name == "resume":
        return resume.run(resume.Options.make(quick), stacks)
    return faults.run(faults.Options.make(quick), stacks)


def parser() -> argparse.ArgumentParser:
    """The command line: a subcommand per scenario, and `all`."""
    top = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="scenario", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--quick", action="store_true", help="a shortened run, the same keys")
        p.add_argument(
            "--path",
            choices=PATHS,
            default="proxy",
            help="through the front door (proxy, the default) or straight to the api (direct)",
        )
        return p

    p = add("ingest", "POSTs at the highest sustainable rate, beside the bare handler")
    p.add_argument("--seconds", type=float, default=None, help="load length (60; quick 10)")
    p.add_argument("--rate", type=int, default=0, help="posts/s to pace at; 0: full speed")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--workers", type=int, default=0, help="api worker processes (0: per core)")
    p = add("overload", "POSTs at 10x the sustainable rate")
    p.add_argument("--sustainable", type=int, default=0, help="posts/s; 0: measure it first")
    p = add("fanout", "the highest post rate with delivery p99 <= 200 ms, and the baseline")
    p.add_argument(
        "--subscribers", type=int, nargs="+", default=[1000, 5000], help="counts (1000 5000)"
    )
    p = add("idle", "as many idle feed connections as one api worker holds")
    p.add_argument("--connections", type=int, default=0, help="up to (40000; quick 4000)")
    p = add("churn", "streams leaving and joining among N idle ones: api CPU per leave+join")
    p.add_argument("--streams", type=int, nargs="+", default=None, help="counts (1000 10000 36000)")
    p.add_argument("--rate", type=float, default=0.0, help="leave+joins per second (50)")
    p.add_argument("--seconds", type=float, default=0.0, help="each window (30; quick 10)")
    add("resume", "clients drop together and resume behind while posts go on")
    add("faults", "SIGKILL writer and api, restart Kafka and the database, under load")
    p = add("all", "every scenario in turn, on one shared stack")
    p.add_argument("--fresh", action="store_true", help="a fresh stack for each scenario")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the scenario(s); 0 when each printed its result."""
    args = parser().parse_args(argv)
    if args.scenario != "all":
        result = _scenario(args, args.scenario, Stacks(path=args.path))
        summary(args.scenario, result)
        emit(result)
        return 0
    began = time.monotonic()
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    defaults = parser()
    # The shared stack's processes inherit the limit: raise it before they start.
    raise_fd_limit(50_000)
    stacks = Stacks(path=args.path) if args.fresh else Stacks(shared_env=SHARED_ENV, path=args.path)
    try:
        for name in SCENARIOS:
            one = defaults.parse_args(
                [name, "--path", args.path, *(["--quick"] if args.quick else [])]
            )
            say(f"=== {name} ({time.monotonic() - began:.0f}s in) ===")
            try:
                result = _scenario(one, name, stacks)
            except Exception as exc:
                traceback.print_exc()
                failed[name] = repr(exc)
                continue
            summary(name, result)
            emit(result)
            results[name] = msgspec.to_builtins(result)
    finally:
        stacks.close()
    emit(All(results=results, failed=failed, seconds=round(time.monotonic() - began, 1)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
