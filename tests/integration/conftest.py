"""Servers of the native stack for integration tests, one set per test module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import KafkaBroker, Postgres, free_port, scratch_dir


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """A scratch directory the `postgres` user can enter."""
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(root: Path) -> Iterator[Postgres]:
    """A PostgreSQL server of the module's own."""
    pg = Postgres(root / "postgres", free_port())
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def kafka(root: Path) -> Iterator[KafkaBroker]:
    """A Kafka broker of the module's own."""
    broker = KafkaBroker(root / "kafka", free_port())
    broker.start()
    yield broker
    broker.stop()
