"""Every wire shape of feedsvc, and the rules a submitted message must follow.

Note: shapes are decoded at the boundary (HTTP body, Kafka record, database row, query
parameter) and only these structs travel inward. One module per contract:

- `submission`: the body of `POST /messages` and its validation rules;
- `posts`: the message (HTTP, `messages.submitted`, database, feed), the HTTP bodies and
  an Idempotency-Key's claim;
- `cursor`: the `before` token of `GET /messages`;
- `feed`: the `data:` of the feed's SSE notices and the gap marker in `messages.committed`;
- `deadletter`: the `messages.dlq` record.
"""

from feedsvc.messages.cursor import CURSOR_PATTERN, Cursor, decode_cursor, encode_cursor
from feedsvc.messages.deadletter import (
    DEAD_LETTER_HEAD_BYTES,
    DEAD_LETTER_KEY_BYTES,
    DEAD_LETTER_REASON_CHARS,
    DeadLetter,
    dead_letter,
)
from feedsvc.messages.feed import (
    FEED_RESTART_KEY,
    Deleted,
    FeedRestart,
    ResetNotice,
    ResumeNotice,
    decode_feed_restart,
    encode_feed_restart,
)
from feedsvc.messages.posts import (
    Accepted,
    KeyClaim,
    Message,
    MessagePage,
    Problem,
    decode_message,
    encode,
    new_message,
    text_digest,
)
from feedsvc.messages.submission import (
    AUTHOR_PATTERN,
    MAX_BODY_BYTES,
    MAX_TEXT_CHARS,
    InvalidSubmission,
    Submission,
    decode_submission,
    is_visible,
)

__all__ = [
    "AUTHOR_PATTERN",
    "CURSOR_PATTERN",
    "DEAD_LETTER_HEAD_BYTES",
    "DEAD_LETTER_KEY_BYTES",
    "DEAD_LETTER_REASON_CHARS",
    "FEED_RESTART_KEY",
    "MAX_BODY_BYTES",
    "MAX_TEXT_CHARS",
    "Accepted",
    "Cursor",
    "DeadLetter",
    "Deleted",
    "FeedRestart",
    "InvalidSubmission",
    "KeyClaim",
    "Message",
    "MessagePage",
    "Problem",
    "ResetNotice",
    "ResumeNotice",
    "Submission",
    "dead_letter",
    "decode_cursor",
    "decode_feed_restart",
    "decode_message",
    "decode_submission",
    "encode",
    "encode_cursor",
    "encode_feed_restart",
    "is_visible",
    "new_message",
    "text_digest",
]
