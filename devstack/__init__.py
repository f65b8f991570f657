"""The native stack for development, tests and benchmarks: PostgreSQL, Kafka, feedsvc processes.

Imported by the tests and the benchmarks as a package, run by `scripts/local-stack` as
`python -m devstack up|down|status [--root DIR] [--replicas N]`. One module per piece:
`procs` (child processes, their pids and logs), `postgres` and `kafka` (the two servers),
`proxy` (HAProxy in front of the api replicas), `stack` (all of it under one root),
`cli`, `poll` (bounded waits), and `standin` (the changefeed stand-in process) with its
`outbox` (SQL) and `envelope` (the records' bytes).
"""

from devstack.cli import main
from devstack.kafka import KafkaBroker
from devstack.postgres import Postgres
from devstack.procs import REPO, Service, StackError, free_port, log_tail, scratch_dir
from devstack.proxy import Proxy
from devstack.stack import DEFAULT_ROOT, ROLES, STANDIN, ExternalStack, Stack

__all__ = [
    "DEFAULT_ROOT",
    "REPO",
    "ROLES",
    "STANDIN",
    "ExternalStack",
    "KafkaBroker",
    "Postgres",
    "Proxy",
    "Service",
    "Stack",
    "StackError",
    "free_port",
    "log_tail",
    "main",
    "scratch_dir",
]
