"""The reference in docs/ matches the code: every setting with its default, every metric with
its type and labels, every bot flag; and no page names a setting or a metric that does not
exist."""

from __future__ import annotations

import re
from functools import cached_property

import msgspec
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

import bot.config
from feedsvc.config import PREFIX, Settings
from feedsvc.metrics import Metrics
from tests.unit.markdown import DOCS, ROOT, needs_the_repository, table_rows, tracked_texts

pytestmark = needs_the_repository

CONFIGURATION = DOCS / "configuration.md"
METRICS = DOCS / "metrics.md"
BOT = DOCS / "bot.md"
SETTINGS_HEADER = "| variable | default | why |"
METRICS_HEADER = "| metric | type | labels | what |"
BOT_HEADER = "| flag | variable | default | meaning |"
# The files that read FEEDSVC_* knobs, each with its default: `${NAME-default}`,
# `${NAME:-default}`, or `${NAME}` for one without.
KNOB_FILES = ("compose.yaml", "proxy/haproxy.cfg", "run.sh", "stop.sh", "test.sh", "scripts/")
KNOB = re.compile(r"\$\{(FEEDSVC_[A-Z0-9_]+)(?::?-([^}]*))?\}")
NONE = "(none)"


def _pages() -> dict[str, str]:
    """README and every page of docs/: where a reader looks a setting or a metric up."""
    pages = {"README.md": (ROOT / "README.md").read_text()}
    pages.update({f"docs/{page.name}": page.read_text() for page in DOCS.glob("*.md")})
    return pages


def _unquote(cell: str) -> str:
    return cell[1:-1] if cell.startswith("`") and cell.endswith("`") else cell


def _settings_table(prefix: str) -> dict[str, str]:
    """The default column of configuration.md's rows for variables named `prefix`*."""
    page = CONFIGURATION.read_text()
    stack = page.split("## The stack's settings")[1]
    rows = table_rows(page, SETTINGS_HEADER) + table_rows(stack, SETTINGS_HEADER)
    return {
        name: row[1]
        for row in rows
        if re.fullmatch(rf"{prefix}[A-Z0-9_]+", name := _unquote(row[0]))
    }


def test_every_feed_setting_is_documented_with_its_default() -> None:
    """Each FEED_* setting has a row in configuration.md giving the code's default, and no row
    is for a setting the code does not read."""
    rows = _settings_table("FEED_")
    fields = {PREFIX + f.name.upper(): f.default for f in msgspec.structs.fields(Settings)}
    assert set(rows) == set(fields)
    for name, default in fields.items():
        shown = rows[name]
        if default in ("", None):
            # Unset, or derived from another setting: said in words, e.g. (= `FEED_...`).
            assert shown.startswith("("), (name, shown)
        else:
            assert _unquote(shown) == str(default), (name, shown, default)


def test_no_page_names_a_feed_setting_that_does_not_exist() -> None:
    """README and docs/ name only FEED_* settings the code reads."""
    fields = {PREFIX + f.name.upper() for f in msgspec.structs.fields(Settings)}
    for name, text in _pages().items():
        # FEED_URL is what `scripts/local-stack up` prints, not a setting.
        mentioned = set(re.findall(r"\bFEED_[A-Z0-9_]+\b", text)) - {"FEED_URL"}
        assert mentioned <= fields, f"{name} names settings that do not exist: {mentioned - fields}"


def _knobs() -> dict[str, str]:
    """Each FEEDSVC_* knob the stack's files read, with its default ('' for none)."""
    knobs: dict[str, str] = {}
    for name, text in tracked_texts().items():
        if name.startswith(KNOB_FILES) or name in KNOB_FILES:
            for knob, default in KNOB.findall(text):
                assert knobs.setdefault(knob, default) == default, (name, knob, default)
    return knobs


def test_every_stack_knob_is_documented_with_its_default() -> None:
    """Each FEEDSVC_* knob of compose, the proxy and the scripts has a row in configuration.md
    giving its default, and no row is for a knob nothing reads."""
    rows = _settings_table("FEEDSVC_")
    knobs = _knobs()
    assert {"FEEDSVC_API_REPLICAS", "FEEDSVC_PROXY_MAXCONN", "FEEDSVC_START_TIMEOUT"} <= set(knobs)
    assert set(rows) == set(knobs)
    for name, default in knobs.items():
        assert rows[name] == (f"`{default}`" if default else NONE), (name, rows[name], default)


def test_no_page_names_a_stack_knob_that_does_not_exist() -> None:
    """README and docs/ name only FEEDSVC_* variables that some file of the repository reads."""
    files = {n: t for n, t in tracked_texts().items() if not n.endswith(".md")}
    known = {name for text in files.values() for name in re.findall(r"FEEDSVC_[A-Z0-9_]+", text)}
    for name, text in _pages().items():
        mentioned = set(re.findall(r"\bFEEDSVC_[A-Z0-9_]+\b", text)) - {"FEEDSVC_TEST_"}
        assert mentioned <= known, f"{name} names variables nothing reads: {mentioned - known}"


def _families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric any feedsvc process can expose: its sample name, its type (with a gauge's
    multiprocess mode, as the table shows it) and its labels."""
    metrics = Metrics()
    found = {}
    for attribute, value in vars(Metrics).items():
        if not isinstance(value, cached_property):
            continue
        family = getattr(metrics, attribute)
        for metric in vars(family).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            name = metric._name
            if isinstance(metric, Counter):
                kind, name = "counter", name + "_total"
            elif isinstance(metric, Gauge):
                kind = f"gauge ({metric._multiprocess_mode})"
            else:
                assert isinstance(metric, Histogram), metric
                kind = "histogram"
            found[name] = (kind, tuple(metric._labelnames))
    return found


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    """Each metric of feedsvc.metrics has a row in metrics.md with its type, multiprocess mode
    and labels, and no row is for a metric the code does not define."""
    families = _families()
    assert len(families) > 30, "the metric families were not all found"
    rows = {
        _unquote(row[0]): (row[1], tuple(re.findall(r"`([a-z_]+)`", row[2])))
        for row in table_rows(METRICS.read_text(), METRICS_HEADER)
    }
    assert set(rows) == set(families), set(rows) ^ set(families)
    for name, (kind, labels) in families.items():
        assert rows[name] == (kind, labels), (name, rows[name], kind, labels)


def test_no_page_names_a_metric_that_does_not_exist() -> None:
    """README and docs/ name only metrics feedsvc defines (a family's samples included)."""
    names = set(_families())
    samples = names | {f"{n}_{s}" for n in names for s in ("bucket", "sum", "count")}
    for page, text in _pages().items():
        # `feedsvc_posts_*` names a group, not a metric.
        mentioned = set(re.findall(r"\bfeedsvc_[a-z0-9_]*[a-z0-9]\b", text))
        unknown = mentioned - samples
        assert not unknown, f"{page} names metrics that do not exist: {unknown}"


def test_every_bot_setting_is_documented() -> None:
    """Each bot setting has a row in bot.md with its flag and its variable, and no other row."""
    names = {f.name for f in msgspec.structs.fields(bot.config.Settings)}
    # --reqs-per-min is --rate in other units, not a setting of its own.
    names.add("reqs_per_min")
    expected = {(f"`--{n.replace('_', '-')}`", f"`{bot.config.PREFIX}{n.upper()}`") for n in names}
    rows = {(row[0], row[1]) for row in table_rows(BOT.read_text(), BOT_HEADER)}
    assert rows == expected


def test_the_layout_names_every_module() -> None:
    """development.md's layout names every module of feedsvc/ and devstack/."""
    page = (DOCS / "development.md").read_text()
    layout = page.split("## Layout", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[\w.]+", layout))
    modules = {
        f"{path.parent.name}/{path.stem}"
        for package in ("feedsvc", "devstack")
        for path in (ROOT / package).rglob("*.py")
        if path.stem != "__init__" and "__pycache__" not in path.parts
    }
    unnamed = sorted(m for m in modules if not {m.split("/")[1], m.split("/")[1] + ".py"} & words)
    assert not unnamed, f"modules the layout does not name: {unnamed}"
