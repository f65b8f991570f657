"""The three processes: what each opens, in which order, and how it stops."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

import anyio
import psycopg

from feedsvc import kafka, schema, tracing
from feedsvc.config import Settings
from feedsvc.http.admission import Admission
from feedsvc.http.app import ApiParts, create_app
from feedsvc.http.health import DatabaseWatch
from feedsvc.http.idempotency import KeyClaims
from feedsvc.http.submit import Submitter
from feedsvc.ingest.deadletters import DeadLetters
from feedsvc.ingest.writer import Writer
from feedsvc.logs import written_by_a_thread
from feedsvc.messages import FEED_RESTART_KEY, FeedRestart, encode_feed_restart
from feedsvc.metrics import Metrics, multiprocess_dir, prepare_multiprocess, worker_exited
from feedsvc.metrics.families import resolved_lag_s
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.reader import CommittedReader
from feedsvc.serving.server import Server, uvicorn_config
from feedsvc.serving.sockets import listener, reserve_port
from feedsvc.store import MessageStore, open_pool
from feedsvc.workers import Supervisor, worker_count

log = logging.getLogger("feedsvc")


def run(role: str, settings: Settings) -> int:
    """Run a role on the event loop; returns the process exit code."""
    if role == "api":
        return serve_api(settings)
    main = {"writer": writer, "setup": setup}[role]
    anyio.run(main, settings, backend_options={"use_uvloop": True})
    return 0


def serve_api(settings: Settings) -> int:
    """The api: one process, or `FEED_API_WORKERS` worker processes sharing the port.

    Note: each worker is a whole api (workers.py); every limit of the api's settings
    (in-flight posts, feed streams, the database pool) is per worker.
    """
    count = worker_count(settings.api_workers)
    if count == 1:

        def listen() -> socket.socket:
            return listener(settings.host, settings.port, settings.socket_sndbuf, reuse_port=False)

        with written_by_a_thread():
            anyio.run(api, settings, listen, backend_options={"use_uvloop": True})
        return 0
    reserved = reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]

    def work(slot: int) -> int:
        reserved.close()

        def listen() -> socket.socket:
            return listener(settings.host, port, settings.socket_sndbuf, reuse_port=True)

        with written_by_a_thread():
            anyio.run(api, settings, listen, backend_options={"use_uvloop": True})
        return 0

    # Before the first fork, so /metrics on any worker sums every worker's series; a dead
    # worker's gauges are dropped (docs/metrics.md#several-api-workers). An operator's
    # directory is used as given; else one of our own, removed at exit.
    with reserved, _metrics_dir() as shared:
        prepare_multiprocess(shared)
        log.info("api starting workers", extra={"workers": count, "port": port})
        return Supervisor(count, work, on_death=worker_exited).run()


@contextlib.contextmanager
def _metrics_dir() -> Iterator[str]:
    given = multiprocess_dir()
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="feedsvc-metrics-") as own:
        yield own


async def api(settings: Settings, listen: Callable[[], socket.socket]) -> None:
    """Serve HTTP until SIGTERM, then let open requests finish within the grace period.

    Note: `listen` is called once everything is open and the feed has caught up, so a
    worker takes connections only when it can serve them.
    """
    metrics = Metrics()
    admission = Admission(settings.max_inflight, settings.max_backlog)
    async with (
        # First: it instruments the database client, which must be made after it.
        tracing.opened(tracing.API, os.environ) as traced,
        open_pool(settings, "api") as pool,
        kafka.producer(settings, linger_ms=2) as producer,
        kafka.admin(settings) as admin_client,
        kafka.consumer(settings) as offsets,
        anyio.create_task_group() as tasks,
    ):
        progress = kafka.WriterProgress(admin_client, offsets)
        tasks.start_soon(admission.watch_backlog, progress, settings.backlog_refresh_s)
        tasks.start_soon(admission.watch_loop)
        reader = CommittedReader(
            settings, stored_to_published=metrics.feed.stored_to_published.observe
        )
        fanout: Fanout = await tasks.start(reader.run)
        _feed_metrics(metrics, reader, fanout)
        metrics.follow(metrics.posts.api_ready, lambda: _ready(admission, reader))
        tasks.start_soon(metrics.refresh_every)
        store = MessageStore(pool)
        claims = KeyClaims(store)
        tasks.start_soon(claims.run)
        database = DatabaseWatch(store)
        tasks.start_soon(database.run)
        metrics.follow(metrics.health.database_reachable, lambda: int(database.reachable))
        parts = ApiParts(
            settings=settings,
            store=store,
            database=database,
            submitter=Submitter(
                producer,
                admission,
                metrics,
                settings.kafka_timeout_s,
                claims,
                body_timeout_s=settings.body_timeout_s,
                tracing=traced,
            ),
            admission=admission,
            metrics=metrics,
            reader=reader,
            fanout=fanout,
        )
        config = uvicorn_config(create_app(parts, traced), settings)
        # uvicorn re-raises the signal it caught once it has shut down; a no-op
        # handler lets our own `async with` blocks close Kafka and the pool after it.
        signal.signal(signal.SIGTERM, lambda *_: None)
        # Everything opened so far lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (seconds on a loaded machine).
        # https://docs.python.org/3/library/gc.html#gc.freeze
        gc.freeze()
        sock = listen()
        url = f"http://{settings.host}:{sock.getsockname()[1]}"
        log.info("api listening", extra={"url": url, "pid": os.getpid()})
        await Server(fanout, config, sock, settings, metrics).serve()
        tasks.cancel_scope.cancel()
    log.info("api stopped", extra={"pid": os.getpid()})


def _feed_metrics(metrics: Metrics, reader: CommittedReader, fanout: Fanout) -> None:
    feed = metrics.feed
    metrics.follow(feed.subscribers, lambda: fanout.subscribers)
    metrics.follow(feed.head_offset, lambda: fanout.head)
    metrics.follow(feed.relay_lag, lambda: resolved_lag_s(fanout.resolved))
    metrics.follow(feed.replays, lambda: reader.replays)
    metrics.follow(feed.replays_max, lambda: reader.max_replays)
    metrics.count(feed.events, lambda: reader.published)
    metrics.count(feed.sent, lambda: fanout.sent)
    metrics.count(feed.lag_cuts, lambda: fanout.lag_cuts)
    metrics.count(feed.replays_refused, lambda: reader.replays_refused)
    metrics.count(feed.restarts, lambda: reader.restarts)


def _ready(admission: Admission, reader: CommittedReader) -> float:
    """1.0 when /health/ready's Kafka and feed checks pass (http/health.py), else 0.0."""
    fresh = time.monotonic() - admission.last_refresh < 10
    return float(admission.kafka_reachable and fresh and reader.ready)


async def writer(settings: Settings) -> None:
    """Store submitted messages until SIGTERM; the batch in hand is committed first."""
    stopping = anyio.Event()
    metrics = Metrics()
    started: list[Writer] = []  # for /health/ready, which answers from the start
    async with (
        metrics.served(
            settings.host, settings.writer_metrics_port, lambda: any(w.ready for w in started)
        ),
        # Before the clients it instruments (the database's and, here, Kafka's).
        tracing.opened(tracing.WRITER, os.environ, kafka_spans=True) as traced,
        open_pool(settings, "writer") as pool,
        kafka.producer(settings) as dlq,
        kafka.writer_consumer(settings) as consumer,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_stop_on_signal, stopping)
        log.info("writer consuming", extra={"topic": kafka.SUBMITTED, "group": kafka.WRITER_GROUP})
        work = Writer(
            consumer,
            MessageStore(pool),
            DeadLetters(dlq, settings.kafka_timeout_s, metrics),
            metrics,
            batch=settings.writer_batch,
            linger_ms=settings.writer_linger_ms,
            kafka_timeout_s=settings.kafka_timeout_s,
            tracing=traced,
        )
        started.append(work)
        await work.run(stopping)
        tasks.cancel_scope.cancel()
    log.info("writer stopped")


async def _stop_on_signal(stopping: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            stopping.set()
            return


async def setup(settings: Settings) -> None:
    """Create what feedsvc needs; running it again changes nothing."""
    async with kafka.admin(settings) as admin_client:
        created = await kafka.ensure_topics(admin_client, settings)
    log.info("topics ready", extra={"topics_created": created})
    await anyio.to_thread.run_sync(_setup_database, settings)


def _setup_database(settings: Settings) -> None:
    _wait_for_database(settings.database_url)
    schema.ensure_database(settings.database_url)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        schema.ensure_schema(conn)
        if not schema.is_cockroach(conn):
            log.info("schema ready (PostgreSQL: the changefeed stand-in feeds the relay)")
            return
        schema.configure_cluster(conn, settings.cockroach_license, settings.cockroach_organization)
        sink = schema.changefeed_sink(settings.changefeed_sink, kafka.COMMITTED)

        def on_gap(marker: FeedRestart) -> None:
            anyio.from_thread.run(_write_restart_marker, settings, marker)

        changefeed = schema.ensure_changefeed(conn, sink, on_gap)
        log.info("schema ready", extra={"changefeed": changefeed})


async def _write_restart_marker(settings: Settings, marker: FeedRestart) -> None:
    """Put the gap marker into `messages.committed`, acknowledged, before the new changefeed."""
    async with kafka.producer(settings) as producer:
        await producer.send_and_wait(
            kafka.COMMITTED, encode_feed_restart(marker), key=FEED_RESTART_KEY, partition=0
        )


def _wait_for_database(conninfo: str, timeout_s: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(conninfo, connect_timeout=5).close()
            return
        except psycopg.OperationalError as exc:
            if "does not exist" in str(exc):
                return  # the server answers; ensure_database creates it
            if time.monotonic() > deadline:
                raise
            log.warning("database not reachable yet", extra={"error": str(exc).strip()})
            time.sleep(1)
