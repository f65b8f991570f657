"""schemathesis hooks for tests/e2e/test_schemathesis.py (loaded by schemathesis.toml)."""

from __future__ import annotations

from typing import Any

import schemathesis

from feedsvc.messages import MAX_TEXT_CHARS


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Keep a too-long `text` too long once trimmed.

    Note: the api counts a text's characters after trimming white space at both ends,
    which no JSON Schema keyword can say; the spec's `maxLength` bounds the untrimmed
    text. A generated text over it that trimming brings within it is valid to the api
    (202), so it is made too long without white space at its ends (still a `maxLength`
    violation, and the rule the api does enforce). Shorter texts are left as they are,
    so every valid body the spec allows is still sent.
    """
    if isinstance(body, dict) and isinstance(text := body.get("text"), str):
        core = text.strip()
        if len(text) > MAX_TEXT_CHARS and len(core) <= MAX_TEXT_CHARS:
            return {**body, "text": "x" + core + "x" * (MAX_TEXT_CHARS - len(core))}
    return body
