"""Imports inside `feedsvc/` and `bot/` point one way, as the data flows.

Data flows http → kafka → ingest → store → changefeed → relay → http, and the
composition roots wire it together (ARCHITECTURE.md#layers). Every module of `feedsvc`
sits in one layer and imports only from its own layer or the ones below it:

0. foundation: `messages` (every wire shape) and `config` (the settings). They import
   nothing else of `feedsvc`.
1. adapters: `kafka`, `store`, `schema` (the brokers and the database), `logs`, `metrics`,
   `tracing`.
2. stages: `http`, `ingest`, `relay` (the pipeline steps).
3. roots: `roles`, `__main__`, `workers` and `http.app`, which start the processes,
   open the resources and wire the stages; nothing below a root imports it.

Among the stages, and of the database's SQL:

- `ingest` imports neither `http` nor `relay` (it only consumes Kafka and writes rows);
- `relay` imports neither `http` nor `ingest` (it reads the changefeed topic; http
  serves it, never the reverse);
- `http` imports nothing of `ingest` (the api hands records to Kafka, not to the writer);
- `schema` (the SQL, CockroachDB's statements) is imported only by `store`, its one
  interface, and by the roots that run setup: a stage reaches the database through
  `feedsvc.store`.

The bot is a client of the api: of `feedsvc` it imports only the wire shapes
(`messages`) and the logging setup (`logs`), and nothing in `feedsvc` imports it.
Imports inside functions and under `TYPE_CHECKING` count like the others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FOUNDATION, ADAPTER, STAGE, ROOT_LAYER = 0, 1, 2, 3
LAYERS: dict[str, int] = {
    "feedsvc.messages": FOUNDATION,
    "feedsvc.config": FOUNDATION,
    "feedsvc.kafka": ADAPTER,
    "feedsvc.store": ADAPTER,
    "feedsvc.schema": ADAPTER,
    "feedsvc.logs": ADAPTER,
    "feedsvc.metrics": ADAPTER,
    "feedsvc.tracing": ADAPTER,  # spans, when on; imported by the stages it traces
    "feedsvc.http": STAGE,
    "feedsvc.ingest": STAGE,
    "feedsvc.relay": STAGE,
    "feedsvc.http.app": ROOT_LAYER,
    "feedsvc.roles": ROOT_LAYER,
    "feedsvc.workers": ROOT_LAYER,  # the api's worker processes, started by roles
    "feedsvc.serving": ROOT_LAYER,  # the api worker's socket, connections and limits
    "feedsvc.__main__": ROOT_LAYER,
}
"""A module's layer is that of the longest name here it is, or is inside of."""

STAGES_APART: dict[str, set[str]] = {
    "feedsvc.ingest": {"feedsvc.http", "feedsvc.relay"},
    "feedsvc.relay": {"feedsvc.http", "feedsvc.ingest"},
    "feedsvc.http": {"feedsvc.ingest"},
}
BOT_USES = ("feedsvc.messages", "feedsvc.logs")
SQL = "feedsvc.schema"
SQL_IMPORTERS = {"feedsvc.store", "feedsvc.roles"}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer(module: str) -> int | None:
    """The layer of a `feedsvc` module; None for the package itself or an unknown one."""
    found = [name for name in LAYERS if _within(module, name)]
    return LAYERS[max(found, key=len)] if found else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in the file, at any depth, absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from feedsvc import kafka` imports the module feedsvc.kafka.
                full = f"{base}.{alias.name}"
                yield node.lineno, full if is_module(full) else base


def edges(package: str) -> Iterator[tuple[str, int, str]]:
    """(importer, line, imported) for every module of `package`."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, target in imports(path):
            yield module_name(path), line, target


def violations() -> list[str]:
    """Every import of `feedsvc` and `bot` that breaks a rule of the module docstring."""
    found: list[str] = []
    for importer, line, target in [*edges("feedsvc"), *edges("bot")]:
        where = f"{importer}:{line} imports {target}"
        if importer.startswith("bot"):
            if _within(target, "feedsvc") and not any(_within(target, u) for u in BOT_USES):
                found.append(f"{where}: the bot uses only {' and '.join(BOT_USES)} of feedsvc")
            continue
        if _within(target, "bot"):
            found.append(f"{where}: feedsvc never imports the bot")
            continue
        if not _within(target, "feedsvc") or target == "feedsvc":
            continue
        mine, theirs = layer(importer), layer(target)
        if mine is None or theirs is None:
            found.append(f"{where}: put the new module in a layer of LAYERS")
            continue
        if theirs > mine:
            found.append(f"{where}: layer {mine} imports layer {theirs}, above it")
        for stage, apart in STAGES_APART.items():
            if _within(importer, stage) and any(_within(target, a) for a in apart):
                found.append(f"{where}: {stage} never imports {target.split('.')[1]}")
        if _within(target, SQL) and not _within(importer, SQL) and importer not in SQL_IMPORTERS:
            found.append(f"{where}: the SQL is reached through feedsvc.store")
    return found


def test_imports_follow_the_layers() -> None:
    """No module of feedsvc or bot imports against the rules in this module's docstring."""
    assert violations() == []


def test_the_walk_sees_the_imports_it_judges() -> None:
    """The walk finds known imports, in-function ones included, so a pass means something."""
    found = {(importer, target) for importer, _, target in edges("feedsvc")}
    assert ("feedsvc.http.submit", "feedsvc.kafka") in found
    assert ("feedsvc.store", "feedsvc.schema") in found  # `from feedsvc import schema`
    assert ("feedsvc.__main__", "feedsvc.roles") in found  # inside a function
    assert ("bot.poster", "feedsvc.messages") in {
        (importer, target) for importer, _, target in edges("bot")
    }


def test_every_feedsvc_module_has_a_layer() -> None:
    """A new module is placed in a layer before the rules can judge it."""
    unplaced = [
        module_name(path)
        for path in (ROOT / "feedsvc").rglob("*.py")
        if module_name(path) != "feedsvc" and layer(module_name(path)) is None
    ]
    assert unplaced == []
