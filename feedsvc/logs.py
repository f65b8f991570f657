"""Structured logging: one JSON object per line when stderr is not a terminal."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
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
    # No line of ours shows where a call came from, or its thread or process: skip
    # finding them for every record (the access log makes thousands a second). As the
    # logging HOWTO's "Optimization" section says to:
    # https://docs.python.org/3/howto/logging.html#optimization
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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


_STOP = logging.makeLogRecord({"msg": "stop"})
"""Queued last, to end the writer thread."""


class _Writer:
    """The thread that formats and writes queued records, each batch at once.

    Note: it takes every record waiting (up to `batch`) and writes them to a plain
    `StreamHandler`'s stream with one write and one flush, not one of each per line:
    under load the access log's write per request was a tenth of the api's CPU. Other
    handlers get each record as usual.
    """

    def __init__(
        self, records: queue.Queue[logging.LogRecord], handlers: list[logging.Handler]
    ) -> None:
        self.records = records
        self.handlers = handlers
        self.batch = 1024
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Write what is queued, then end the thread; False if it did not end in `timeout_s`.

        Note: bounded, so that a stream that no longer takes writes cannot hold up exit.
        """
        until = time.monotonic() + timeout_s
        try:
            # Waits for room: the marker must get in behind a full queue.
            self.records.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return False
        self._thread.join(max(until - time.monotonic(), 0))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = [self.records.get()]
            while len(batch) < self.batch:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not _STOP]
            for handler in self.handlers:
                wanted = [r for r in records if r.levelno >= handler.level]
                if type(handler) is logging.StreamHandler:
                    _write_lines(handler, wanted)
                else:
                    for record in wanted:
                        try:
                            handler.handle(record)
                        except Exception:  # a handler's own failure must not end the thread
                            handler.handleError(record)
            if len(records) < len(batch):
                return


def _write_lines(handler: logging.StreamHandler[Any], records: list[logging.LogRecord]) -> None:
    """Write `records` in one write; one that fails to format is reported and skipped.

    Note: as `StreamHandler.emit` does for one record, a failure goes to `handleError`
    (a "--- Logging error ---" report on stderr), and the other lines still go out.
    """
    lines = []
    for record in records:
        try:
            if handler.filter(record):
                lines.append(handler.format(record))
        except Exception:
            handler.handleError(record)
    if not lines:
        return
    handler.acquire()
    try:
        handler.stream.write("\n".join(lines) + "\n")
        handler.flush()
    except Exception:
        handler.handleError(records[0])
    finally:
        handler.release()


@contextmanager
def written_by_a_thread(capacity: int = 100_000, stop_timeout_s: float = 5.0) -> Iterator[None]:
    """While open, log records are formatted and written by a thread of their own.

    Note: a write to stderr blocks when its reader (a log file on a busy disk, Docker's
    log driver) is slow, and on the event loop's thread it stalls every request; under
    load the access log's write was about half of the api's answering capacity. The
    queue is bounded: when the writer falls `capacity` lines behind, lines are dropped
    and counted (logged when the block ends), never queued without bound. Start it in
    the process that logs (a thread does not survive fork). Leaving the block waits at
    most `stop_timeout_s` for what is queued to be written; what is left then is lost.
    """
    root = logging.getLogger()
    handlers = root.handlers[:]
    records: queue.Queue[logging.LogRecord] = queue.Queue(capacity)
    enqueue = _Enqueue(records)
    listener = _Writer(records, handlers)
    listener.start()
    root.handlers = [enqueue]
    try:
        yield
    finally:
        root.handlers = handlers
        stopped = listener.stop(stop_timeout_s)  # writes what is queued first
        # Not stopped: the writer is stuck in its stream, and a report would be stuck there
        # too (behind the handler's lock), so the process leaves without one.
        if stopped and enqueue.dropped:
            logging.getLogger("feedsvc").warning(
                "log lines dropped: the log writer fell behind", extra={"dropped": enqueue.dropped}
            )
