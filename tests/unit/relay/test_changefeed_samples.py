"""The relay's decoder fed CockroachDB's own documented changefeed messages.

The samples are the docs' bytes; where the docs' table is not ours, only the `after`
columns are ours (the decoder reads our columns) and everything else is as documented.
https://www.cockroachlabs.com/docs/v25.4/changefeed-messages
"""

from __future__ import annotations

import uuid

from feedsvc.relay.changefeed import Delete, Resolved, Row, decode_record, hlc_value

ID = uuid.UUID("c6e37516-a5a4-4ec4-a2a4-a85978682a99")
KEY = f'["{ID}"]'.encode()


def test_the_documented_wrapped_envelope_with_updated_decodes() -> None:
    """`{"after": {...}, "key": [...], "updated": "<ns>.<logical>"}` is a row at that HLC."""
    # changefeed-messages#per-key-ordering: a nanosecond wall, a 10-digit counter, and the
    # key repeated in the value, which the decoder ignores like any field it does not use.
    value = (
        f'{{"after": {{"author": "Terry", "created_at": "2025-05-09T21:20:29.203923Z", '
        f'"id": "{ID}", "text": "new york city"}}, "key": ["{ID}"], '
        f'"updated": "1701102296662969433.0000000000"}}'
    ).encode()
    decoded = decode_record(KEY, value)
    assert isinstance(decoded, Row)
    assert decoded.updated == "1701102296662969433.0000000000"
    assert decoded.message.id == ID and decoded.message.created_at.microsecond == 203923


def test_the_documented_resolved_message_decodes() -> None:
    """`{"resolved":"<ns>.<logical>"}` (compact, as a Kafka consumer prints it) with a null key."""
    decoded = decode_record(None, b'{"resolved":"1681240120058450985.0000000000"}')
    assert decoded == Resolved("1681240120058450985.0000000000")
    assert hlc_value(decoded.hlc) == 1681240120058450985 * 10**10


def test_the_documented_delete_decodes_without_updated() -> None:
    """changefeed-messages#delete-messages: `{"after": null}` under the key is a delete."""
    assert decode_record(KEY, b'{"after": null}') == Delete(id=ID, updated=None)
