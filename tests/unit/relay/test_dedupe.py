"""The deduper: bounded, and the same answer wherever reading starts."""

from __future__ import annotations

from feedsvc.relay.dedupe import Deduper


def test_repeat_within_the_window_is_a_duplicate() -> None:
    """A key seen fewer than `window` offsets ago is a duplicate."""
    dedupe = Deduper(10)
    assert not dedupe.is_duplicate(0, "a")
    assert dedupe.is_duplicate(9, "a")


def test_window_counts_from_the_latest_sighting() -> None:
    """A repeat keeps the key alive: the window runs from its latest sighting."""
    dedupe = Deduper(10)
    assert not dedupe.is_duplicate(0, "a")
    assert dedupe.is_duplicate(8, "a")
    assert dedupe.is_duplicate(15, "a")  # 15 after the first, 7 after the second
    assert not dedupe.is_duplicate(30, "a")


def test_memory_is_bounded_by_the_window() -> None:
    """Keys older than the window are forgotten."""
    dedupe = Deduper(100)
    for offset in range(10_000):
        dedupe.is_duplicate(offset, offset)
    assert len(dedupe) == 100


def test_same_answers_from_any_start_a_window_back() -> None:
    """A reader that starts `window` offsets early agrees with one that read everything."""
    keys = [(i * 7) % 13 for i in range(200)]
    full = Deduper(20)
    answers = [full.is_duplicate(offset, key) for offset, key in enumerate(keys)]
    for start in (50, 99, 150):
        late = Deduper(20)
        for offset in range(start - 20, start):
            late.is_duplicate(offset, keys[offset])
        late_answers = [late.is_duplicate(o, keys[o]) for o in range(start, len(keys))]
        assert late_answers == answers[start:]
