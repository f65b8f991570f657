"""`POST /messages`: validate, admit, hand to Kafka, answer 202 once Kafka has it."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from litestar import Request, Response, post

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.errors import problem
from feedsvc.kafka import SUBMITTED
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

log = logging.getLogger(__name__)

# Printable ASCII, as in the IETF Idempotency-Key draft's examples (UUIDs, tokens).
_IDEMPOTENCY_KEY = re.compile(r"\A[\x21-\x7e]{1,255}\Z")


class Submitter:
    """Turns an admitted message into a Kafka record acknowledged by every replica."""

    def __init__(
        self, producer: AIOKafkaProducer, admission: Admission, metrics: Metrics, timeout_s: float
    ) -> None:
        self.producer = producer
        self.admission = admission
        self.metrics = metrics
        self.timeout_s = timeout_s
        metrics.counter("feedsvc_posts_accepted_total", "Messages acknowledged by Kafka (202).")
        metrics.counter("feedsvc_posts_refused_total", "POSTs refused, by status and reason.")
        metrics.gauge(
            "feedsvc_posts_inflight", "POSTs waiting on Kafka now.", lambda: admission.inflight
        )
        metrics.gauge(
            "feedsvc_writer_backlog",
            "Records the writer has not stored yet.",
            lambda: admission.backlog,
        )

    async def submit(self, message: Message) -> None:
        """Send one message; raises `Refusal` when it cannot be accepted now.

        Note: a send that times out may still reach Kafka later, and then the
        message is stored although the client saw 503; a client that retries with
        the same `Idempotency-Key` gets it stored once either way.
        """
        self.admission.check()
        self.admission.enter()
        try:
            # asyncio's own timeout: anyio's CancelScope cost ~12% of the api's CPU here.
            async with asyncio.timeout(self.timeout_s):
                await self.producer.send_and_wait(
                    SUBMITTED, encode(message), key=message.author.encode()
                )
        except (TimeoutError, KafkaError) as exc:
            self.admission.kafka_failed()
            log.warning("kafka send failed", extra={"error": repr(exc), "id": str(message.id)})
            raise Refusal(503, "Kafka did not acknowledge the message in time", 2) from None
        finally:
            self.admission.leave()
        self.admission.kafka_ok()


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


@post("/messages", request_max_body_size=MAX_BODY_BYTES, status_code=202)
async def post_message(request: Request[Any, Any, Any], submitter: Submitter) -> Response[bytes]:
    """Accept a message: 202 once Kafka has it; 400/413/415 for bad input; 429/503 when busy."""
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
    message = new_message(submission, key)
    try:
        await submitter.submit(message)
    except Refusal as refusal:
        submitter.metrics.inc(
            "feedsvc_posts_refused_total", status=str(refusal.status), reason=refusal.reason
        )
        return problem(refusal.status, refusal.reason, retry_after_s=refusal.retry_after_s)
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
