"""Idempotency-Key: what an earlier request with the same key left, and when a key is reused.

The rules follow the IETF draft "The Idempotency-Key HTTP Header Field"
(https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header,
section "Error Scenarios"): a key reused with a different payload is refused with
422; a retry of a completed request gets that request's result.

A key is bound to its first text before anything is sent, in claims every worker of the
api shares (`KeyClaims`), so that a second text is refused wherever it arrives. Why: the
database knows a key only once the writer stored its message. Before that, two requests
with one key and different texts, on two workers (or on one, both waiting for the
database lookup), could each find nothing, and both got 202 while only one text could
ever be stored: an accepted message lost. A claim is made synchronously, before the
first await, in memory all workers map.

The table is a shared mapping created before the workers fork (of a memfd, so that
there is a file to lock): `SLOTS` slots, a key's slot fixed by its message id (direct-mapped: a
newer key landing on an older one's slot replaces it, and the database answers for the
older one once it is stored). A slot holds the message id, a BLAKE2b digest of the text,
`created_at` and whether the message is settled (acknowledged by Kafka, or found in the
database). It is read and written under an fcntl lock on its bytes: POSIX record locks
are released by the kernel when their process dies, so a worker killed while holding
one blocks no one (https://man7.org/linux/man-pages/man2/fcntl.2.html, "Advisory record
locking").
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from feedsvc.messages import Message

SLOTS = 65_536
"""Keys remembered at once (3 MiB shared); a key is forgotten when another takes its slot."""

_SLOT = struct.Struct("<16s16sqB7x")  # id, text digest, created_at (µs since 1970), state
_EMPTY, _SENDING, _SETTLED = 0, 1, 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KeyReused(Exception):
    """The key's message exists with another text; the draft's answer is 422."""


class Earlier(NamedTuple):
    """A message an earlier request with the same key produced."""

    message: Message
    acknowledged: bool
    """Kafka acknowledged it (or the database has it): a retry need not send it again."""


class KeyClaims:
    """The keyed messages being sent or sent lately, by message id, shared across fork.

    Note: create it before the workers fork; each worker then uses the same table. All
    methods are synchronous and short (one slot, one lock), so no await splits a claim.
    """

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._fd = _anonymous_file()
        os.ftruncate(self._fd, slots * _SLOT.size)
        self._map = mmap.mmap(self._fd, slots * _SLOT.size)

    def claim(self, message: Message) -> Earlier | None:
        """Bind `message`'s key to its text, or say what the key is bound to.

        Returns None when the key was free (now bound to this text, "sending"): look in
        the database, then send. Returns the earlier message when the key is bound to
        the same text (same id and `created_at`; `acknowledged` says whether to send it
        again). Raises `KeyReused` when it is bound to another text.
        """
        digest = _digest(message.text)
        with self._slot(message.id) as offset:
            found, found_digest, created_us, state = _SLOT.unpack_from(self._map, offset)
            if state == _EMPTY or found != message.id.bytes:
                self._write(offset, message, digest, _SENDING)
                return None
            if found_digest != digest:
                raise KeyReused("Idempotency-Key was already used for a different text")
            created_at = _EPOCH + timedelta(microseconds=created_us)
            earlier = Message(message.id, message.author, message.text, created_at)
            return Earlier(earlier, acknowledged=state == _SETTLED)

    def settle(self, message: Message) -> None:
        """`message` is the key's for good (Kafka acknowledged it, or the database has it)."""
        with self._slot(message.id) as offset:
            self._write(offset, message, _digest(message.text), _SETTLED)

    def get(self, message_id: uuid.UUID) -> tuple[bytes, bool] | None:
        """The text digest bound to this id and whether it is settled; None if not held."""
        with self._slot(message_id) as offset:
            found, digest, _, state = _SLOT.unpack_from(self._map, offset)
        if state == _EMPTY or found != message_id.bytes:
            return None
        return digest, state == _SETTLED

    def _write(self, offset: int, message: Message, digest: bytes, state: int) -> None:
        created_us = (message.created_at - _EPOCH) // timedelta(microseconds=1)
        _SLOT.pack_into(self._map, offset, message.id.bytes, digest, created_us, state)

    def _slot(self, message_id: uuid.UUID) -> _Locked:
        index = int.from_bytes(message_id.bytes[:8], "little") % self.slots
        return _Locked(self._fd, index * _SLOT.size)


class _Locked:
    """The fcntl lock on one slot's bytes, for a `with` block; yields the slot's offset."""

    __slots__ = ("_fd", "_offset")

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._offset = offset

    def __enter__(self) -> int:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _SLOT.size, self._offset)
        return self._offset

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT.size, self._offset)


def _anonymous_file() -> int:
    """A file in memory only: a memfd on Linux, else an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("feedsvc-key-claims", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as file:  # pragma: no cover (not Linux)
        return os.dup(file.fileno())


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
