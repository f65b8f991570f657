"""`POST /messages`: validate, admit, hand to Kafka, answer 202 once Kafka has it."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import psycopg
from aiokafka.errors import KafkaError
from litestar import Request, Response, post
from litestar.di import NamedDependency

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.contract import SubmitOperation
from feedsvc.http.errors import problem
from feedsvc.http.idempotency import Earlier, KeyLedger, KeyReused
from feedsvc.kafka import SUBMITTED, RenewingProducer
from feedsvc.messages import (
    MAX_BODY_BYTES,
    Accepted,
    InvalidSubmission,
    Message,
    decode_submission,
    encode,
    new_message,
)
from feedsvc.metrics import Metrics
from feedsvc.store import MessageStore

log = logging.getLogger(__name__)

# Printable ASCII, as in the IETF Idempotency-Key draft's examples (UUIDs, tokens).
_IDEMPOTENCY_KEY = re.compile(r"\A[\x21-\x7e]{1,255}\Z")


class Submitter:
    """Turns an admitted message into a Kafka record acknowledged by every replica.

    Note: every request has a deadline `timeout_s` after its arrival, and all of
    its waits share it (the Idempotency-Key lookup at most a fifth of it, the send
    what is left), so a POST is answered within `timeout_s` whatever is down.
    """

    def __init__(
        self,
        producer: RenewingProducer,
        admission: Admission,
        metrics: Metrics,
        timeout_s: float,
        keys: MessageStore | None = None,
    ) -> None:
        self.producer = producer
        self.keys = keys
        """Where the handler looks up an Idempotency-Key's earlier message."""
        self.admission = admission
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.ledger = KeyLedger()
        metrics.counter("feedsvc_posts_accepted_total", "Messages acknowledged by Kafka (202).")
        metrics.counter("feedsvc_posts_refused_total", "POSTs refused, by status and reason.")
        metrics.counter(
            "feedsvc_idempotency_unchecked_total",
            "Keyed POSTs sent without checking the key: the database did not answer in time.",
        )
        metrics.gauge(
            "feedsvc_posts_inflight",
            "POSTs admitted and not answered yet (key lookup, Kafka send).",
            lambda: admission.inflight,
        )
        metrics.gauge(
            "feedsvc_event_loop_lag_seconds",
            "How late the api's event loop runs timers: how long ready work waits its turn.",
            lambda: admission.loop_lag_s,
        )
        metrics.gauge(
            "feedsvc_writer_backlog",
            "Records the writer has not stored yet.",
            lambda: admission.backlog,
        )

    def deadline(self) -> float:
        """When a request arriving now must have its answer, on the event loop's clock."""
        # A little is kept back for writing the answer itself.
        return asyncio.get_running_loop().time() + self.timeout_s - min(0.2, self.timeout_s / 10)

    async def submit(
        self, message: Message, deadline: float, keys: MessageStore | None = None
    ) -> Message:
        """Send one message; returns it as accepted, or raises `Refusal` or `KeyReused`.

        With `keys` (the message has an Idempotency-Key) an earlier message with the
        same id is looked for, here and then in `keys`: same text, the earlier one is
        the answer (sent again only if Kafka has not acknowledged it yet); another
        text, `KeyReused`.

        Note: two requests with one key and different texts that both miss each
        other (on different api processes, before the writer stored either) both
        get 202, and the database keeps the one the writer stores first. A send that
        times out may still reach Kafka later, and then the message is stored
        although the client saw 503; a retry with the same key gets it stored once.
        """
        self.admission.check()
        self.admission.enter()
        try:
            if keys is not None:
                earlier = await self._earlier(message, keys, deadline)
                if earlier is not None:
                    if earlier.message.text != message.text:
                        raise KeyReused("Idempotency-Key was already used for a different text")
                    if earlier.acknowledged:
                        return earlier.message
                    message = earlier.message
                self.ledger.sending(message)
            await self._send(message, deadline)
        finally:
            self.admission.leave()
        if keys is not None:
            self.ledger.acknowledged(message)
        return message

    async def _earlier(
        self, message: Message, keys: MessageStore, deadline: float
    ) -> Earlier | None:
        known = self.ledger.get(message.id)
        if known is not None:
            return known
        loop = asyncio.get_running_loop()
        until = min(deadline, loop.time() + self.timeout_s / 5)
        # Not `asyncio.timeout`: a query cancelled by psycopg first asks the server to
        # cancel it and waits for that (seconds, when the server does not answer), so
        # a lookup that is late is left to end by itself, and the request goes on.
        lookup = asyncio.ensure_future(keys.get(message.id))
        try:
            await asyncio.wait({lookup}, timeout=max(until - loop.time(), 0))
        finally:
            late = not lookup.done()
            if late:
                lookup.cancel()
                lookup.add_done_callback(_forget)
        if late:
            self._unchecked("the database did not answer in time")
            return None
        if (error := lookup.exception()) is not None:
            if not isinstance(error, psycopg.Error):
                raise error
            self._unchecked(repr(error))
            return None
        stored = lookup.result()
        return None if stored is None else Earlier(stored, acknowledged=True)

    def _unchecked(self, why: str) -> None:
        # Sending unchecked keeps posting available while the database is down; the
        # insert-if-absent still stores the id once.
        self.metrics.inc("feedsvc_idempotency_unchecked_total")
        log.warning("idempotency key not checked", extra={"error": why})

    async def _send(self, message: Message, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        given = deadline - loop.time()
        try:
            # asyncio's own timeout: anyio's CancelScope cost ~12% of the api's CPU here.
            async with asyncio.timeout_at(deadline):
                await self.producer.send_and_wait(
                    SUBMITTED, encode(message), key=message.author.encode()
                )
        except (TimeoutError, KafkaError) as exc:
            # A send left too little time by the rest of the request, or late because
            # our own event loop is, says nothing of Kafka.
            if not isinstance(exc, TimeoutError) or (
                given >= self.timeout_s / 2 and not self.admission.overloaded
            ):
                self.admission.kafka_failed()
            log.warning("kafka send failed", extra={"error": repr(exc), "id": str(message.id)})
            raise Refusal(503, "Kafka did not acknowledge the message in time", 2) from None
        self.admission.kafka_ok()


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned lookup's outcome, so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


@post(
    "/messages",
    request_max_body_size=MAX_BODY_BYTES,
    status_code=202,
    operation_class=SubmitOperation,
)
async def post_message(
    request: Request[Any, Any, Any],
    submitter: NamedDependency[Submitter],
) -> Response[bytes]:
    """Accept a message: 202 once Kafka has it; 400/413/415/422 for bad input; 429/503 when busy.

    Note: the answer comes within `FEED_KAFKA_TIMEOUT_S` of the request's arrival. One
    dependency only (the submitter carries the key store): Litestar resolves two or more
    in a task group of their own, per request (~10% of a post's CPU).
    """
    deadline = submitter.deadline()
    if not _is_json(request.headers.get("content-type", "")):
        return problem(415, "Content-Type must be application/json", "content-type")
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        return problem(
            400, "Idempotency-Key must be 1-255 printable ASCII characters", "idempotency-key"
        )
    try:
        submission = decode_submission(await request.body())
    except InvalidSubmission as exc:
        submitter.metrics.inc("feedsvc_posts_refused_total", status="400", reason="invalid")
        return problem(400, exc.detail, exc.field)
    try:
        message = await submitter.submit(
            new_message(submission, key), deadline, submitter.keys if key is not None else None
        )
    except Refusal as refusal:
        submitter.metrics.inc(
            "feedsvc_posts_refused_total", status=str(refusal.status), reason=refusal.reason
        )
        return problem(refusal.status, refusal.reason, retry_after_s=refusal.retry_after_s)
    except KeyReused as exc:
        submitter.metrics.inc("feedsvc_posts_refused_total", status="422", reason="key reused")
        return problem(422, str(exc), "idempotency-key")
    submitter.metrics.inc("feedsvc_posts_accepted_total")
    body = Accepted(
        id=message.id, author=message.author, text=message.text, created_at=message.created_at
    )
    return Response(
        encode(body),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/messages/{message.id}"},
    )
