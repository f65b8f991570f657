"""`POST /messages`: validate, admit, hand to Kafka, answer 202 once Kafka has it."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from feedsvc.http import requestid
from feedsvc.http.admission import Refusal
from feedsvc.http.contract import IDEMPOTENCY_KEY_PATTERN, SUBMIT_RESPONSES, SubmitOperation
from feedsvc.http.errors import Answer
from feedsvc.http.idempotency import Bound, KeyReused, KeyUnchecked
from feedsvc.kafka import REQUEST_ID_HEADER, SUBMITTED
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
from feedsvc.tracing import OFF, Tracing

log = logging.getLogger(__name__)

UNCHECKED = "the Idempotency-Key cannot be checked now (the database is unreachable); retry later"
"""The 503's detail when a keyed post could not be claimed; an unkeyed post is unaffected."""

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)  # the one the spec documents


class Producer(Protocol):
    """What sending a message needs of a Kafka producer (`kafka.RenewingProducer` is one)."""

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes, *, headers: list[tuple[str, bytes]]
    ) -> Any:
        """Send one record; returns once every replica has it (`acks=all`)."""
        ...


class Gate(Protocol):
    """What the submitter asks of admission control (`Admission` is one)."""

    @property
    def inflight(self) -> int: ...
    @property
    def backlog(self) -> int | None: ...
    @property
    def loop_lag_s(self) -> float:
        """How late this process's event loop runs now."""
        ...

    @property
    def overloaded(self) -> bool:
        """True while the event loop is so late that a timeout says nothing of Kafka."""
        ...

    def refusal(self) -> Refusal | None:
        """Why a new message must be turned away now, or None when it may come in."""
        ...

    def check(self) -> None:
        """Raise `Refusal` if a new message must be turned away now."""
        ...

    def enter(self) -> None:
        """Count a send in flight; paired with `leave` however the send ends."""
        ...

    def leave(self) -> None: ...

    def kafka_failed(self) -> None:
        """A send found Kafka away (not one starved of time by the rest of its request)."""
        ...

    def kafka_ok(self) -> None:
        """Kafka acknowledged a send."""
        ...


class Claims(Protocol):
    """Where an Idempotency-Key is bound to its first text (`KeyClaims` is one)."""

    async def claim(self, message: Message, until: float) -> Bound:
        """What the key is bound to; raises `KeyReused` (another text) or `KeyUnchecked`."""
        ...


class Submitter:
    """Turns an admitted message into a Kafka record acknowledged by every replica.

    Note: every request has a deadline `timeout_s` after its arrival, and all of
    its waits share it (the Idempotency-Key claim at most half of it, the send what is
    left), so a POST is answered within `timeout_s` whatever is down.
    """

    def __init__(
        self,
        producer: Producer,
        admission: Gate,
        metrics: Metrics,
        timeout_s: float,
        claims: Claims,
        body_timeout_s: float | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.producer = producer
        self.tracing = tracing
        """A span per send when tracing is on (docs/tracing.md); a shared no-op when off."""
        self.admission = admission
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.claims = claims
        """Where an Idempotency-Key is bound to its first text (the database)."""
        self.body_timeout_s = min(
            timeout_s if body_timeout_s is None else body_timeout_s, timeout_s / 2
        )
        """How long a body may take after its head: at most half of a post's time, so that
        Kafka keeps the rest (docs/api.md#limits-at-the-edge)."""
        self._late_body = Answer.problem(
            408,
            f"the body did not arrive within {self.body_timeout_s:g} s of the request's head",
            "body",
            headers={"Connection": "close"},
        )
        self.posts = metrics.posts
        metrics.follow(self.posts.inflight, lambda: admission.inflight)
        metrics.follow(self.posts.writer_backlog, lambda: admission.backlog)
        metrics.follow(self.posts.event_loop_lag, lambda: admission.loop_lag_s)

    def late_body(self) -> Answer:
        """The answer to a body still unfinished `body_timeout_s` after the head, counted.

        The client's lateness, not Kafka's: nothing was sent, nothing counts as a send.
        """
        self.posts.refused.labels("408", "body too slow").inc()
        return self._late_body

    def deadline(self) -> float:
        """When a request arriving now must have its answer, on the event loop's clock."""
        # A little is kept back for writing the answer itself.
        return asyncio.get_running_loop().time() + self.timeout_s - min(0.2, self.timeout_s / 10)

    async def submit(
        self,
        message: Message,
        deadline: float,
        keyed: bool = False,
        request_id: str | None = None,
    ) -> Message:
        """Send one message; returns it as accepted, or raises `Refusal` or `KeyReused`.

        A `keyed` message (it has an Idempotency-Key) is claimed first (`Claims`): bound
        to another text, the answer is `KeyReused`; bound to this text, the first request's
        message is the answer, sent again unless the database has it. No answer from the
        database in time: 503, nothing sent.

        Note: a send that times out may still reach Kafka later, and then the message
        is stored although the client saw 503; a retry with the same key gets it
        stored once, and another text is refused meanwhile.
        """
        self.admission.check()
        self.admission.enter()
        try:
            if keyed:
                loop = asyncio.get_running_loop()
                until = min(deadline, loop.time() + self.timeout_s / 2)
                try:
                    bound = await self.claims.claim(message, until)
                except KeyUnchecked as exc:
                    # Counted as refused; an outage is logged once, by the health watch.
                    log.debug("idempotency key not checked", extra={"error": str(exc)})
                    raise Refusal(503, UNCHECKED, 2) from None
                if bound.stored:
                    return bound.message
                message = bound.message  # the first request's record, sent again
            await self._send(message, deadline, request_id)
        finally:
            self.admission.leave()
        return message

    async def _send(self, message: Message, deadline: float, request_id: str | None) -> None:
        loop = asyncio.get_running_loop()
        given = deadline - loop.time()
        sent = loop.time()
        try:
            # asyncio's own timeout: anyio's CancelScope cost ~12% of the api's CPU here.
            # The writer logs the request id with the message: a post's lines join end to end.
            headers = [] if request_id is None else [(REQUEST_ID_HEADER, request_id.encode())]
            async with asyncio.timeout_at(deadline):
                with self.tracing.produce(message.id, request_id, headers):
                    await self.producer.send_and_wait(
                        SUBMITTED, encode(message), key=message.author.encode(), headers=headers
                    )
        except (TimeoutError, KafkaError) as exc:
            # A send left too little time by the rest of the request, or late because
            # our own event loop is, says nothing of Kafka.
            if not isinstance(exc, TimeoutError) or (
                given >= self.timeout_s / 2 and not self.admission.overloaded
            ):
                self.admission.kafka_failed()
            self.posts.kafka_send_errors.labels(type(exc).__name__).inc()
            log.warning("kafka send failed", extra={"error": repr(exc), "id": str(message.id)})
            raise Refusal(503, "Kafka did not acknowledge the message in time", 2) from None
        self.posts.produce_seconds.observe(loop.time() - sent)
        self.admission.kafka_ok()


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


TOO_LARGE = Answer.problem(413, f"the body is over {MAX_BODY_BYTES} bytes")
"""The answer to a body over `MAX_BODY_BYTES` (found before or while reading it)."""


def screen(content_type: str, key: str | None) -> Answer | None:
    """The answer to a post refused on its headers alone (415, 400), or None to go on."""
    if not _is_json(content_type):
        return Answer.problem(415, "Content-Type must be application/json", "content-type")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        return Answer.problem(
            400, "Idempotency-Key must be 1-255 printable ASCII characters", "idempotency-key"
        )
    return None


async def accept(
    submitter: Submitter,
    body: bytes,
    key: str | None,
    deadline: float,
    request_id: str | None = None,
) -> Answer:
    """Decode `body`, admit and send it: 202 once Kafka has it, else 400, 422, 429 or 503."""
    try:
        submission = decode_submission(body)
    except InvalidSubmission as exc:
        submitter.posts.refused.labels("400", "invalid").inc()
        return Answer.problem(400, exc.detail, exc.field)
    try:
        message = await submitter.submit(
            new_message(submission, key), deadline, key is not None, request_id
        )
    except Refusal as refusal:
        submitter.posts.refused.labels(str(refusal.status), refusal.reason).inc()
        return Answer.problem(refusal.status, refusal.reason, retry_after_s=refusal.retry_after_s)
    except KeyReused as exc:
        submitter.posts.refused.labels("422", "key reused").inc()
        return Answer.problem(422, str(exc), "idempotency-key")
    submitter.posts.accepted.inc()
    accepted = Accepted(
        id=message.id, author=message.author, text=message.text, created_at=message.created_at
    )
    return Answer(202, encode(accepted), (("Location", f"/messages/{message.id}"),))


@post(
    "/messages",
    request_max_body_size=MAX_BODY_BYTES,
    status_code=202,
    operation_class=SubmitOperation,
    responses=SUBMIT_RESPONSES,
)
async def post_message(
    request: Request[Any, Any, Any],
    submitter: NamedDependency[Submitter],
) -> Response[bytes]:
    """Accept a message: 202 once Kafka has it; 400/413/415/422 for bad input; 429/503 when busy.

    Note: the answer comes within `FEED_KAFKA_TIMEOUT_S` of the request's arrival. One
    dependency only (the submitter carries the key claims): Litestar resolves two or more
    in a task group of their own, per request (~10% of a post's CPU). Most posts never
    get here: `http.door` answers them without the framework, with the same `screen`
    and `accept`; this handler serves the rest (cross-origin posts when CORS is on) and
    documents the operation.
    """
    deadline = submitter.deadline()
    key = request.headers.get("idempotency-key")
    answer = screen(request.headers.get("content-type", ""), key)
    if answer is None:
        try:
            async with asyncio.timeout(submitter.body_timeout_s):
                body = await request.body()
        except TimeoutError:
            return submitter.late_body().response()
        except RequestEntityTooLarge:
            return TOO_LARGE.response()
        rid = requestid.request_id(request.scope)
        answer = await accept(submitter, body, key, deadline, rid)
    return answer.response()
