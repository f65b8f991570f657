"""The relay: changefeed records in, one SSE byte stream per feed client out (no I/O here)."""
