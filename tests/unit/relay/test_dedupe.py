"""The deduper: repeats of any length, bounded memory, the same answer wherever it starts."""

from __future__ import annotations

from feedsvc.relay.changefeed import Row
from feedsvc.relay.dedupe import Deduper
from tests.unit.relay.helpers import row


def test_repeat_within_the_window_is_a_duplicate() -> None:
    """A record seen fewer than `window` offsets ago is a repeat, resolved or not."""
    dedupe = Deduper(10)
    assert not dedupe.is_duplicate(0, row(0))
    assert dedupe.is_duplicate(9, row(0))


def test_repeat_below_a_resolved_is_a_duplicate_at_any_distance() -> None:
    """A row at or below the highest resolved before it is a repeat, however far back."""
    dedupe = Deduper(10)
    assert not dedupe.is_duplicate(0, row(0))
    dedupe.see_resolved(1, row(0).updated or "")
    assert dedupe.is_duplicate(1_000_000, row(0))
    assert not dedupe.is_duplicate(1_000_001, row(1))


def test_unresolved_repeat_beyond_the_window_is_delivered_again() -> None:
    """Memory is bounded: a repeat above every resolved and older than the window is not caught."""
    dedupe = Deduper(10)
    assert not dedupe.is_duplicate(0, row(5))
    dedupe.see_resolved(1, row(4).updated or "")
    assert not dedupe.is_duplicate(20, row(5))


def test_a_new_version_is_not_a_repeat() -> None:
    """The same message id with another `updated` is another event."""
    dedupe = Deduper(10)
    assert not dedupe.is_duplicate(0, row(0))
    again = Row(message=row(0).message, updated="1800000000000000000.0000000000")
    assert not dedupe.is_duplicate(1, again)


def test_memory_is_bounded_by_the_window() -> None:
    """Keys older than the window are forgotten."""
    dedupe = Deduper(100)
    for offset in range(10_000):
        dedupe.is_duplicate(offset, row(offset))
    assert len(dedupe) == 100


def _topic() -> list[Row | str]:
    """Rows with repeats near and far, and a resolved (a string) every 9 offsets."""
    records: list[Row | str] = []
    for i in range(300):
        if i % 9 == 0:
            records.append(row(max(0, i - 12)).updated or "")
        else:
            records.append(row((i * 7) % 120))
    return records


def test_same_answers_once_exact() -> None:
    """A reader starting mid-topic agrees with one from offset 0 from `exact_from` on."""
    records = _topic()

    def answers(dedupe: Deduper, start: int) -> dict[int, bool]:
        out: dict[int, bool] = {}
        for offset in range(start, len(records)):
            record = records[offset]
            if isinstance(record, str):
                dedupe.see_resolved(offset, record)
            else:
                out[offset] = dedupe.is_duplicate(offset, record)
        return out

    full = answers(Deduper(20), 0)
    for start in (5, 50, 99, 150):
        late = Deduper(20, start)
        got = answers(late, start)
        exact = late.exact_from
        assert exact is not None and exact >= start + 20
        assert {o: a for o, a in got.items() if o >= exact} == {
            o: a for o, a in full.items() if o >= exact
        }
