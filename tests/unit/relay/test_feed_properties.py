"""Property tests: over any interleaving, a client sees every message once, in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from feedsvc.relay.changefeed import Row
from feedsvc.relay.fanout import Fanout, ReplayFrom, Reset, Subscription
from feedsvc.relay.replay import Replay
from tests.unit.relay.helpers import parse, row

HISTORY = 3

# commit, emit (the changefeed sends a committed row), duplicate (it sends one again),
# resolved, subscribe, read history, take frames; the drawn number picks which row.
OPS = st.lists(st.tuples(st.sampled_from("cedrsht"), st.integers(0, 1000)), max_size=80)


class Topic:
    """`messages.committed` as the changefeed fills it, read live by one relay."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.records: list[Row | None] = []
        self.committed: list[int] = []
        self.unsent: list[int] = []
        self.sent: list[int] = []

    def commit(self) -> None:
        n = len(self.committed)
        self.committed.append(n)
        self.unsent.append(n)

    def emit(self, pick: int, *, duplicate: bool = False) -> None:
        pool = self.sent if duplicate else self.unsent
        if not pool:
            return
        n = pool[pick % len(pool)] if duplicate else pool.pop(pick % len(pool))
        self.sent.append(n)
        offset = len(self.records)
        self.records.append(row(n))
        self.fanout.publish(offset, row(n))

    def resolved(self) -> None:
        self.records.append(None)
        self.fanout.advance(len(self.records) - 1)

    def apply(self, op: str, pick: int) -> bool:
        """Carry out a changefeed-side step (c, e, d, r); False for any other op."""
        if op == "c":
            self.commit()
        elif op == "e":
            self.emit(pick)
        elif op == "d":
            self.emit(pick, duplicate=True)
        elif op == "r":
            self.resolved()
        else:
            return False
        return True

    def first_offsets(self) -> dict[int, int]:
        first: dict[int, int] = {}
        for offset, record in enumerate(self.records):
            if record is not None:
                first.setdefault(int(record.message.text.split()[1]), offset)
        return first


def _numbers(frames: list[bytes]) -> list[tuple[int, int]]:
    """(offset, message number) of each message frame."""
    return [
        (int(eid.split("-")[0]), int(data["text"].split()[1]))
        for eid, event, data in parse(frames)
        if event == "message" and data is not None
    ]


@settings(max_examples=400, deadline=None)
@given(ops=OPS)
def test_history_then_live_each_message_once(ops: list[tuple[str, int]]) -> None:
    """Latest N, then every later message in offset order, each once (DESIGN §3 handoff)."""
    topic = Topic(Fanout(1000, 1000))
    sub: Subscription | None = None
    head_at_subscribe = 0
    history: list[int] | None = None
    committed_at_read = 0
    live: list[tuple[int, int]] = []

    def connect() -> None:
        nonlocal sub, head_at_subscribe
        if sub is None:
            head_at_subscribe = topic.fanout.head
            answer = topic.fanout.subscribe(None)
            assert isinstance(answer, Subscription)
            sub = answer

    def read_history() -> None:
        nonlocal history, committed_at_read
        if sub is not None and history is None:
            # Newest N by creation time, sent oldest first; creation order = commit order.
            history = topic.committed[-HISTORY:]
            committed_at_read = len(topic.committed)
            sub.exclude({row(n).message.id for n in history})

    def take() -> None:
        if sub is not None and history is not None:
            live.extend(_numbers(sub.take()))

    for op, pick in ops:
        if topic.apply(op, pick):
            continue
        if op == "s":
            connect()
        elif op == "h":
            read_history()
        else:
            take()
    connect()
    read_history()
    while topic.unsent:
        topic.emit(0)
    take()

    assert history is not None
    seen = history + [n for _, n in live]
    assert len(seen) == len(set(seen)), "a message reached the client twice"
    offsets = [offset for offset, _ in live]
    assert offsets == sorted(offsets), "live messages out of offset order"
    first = topic.first_offsets()
    # Everything the changefeed first sent after the subscription, and everything
    # committed after the history read, reached the client.
    assert {n for n, o in first.items() if o >= head_at_subscribe} <= set(seen)
    assert set(range(committed_at_read, len(topic.committed))) <= set(seen)
    # Live never carries older messages the subscription predates.
    assert all(first[n] >= head_at_subscribe for _, n in live)


# As above, plus x: the client disconnects and reconnects with its Last-Event-ID.
RESUME_OPS = st.lists(st.tuples(st.sampled_from("ceedrtx"), st.integers(0, 1000)), max_size=80)


@settings(max_examples=400, deadline=None)
@given(ops=RESUME_OPS, ring=st.integers(1, 6), buffer=st.integers(1, 6))
def test_resume_through_ring_and_replay_loses_nothing(
    ops: list[tuple[str, int]], ring: int, buffer: int
) -> None:
    """Disconnects, lagging, resumes from the ring or from Kafka: every message once, in order."""
    buffer = min(buffer, ring)
    topic = Topic(Fanout(ring, buffer, dedupe_window=1000))
    got: list[tuple[int, int]] = []
    last_id = "-1"

    def attach(position: str) -> Subscription:
        nonlocal last_id
        answer = topic.fanout.subscribe(position)
        if isinstance(answer, Subscription):
            return answer
        assert isinstance(answer, ReplayFrom), answer
        replay = Replay(topic.fanout, answer.after)
        seek = replay.start(0)
        assert isinstance(seek, int)
        for offset in range(seek, len(topic.records) + 1):
            handed = replay.handover(offset)
            if handed is not None:
                return handed
            assert offset < len(topic.records), "the replay reached the end without handover"
            out = replay.feed(offset, topic.records[offset])
            assert not isinstance(out, Reset)
            if out is not None:
                receive([out])
        raise AssertionError("unreachable")

    def receive(frames: list[bytes]) -> None:
        nonlocal last_id
        got.extend(_numbers(frames))
        if frames:
            last_id = parse(frames)[-1][0]

    sub = attach(last_id)
    for op, pick in ops:
        if topic.apply(op, pick):
            continue
        if op == "t":
            receive(sub.take())
            if sub.ended:  # told to resume: reconnect as a browser does
                sub = attach(last_id)
        else:
            sub.close()
            sub = attach(last_id)
    while topic.unsent:
        topic.emit(0)
    while True:
        frames = sub.take()
        receive(frames)
        if not sub.ended:
            break
        sub = attach(last_id)

    numbers = [n for _, n in got]
    assert len(numbers) == len(set(numbers)), "a message reached the client twice"
    assert [o for o, _ in got] == sorted(o for o, _ in got), "out of offset order"
    assert sorted(numbers) == sorted(topic.first_offsets()), "a message was lost"
