"""The IETF `RateLimit` field: when the front door says this client's quota is spent.

https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/ (section 4): a
structured-field List (RFC 9651) of policies, each with `r` (quota left) and, optional,
`t` (seconds the window still runs). docs/fair-share.md#the-headers.
"""

from __future__ import annotations

import re

from bot.backpressure import DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S

# One list member: a string or token naming the policy, then its `;key=value` parameters.
# Commas and semicolons inside a quoted string belong to it.
_MEMBER = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^,;]*)((?:;[^,;]*)*)\s*(?:,|$)')
_PARAMETER = re.compile(r'\s*([a-z*][a-z0-9_.*-]*)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;]*))?')


def spent_wait(value: str | None) -> float | None:
    """Seconds to send nothing when some policy in `value` has no quota left (`r=0`), else None.

    Note: the wait is that policy's `t`, or `DEFAULT_RETRY_AFTER_S` without one, capped
    like `Retry-After`; a field that cannot be read says nothing (None), as the draft asks
    of a malformed one.
    """
    if not value:
        return None
    waits: list[float] = []
    position = 0
    while position < len(value):
        member = _MEMBER.match(value, position)
        if member is None or member.end() == position:
            return None
        position = member.end()
        params = {}
        for raw in member.group(2).split(";")[1:]:
            parameter = _PARAMETER.fullmatch(raw)
            if parameter is None:
                return None
            params[parameter.group(1)] = (parameter.group(2) or "").strip()
        if params.get("r") == "0":
            t = params.get("t", "")
            waits.append(float(t) if t.isdigit() else DEFAULT_RETRY_AFTER_S)
    return min(max(waits), MAX_RETRY_AFTER_S) if waits else None
