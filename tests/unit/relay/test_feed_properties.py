"""Property tests: over any interleaving, a client sees every message once, in one order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from feedsvc.relay.answers import Ahead, ReplayFrom, Reset
from feedsvc.relay.changefeed import Resolved, Row, hlc_value
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.replay import Replay, SeekBack
from feedsvc.relay.subscription import Subscription
from tests.unit.relay.helpers import message, parse

HISTORY = 3
WINDOW = 4
Record = Row | Resolved | None


def hlc(t: int) -> str:
    return f"{1_700_000_000_000_000_000 + t}.0000000000"


class Changefeed:
    """`messages.committed` as a CockroachDB changefeed fills it, read by relay replicas.

    Rows commit at increasing timestamps and are first emitted in any order; a resolved
    R is emitted only once every row committed at or before R has been (the vendor's
    guarantee); repeats of any length re-emit resolved rows from anywhere; a restart
    re-emits the unresolved tail (assumed shorter than the dedupe window).
    """

    def __init__(self, ring: int, buffer: int | None = None, window: int = WINDOW) -> None:
        self.ring = ring
        self.buffer = ring if buffer is None else buffer
        self.window = window
        self.records: list[Record] = []
        self.updated: list[int] = []  # commit timestamp of message n
        self.unsent: list[int] = []
        self.sent: list[tuple[int, int]] = []  # (message, offset of its first emission)
        self.clock = 0
        self.last_resolved = 0
        self.replicas = [Fanout(ring, self.buffer, dedupe_window=window)]

    def put(self, record: Record) -> None:
        self.records.append(record)
        for fanout in self.replicas:
            feed(fanout, len(self.records) - 1, record)

    def row(self, n: int) -> Row:
        return Row(message=message(n), updated=hlc(self.updated[n]))

    def apply(self, op: str, pick: int) -> bool:
        """Carry out a changefeed-side step; False for a client-side op."""
        if op == "c":
            self.clock += 1
            self.updated.append(self.clock)
            self.unsent.append(len(self.updated) - 1)
        elif op == "e":
            self.emit(pick)
        elif op == "d" and self.sent:
            # Repeats of any length, from anywhere, of rows a resolved already covers.
            for n, _ in self.sent[pick % len(self.sent) :]:
                if self.updated[n] <= self.last_resolved:
                    self.put(self.row(n))
        elif op == "R":
            # A restart from the last checkpoint: the unresolved tail again.
            for n, first in list(self.sent):
                if (
                    self.updated[n] > self.last_resolved
                    and first > len(self.records) - self.window // 2
                ):
                    self.put(self.row(n))
        elif op == "r":
            resolved = min((self.updated[n] for n in self.unsent), default=self.clock + 1) - 1
            if resolved >= self.last_resolved:
                self.last_resolved = resolved
                self.put(Resolved(hlc(resolved)))
        elif op == "B":
            # Another replica, starting somewhere in the topic (a warm-up window back).
            fanout = Fanout(
                self.ring, self.buffer, low=0, high=len(self.records), dedupe_window=self.window
            )
            for offset in range(fanout.start_offset, len(self.records)):
                feed(fanout, offset, self.records[offset])
            self.replicas.append(fanout)
        else:
            return op in "deR"
        return True

    def emit(self, pick: int) -> None:
        if self.unsent:
            n = self.unsent.pop(pick % len(self.unsent))
            self.sent.append((n, len(self.records)))
            self.put(self.row(n))


def feed(fanout: Fanout, offset: int, record: Record) -> None:
    if isinstance(record, Row):
        fanout.publish(offset, record)
    elif isinstance(record, Resolved):
        fanout.resolve(offset, record.hlc)
    else:
        fanout.advance(offset)


class Client:
    """A browser's EventSource: history, live, and resume with its last id anywhere."""

    def __init__(self, topic: Changefeed) -> None:
        self.topic = topic
        self.sub: Subscription | None = None
        self.last: str | None = None
        self.snapshot: int | None = None
        self.history: list[int] = []
        self.live: list[tuple[int, int]] = []

    def connect(self, pick: int) -> None:
        replicas = self.topic.replicas
        fanout = replicas[pick % len(replicas)]
        if not fanout.ready:
            fanout = replicas[0]  # that one answers "busy": the client retries elsewhere
        if self.last is None:
            self.start(fanout)
        else:
            self.resume(fanout)

    def start(self, fanout: Fanout) -> None:
        answer = fanout.subscribe(None)
        assert isinstance(answer, Subscription), answer
        self.sub = answer
        # The history read: a consistent snapshot at T, taken after the subscription.
        t = self.topic.clock
        self.snapshot = t
        visible = [n for n, u in enumerate(self.topic.updated) if u <= t]
        self.history = visible[-HISTORY:]
        self.last = answer.start_snapshot(hlc_value(hlc(t)))

    def resume(self, fanout: Fanout) -> None:
        assert self.last is not None
        answer = fanout.subscribe(self.last)
        assert not isinstance(answer, Reset | Ahead), answer
        if isinstance(answer, Subscription):
            self.sub = answer
            return
        assert isinstance(answer, ReplayFrom), answer
        replay = Replay(fanout, answer.after)
        seek = replay.start(0)
        assert isinstance(seek, int)
        records = self.topic.records
        offset = seek
        while True:
            handed = replay.handover(offset)
            assert not isinstance(handed, Reset), handed
            if handed is not None:
                self.sub = handed
                return
            assert offset < len(records), "the replay reached the end without handover"
            out = replay.feed(offset, records[offset])
            assert not isinstance(out, Reset), out
            if isinstance(out, SeekBack):
                offset = out.offset
                continue
            if out is not None:
                self.receive([out])
            offset += 1

    def receive(self, frames: list[bytes]) -> None:
        for eid, event, data in parse(frames):
            self.last = eid
            if event == "message" and data is not None:
                self.live.append(
                    (int(eid.split("-")[0].split("~")[0]), int(data["text"].split()[1]))
                )

    def take(self, pick: int) -> None:
        if self.sub is not None:
            self.receive(self.sub.take())
            if self.sub.ended:  # told to resume: reconnect as a browser does
                self.connect(pick)

    def drop(self, pick: int) -> None:
        if self.sub is not None:
            self.sub.close()
            self.connect(pick)


# c commit, e emit, d repeat, R restart, r resolved, B another replica starts,
# s connect, t take frames, x disconnect and resume (on any replica).
OPS = st.lists(
    st.tuples(st.sampled_from("cccceeeedRrrBsttx"), st.integers(0, 1000)), min_size=20, max_size=70
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, ring=st.integers(1, WINDOW))
def test_each_message_once_across_reconnects_and_replicas(
    ops: list[tuple[str, int]], ring: int
) -> None:
    """History then live, resumed at any step on any replica: every message once, in order."""
    topic = Changefeed(ring)
    client = Client(topic)
    for op, pick in ops:
        if topic.apply(op, pick):
            continue
        if op == "s" and client.sub is None:
            client.connect(pick)
        elif op == "t":
            client.take(pick)
        elif op == "x":
            client.drop(pick)
    if client.sub is None:
        client.connect(0)
    while topic.unsent:
        topic.emit(0)
    topic.apply("r", 0)
    assert client.sub is not None
    while True:
        client.receive(client.sub.take())
        if not client.sub.ended:
            break
        client.connect(0)

    assert client.snapshot is not None
    seen = client.history + [n for _, n in client.live]
    assert len(seen) == len(set(seen)), "a message reached the client twice"
    offsets = [offset for offset, _ in client.live]
    assert offsets == sorted(offsets), "live messages out of changefeed order"
    after = {n for n, u in enumerate(topic.updated) if u > client.snapshot}
    assert after <= set(seen), "a message committed after the history was lost"
    assert all(topic.updated[n] > client.snapshot for _, n in client.live)


# As above, plus x: the client disconnects and reconnects with its Last-Event-ID.
RESUME_OPS = st.lists(st.tuples(st.sampled_from("ceedrtx"), st.integers(0, 1000)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops=RESUME_OPS, ring=st.integers(1, 6), buffer=st.integers(1, 6))
def test_resume_through_ring_and_replay_loses_nothing(
    ops: list[tuple[str, int]], ring: int, buffer: int
) -> None:
    """Disconnects, lagging, resumes from the ring or from Kafka: every message once, in order."""
    buffer = min(buffer, ring)
    topic = Changefeed(ring, buffer, window=1000)
    client = Client(topic)
    client.last = "-1"
    client.connect(0)
    for op, pick in ops:
        if topic.apply(op, pick):
            continue
        if op == "t":
            client.take(0)
        else:
            client.drop(0)
    while topic.unsent:
        topic.emit(0)
    assert client.sub is not None
    while True:
        client.receive(client.sub.take())
        if not client.sub.ended:
            break
        client.connect(0)

    numbers = [n for _, n in client.live]
    assert len(numbers) == len(set(numbers)), "a message reached the client twice"
    assert [o for o, _ in client.live] == sorted(o for o, _ in client.live), "out of order"
    assert sorted(numbers) == [n for n, _ in sorted(topic.sent)], "a message was lost"
