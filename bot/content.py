"""Realistic, always valid messages: varied authors and texts from a seeded generator."""

from __future__ import annotations

import random

from feedsvc.messages import MAX_TEXT_CHARS, Submission

_FIRST = (
    "ada", "grace", "linus", "marie", "kenji", "amara", "diego", "fatima", "noah", "lea",
    "olu", "sven", "priya", "mateo", "yuki", "zoe", "ivan", "chloe", "omar", "ines",
)  # fmt: skip
_SECOND = (
    "dev", "runs", "cooks", "bird", "writes", "ops", "fan", "codes", "42", "travels",
    "reads", "bakes", "hikes", "2000", "x", "plays", "draws", "sings", "data", "cat",
)  # fmt: skip
_OPENERS = (
    "Just shipped", "Can't stop thinking about", "Hot take:", "Today I learned about",
    "Anyone else excited for", "Finally tried", "Unpopular opinion:", "Reading about",
    "Good morning from", "Still debugging", "Weekend plans:", "Big news about",
)  # fmt: skip
_WORDS = (
    "coffee", "the release", "a new feed", "kafka", "streaming", "rain", "the train",
    "pizza", "our team", "tests", "the deploy", "music", "latency", "the weekend", "bugs",
    "a long walk", "open source", "the city", "tea", "books", "the garden", "football",
    # Non-ASCII on purpose: the api must store and stream any script unchanged.
    "café", "naïve", "Zürich", "smörgåsbord", "jalapeño", "façade", "São Paulo", "crème brûlée",
    "東京", "こんにちは", "Москва", "привет", "مرحبا", "שלום", "Ελλάδα", "서울", "नमस्ते",
)  # fmt: skip
_TAILS = (
    "with the team", "before lunch", "again", "in the rain", "for the third time",
    "and nothing broke", "at 3am", "on a Monday", "with friends", "while it snows",
)  # fmt: skip
_CLOSERS = ("!", ".", "?", "!!", "...", " :)", " …", "?!")
_TAGS = (
    "kafka", "python", "coffee", "music", "travel", "devops", "rust", "food", "tbt",
    "mondays", "opensource", "café", "東京", "weekend", "streaming", "cockroachdb",
)  # fmt: skip
_EMOJI = (
    "🎉", "🚀", "👍", "👍🏽", "❤️", "🔥", "☕", "😂", "🌍", "✨", "🙌🏿", "🤔", "🇫🇷", "🇯🇵",
    "👨‍👩‍👧",  # a ZWJ sequence: one glyph, five code points, all counted by the api
)  # fmt: skip


class MessageGenerator:
    """An endless, reproducible stream of submissions that pass the api's validation."""

    def __init__(self, seed: int, authors: int) -> None:
        self._random = random.Random(seed)
        self.authors = _author_names(self._random, authors)

    def next(self) -> Submission:
        """The next message: a random author, 1-280 characters, no edge whitespace."""
        return Submission(author=self._random.choice(self.authors), text=self._text())

    def _text(self) -> str:
        rnd = self._random
        shape = rnd.random()
        # The edges of the rules get their share: one character, exactly the limit.
        if shape < 0.03:
            return rnd.choice((*_EMOJI[:10], "k", "?", "é"))
        if shape < 0.06:
            head = self._sentence() + " "
            return head + rnd.choice("!🔥a") * (MAX_TEXT_CHARS - len(head))
        target = rnd.choice((rnd.randint(10, 60), rnd.randint(40, 140), rnd.randint(100, 280)))
        text = self._sentence()
        while len(text) < target:
            # Now and then a second paragraph: the one control character allowed.
            glue = "\n" if rnd.random() < 0.1 else " "
            sentence = self._sentence()
            if len(text) + len(glue) + len(sentence) > target:
                break
            text += glue + sentence
        for _ in range(rnd.choice((0, 1, 1, 2, 3))):
            extra = self._extra()
            if len(text) + 1 + len(extra) <= MAX_TEXT_CHARS:
                text += " " + extra
        return text[:MAX_TEXT_CHARS].strip()

    def _sentence(self) -> str:
        rnd = self._random
        tail = f" {rnd.choice(_TAILS)}" if rnd.random() < 0.5 else ""
        return f"{rnd.choice(_OPENERS)} {rnd.choice(_WORDS)}{tail}{rnd.choice(_CLOSERS)}"

    def _extra(self) -> str:
        rnd = self._random
        kind = rnd.random()
        if kind < 0.4:
            return "#" + rnd.choice(_TAGS)
        if kind < 0.7:
            return "@" + rnd.choice(self.authors)
        return rnd.choice(_EMOJI)


def _author_names(rnd: random.Random, count: int) -> tuple[str, ...]:
    # `name_word`, plus `_<index>` on a repeat (no word holds "_", so that is unique); at
    # most 6 + 1 + 7 + 1 + 6 = 21 characters, well inside the api's 32 of [A-Za-z0-9_].
    names: list[str] = []
    seen: set[str] = set()
    for i in range(count):
        name = f"{rnd.choice(_FIRST)}_{rnd.choice(_SECOND)}"
        if name in seen:
            name += f"_{i}"
        seen.add(name)
        names.append(name)
    return tuple(names)
