"""The three processes: what each opens, in which order, and how it stops."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import anyio
import psycopg
import uvicorn

from feedsvc import kafka, schema
from feedsvc.config import Settings
from feedsvc.http.admission import Admission
from feedsvc.http.app import ApiParts, create_app
from feedsvc.http.submit import Submitter
from feedsvc.ingest.deadletters import DeadLetters
from feedsvc.ingest.writer import Writer
from feedsvc.messages import FEED_RESTART_KEY, FeedRestart, encode_feed_restart
from feedsvc.metrics import Metrics
from feedsvc.metrics.families import resolved_lag_s
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.reader import CommittedReader
from feedsvc.store import MessageStore, open_pool

log = logging.getLogger("feedsvc")


def run(role: str, settings: Settings) -> int:
    """Run a role on the event loop; returns the process exit code."""
    main = {"api": api, "writer": writer, "setup": setup}[role]
    anyio.run(main, settings, backend_options={"use_uvloop": True})
    return 0


async def api(settings: Settings) -> None:
    """Serve HTTP until SIGTERM, then let open requests finish within the grace period."""
    metrics = Metrics()
    admission = Admission(settings.max_inflight, settings.max_backlog)
    async with (
        open_pool(settings, "api") as pool,
        kafka.producer(settings, linger_ms=2) as producer,
        kafka.admin(settings) as admin_client,
        kafka.consumer(settings) as offsets,
        anyio.create_task_group() as tasks,
    ):
        progress = kafka.WriterProgress(admin_client, offsets)
        tasks.start_soon(admission.watch_backlog, progress, settings.backlog_refresh_s)
        reader = CommittedReader(settings)
        fanout: Fanout = await tasks.start(reader.run)
        _feed_metrics(metrics, reader, fanout)
        tasks.start_soon(metrics.refresh_every)
        parts = ApiParts(
            settings=settings,
            store=MessageStore(pool),
            submitter=Submitter(producer, admission, metrics, settings.kafka_timeout_s),
            admission=admission,
            metrics=metrics,
            reader=reader,
            fanout=fanout,
        )
        server = _Server(
            fanout,
            uvicorn.Config(
                create_app(parts),
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                # Without it uvicorn waits forever on open SSE streams at SIGTERM.
                timeout_graceful_shutdown=int(settings.shutdown_grace_s),
            ),
        )
        # uvicorn re-raises the signal it caught once it has shut down; a no-op
        # handler lets our own `async with` blocks close Kafka and the pool after it.
        signal.signal(signal.SIGTERM, lambda *_: None)
        log.info("api listening", extra={"url": f"http://{settings.host}:{settings.port}"})
        await server.serve(sockets=[_listen(settings)])
        tasks.cancel_scope.cancel()
    log.info("api stopped")


class _Server(uvicorn.Server):
    """uvicorn that, on SIGTERM, first ends every feed stream so clients reconnect elsewhere."""

    def __init__(self, fanout: Fanout, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.fanout = fanout

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Runs in the signal handler, between two steps of the event loop's thread;
        # closing only sets flags and wakes waiters.
        self.fanout.close()


def _listen(settings: Settings) -> socket.socket:
    """The api's listening socket; accepted connections inherit its send buffer size.

    Note: a feed client that stops reading is detected only once our writes to it
    block, i.e. once its socket's send buffer is full; a fixed buffer (instead of
    autotuning up to 4 MiB) makes that prompt and bounds the memory it pins.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    if settings.socket_sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_sndbuf)
    sock.set_inheritable(True)
    return sock


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


async def writer(settings: Settings) -> None:
    """Store submitted messages until SIGTERM; the batch in hand is committed first."""
    stopping = anyio.Event()
    metrics = Metrics()
    async with (
        metrics.served(settings.host, settings.writer_metrics_port),
        open_pool(settings, "writer") as pool,
        kafka.producer(settings) as dlq,
        kafka.writer_consumer(settings) as consumer,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_stop_on_signal, stopping)
        log.info("writer consuming", extra={"topic": kafka.SUBMITTED, "group": kafka.WRITER_GROUP})
        await Writer(
            consumer,
            MessageStore(pool),
            DeadLetters(dlq, settings.kafka_timeout_s, metrics),
            metrics,
            batch=settings.writer_batch,
            linger_ms=settings.writer_linger_ms,
            kafka_timeout_s=settings.kafka_timeout_s,
        ).run(stopping)
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
