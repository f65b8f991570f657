"""`python -m devstack up|down|status [--root DIR]`, which `scripts/local-stack` runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.procs import StackError
from devstack.stack import DEFAULT_ROOT, Stack


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devstack up|down|status [--root DIR] [--replicas N]`."""
    parser = argparse.ArgumentParser(
        description="The native stack: PostgreSQL, Kafka, feedsvc processes, the proxy in front."
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=Path(os.environ.get("LOCAL_STACK_DIR") or DEFAULT_ROOT)
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("FEEDSVC_API_REPLICAS") or 2),
        help="api replicas behind the proxy (FEEDSVC_API_REPLICAS, 2 as in compose)",
    )
    args = parser.parse_args(argv)
    stack = Stack(args.root, replicas=args.replicas)
    try:
        if args.command == "up":
            stack.up()
            for name in stack.replicas:
                print(f"replica {name}: {stack.replica_url(name)}")
            print(f"WRITER_URL={stack.writer_url}")  # its /metrics and /health/*
            print(f"FEED_URL={stack.api_url}")
        elif args.command == "down":
            stack.down()
        else:
            states = stack.status()
            for name, running in states.items():
                print(f"{name}: {'running' if running else 'stopped'}")
            print(f"WRITER_URL={stack.writer_url}")
            print(f"FEED_URL={stack.api_url}")
            return 0 if all(states.values()) else 3
    except StackError as exc:
        print(f"local-stack {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0
