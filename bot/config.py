"""Settings of the bot, read once from command-line flags and `BOT_*` environment variables."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import httpx
import msgspec

from bot.pacing import MAX_RATE

PREFIX = "BOT_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """One bot's configuration; each field is the flag `--<name>` or the variable `BOT_<NAME>`."""

    api_url: str = "http://127.0.0.1:8000"
    """The feedsvc api, reached like any client; compose points it at the api service."""

    rate: float = 1.0
    """Messages per second; fractional is fine (0.2 = one every 5 s), 0 = idle until changed."""

    concurrency: int = 16
    """Requests in flight at most; must exceed rate x api latency for the rate to be reached."""

    authors: int = 50
    """Distinct authors the messages are spread over."""

    delay: float = 0.0
    """Seconds to wait before the first post, e.g. while the api warms up."""

    count: int | None = None
    """Stop after this many messages were answered for good (accepted or refused); none = never."""

    duration: float | None = None
    """Stop after posting for this many seconds (the delay not included); none = never."""

    control_host: str = "127.0.0.1"
    """Listen address of the control endpoint; compose sets 0.0.0.0 inside the container."""

    control_port: int = 8001
    """Port of the control endpoint (`GET/PUT /rate`, `GET /stats`); 0 lets the OS pick one."""

    stats_interval: float = 5.0
    """Seconds between stats log lines: often enough to watch, rare enough to read."""

    seed: int | None = None
    """Seed of the message generator, to replay the same messages; none = a fresh one."""

    timeout: float = 10.0
    """Seconds one POST may take; the api answers within its Kafka timeout (5 s) or fails."""

    log_level: str = "INFO"
    """Python logging level name."""


class ConfigError(ValueError):
    """A flag or variable that is unknown or out of range; the message names it."""


class _Parser(argparse.ArgumentParser):
    # argparse exits by itself on a bad flag; raising lets `load_settings` stay a pure function.
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


# (flag name, converter, lowest allowed, highest allowed); every value is checked the same way
# whether it came from a flag or the environment.
_NUMBERS: dict[str, tuple[type[int] | type[float], float, float]] = {
    "rate": (float, 0, MAX_RATE),
    "reqs_per_min": (float, 0, MAX_RATE * 60),
    "concurrency": (int, 1, 10_000),
    "authors": (int, 1, 100_000),
    "delay": (float, 0, 86_400),
    "count": (int, 1, 10**12),
    "duration": (float, 0.001, 10**9),
    "control_port": (int, 0, 65_535),
    "stats_interval": (float, 0.01, 86_400),
    "seed": (int, -(2**63), 2**63 - 1),
    "timeout": (float, 0.01, 3_600),
}
_TEXTS = ("api_url", "control_host", "log_level")
_NAMES = (*_NUMBERS, *_TEXTS)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser() -> _Parser:
    parser = _Parser(prog="python -m bot", description="Post realistic messages to feedsvc.")
    for name in _NAMES:
        # Every value arrives as text so flags and variables go through one checker.
        parser.add_argument(_flag(name), dest=name, metavar=name.upper(), default=None)
    return parser


def _number(source: str, raw: str, name: str) -> int | float:
    kind, low, high = _NUMBERS[name]
    try:
        value: int | float = kind(raw)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{source} must be {noun}, got {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{source} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def _text(source: str, raw: str, name: str) -> str:
    if name == "log_level":
        if raw.upper() not in LOG_LEVELS:
            raise ConfigError(f"{source} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
        return raw.upper()
    if name == "api_url":
        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL:
            url = httpx.URL("")
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"{source} must be an http(s) URL such as http://api:8000, got {raw!r}"
            )
        return raw.rstrip("/")
    if not raw:
        raise ConfigError(f"{source} must not be empty")
    return raw


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build the settings from flags and environment (flags win); fails naming the bad input."""
    flags = vars(_parser().parse_args(list(argv)))
    for key in environ:
        if key.startswith(PREFIX) and key[len(PREFIX) :].lower() not in _NAMES:
            raise ConfigError(f"{key} is not a setting of the bot")
    raw: dict[str, tuple[str, str]] = {}  # name -> (where it came from, text)
    for name in _NAMES:
        if flags[name] is not None:
            raw[name] = (_flag(name), flags[name])
        elif environ.get(PREFIX + name.upper(), "") != "":
            raw[name] = (PREFIX + name.upper(), environ[PREFIX + name.upper()])
    # --reqs-per-min is --rate in other units: a flag beats a variable, two of a kind clash.
    if "rate" in raw and "reqs_per_min" in raw:
        rate_src, per_min_src = raw["rate"][0], raw["reqs_per_min"][0]
        if rate_src.startswith("--") == per_min_src.startswith("--"):
            raise ConfigError(f"{rate_src} and {per_min_src} set the same speed; give one")
        del raw["reqs_per_min" if rate_src.startswith("--") else "rate"]
    values: dict[str, Any] = {}
    for name, (source, text) in raw.items():
        convert = _number if name in _NUMBERS else _text
        values[name] = convert(source, text, name)
    if "reqs_per_min" in values:
        values["rate"] = values.pop("reqs_per_min") / 60
    return Settings(**values)
