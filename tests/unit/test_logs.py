"""Log lines are written by a thread of their own while the api serves, none lost but by count."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from feedsvc.logs import JsonFormatter, written_by_a_thread


class Slow(logging.Handler):
    """Records the thread each line is written on; blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []
        self.go = threading.Event()
        self.busy = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.busy.set()
        self.go.wait(10)
        self.lines.append((threading.current_thread().name, self.format(record)))


@pytest.fixture
def slow() -> Iterator[Slow]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = Slow()
    handler.setFormatter(JsonFormatter())
    root.handlers, root.level = [handler], logging.INFO
    try:
        yield handler
    finally:
        root.handlers, root.level = saved


def test_a_blocked_writer_does_not_block_the_logger(slow: Slow) -> None:
    """Logging returns at once while the write blocks; the line is written later, off the
    caller's thread, with its `extra=` fields."""
    log = logging.getLogger("tests.unit.test_logs")  # no other test configures it
    with written_by_a_thread():
        log.info("request", extra={"status": 202})  # would block here for 10 s if inline
        assert slow.lines == []
        slow.go.set()
    ((thread, line),) = slow.lines
    assert thread != threading.current_thread().name
    assert json.loads(line)["status"] == 202


def test_lines_beyond_the_queue_are_dropped_and_counted(slow: Slow) -> None:
    """With the writer stuck and the queue full, further lines are dropped, then reported."""
    log = logging.getLogger("tests.unit.test_logs")  # no other test configures it
    with written_by_a_thread(capacity=3):
        log.info("request", extra={"n": 0})
        assert slow.busy.wait(10)  # the writer holds line 0; the queue takes 3 more
        for i in range(1, 10):
            log.info("request", extra={"n": i})
        slow.go.set()
    written = [json.loads(line) for _, line in slow.lines]
    assert [w["n"] for w in written if "n" in w] == [0, 1, 2, 3]
    assert written[-1]["msg"].startswith("log lines dropped") and written[-1]["dropped"] == 6


class Gated(io.StringIO):
    """A stream that counts its writes and holds the first until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.go = threading.Event()

    def write(self, text: str) -> int:
        self.writes += 1
        self.go.wait(10)
        return super().write(text)


def test_a_stream_gets_each_batch_in_one_write() -> None:
    """Lines that queue up while a write is under way go out together, in order."""
    stream = Gated()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers, root.level = [handler], logging.INFO
    log = logging.getLogger("tests.unit.test_logs")
    try:
        with written_by_a_thread():
            for i in range(500):
                log.info("request", extra={"n": i})
            stream.go.set()
    finally:
        root.handlers, root.level = saved
    lines = [json.loads(line)["n"] for line in stream.getvalue().splitlines()]
    assert lines == list(range(500))
    assert stream.writes <= 3


class Broken:
    """A value whose `__str__` fails, as a bad `extra=` or message argument can."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


@pytest.mark.parametrize(
    ("msg", "args"),
    [("%d requests", ("many",)), ("%s", (Broken(),)), ("%s %s", ("one",))],
)
def test_a_record_that_fails_to_format_is_reported_and_the_next_lines_go_out(
    msg: str, args: tuple[object, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """A record that fails to format is reported as `Handler.handleError` reports it, and
    the lines logged after it are still written."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers, root.level = [handler], logging.INFO
    log = logging.getLogger("tests.unit.test_logs")
    try:
        with written_by_a_thread(stop_timeout_s=10):
            log.info("before")
            log.info(msg, *args)
            log.info("after")
    finally:
        root.handlers, root.level = saved
    written = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert written == ["before", "after"]
    assert "--- Logging error ---" in capsys.readouterr().err


def test_leaving_is_bounded_when_the_writer_is_stuck() -> None:
    """A writer stuck on its stream with the queue full: leaving the block returns within
    its bound instead of waiting for room in the queue for good."""
    stuck = threading.Event()
    release = threading.Event()

    class Stuck(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if threading.current_thread().name == "log-writer":
                stuck.set()
                release.wait(30)

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers, root.level = [Stuck()], logging.INFO
    log = logging.getLogger("tests.unit.test_logs")
    done = threading.Event()

    def run() -> None:
        with written_by_a_thread(capacity=2, stop_timeout_s=0.5):
            log.info("held by the writer")
            assert stuck.wait(10)
            for _ in range(5):
                log.info("queued or dropped")
        done.set()

    leaver = threading.Thread(target=run)
    try:
        leaver.start()
        assert done.wait(10), "leaving the block waited for the stuck writer"
    finally:
        release.set()
        leaver.join(30)
        root.handlers, root.level = saved
