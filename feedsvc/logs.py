"""Structured logging: one JSON object per line when stderr is not a terminal."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its `extra=` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, `extra=` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        return f"{line} {extras}" if extras else line


def configure_logging(level: str, role: str) -> None:
    """Route all logging to stderr in the format that suits where it goes."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(
            TextFormatter(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
        )
    else:
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aiokafka logs every failed reconnect at ERROR while a broker is down; we report
    # outages ourselves, once, with what they mean for clients.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are; drops them when its queue is full."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatted by the writer thread's handler, `extra=` fields and traceback included.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        # Waits for room: the stop marker must get in even behind a full queue.
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]


@contextmanager
def written_by_a_thread(capacity: int = 100_000) -> Iterator[None]:
    """While open, log records are formatted and written by a thread of their own.

    Note: a write to stderr blocks when its reader (a log file on a busy disk, Docker's
    log driver) is slow, and on the event loop's thread it stalls every request; under
    load the access log's write was about half of the api's answering capacity. The
    queue is bounded: when the writer falls `capacity` lines behind, lines are dropped
    and counted (logged when the block ends), never queued without bound. Start it in
    the process that logs (a thread does not survive fork).
    """
    root = logging.getLogger()
    handlers = root.handlers[:]
    records: queue.Queue[logging.LogRecord] = queue.Queue(capacity)
    enqueue = _Enqueue(records)
    listener = _Writer(records, *handlers, respect_handler_level=True)
    listener.start()
    root.handlers = [enqueue]
    try:
        yield
    finally:
        root.handlers = handlers
        listener.stop()  # writes what is queued first
        if enqueue.dropped:
            logging.getLogger("feedsvc").warning(
                "log lines dropped: the log writer fell behind", extra={"dropped": enqueue.dropped}
            )
