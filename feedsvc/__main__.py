"""`python -m feedsvc api|writer|setup`: one composition root per role."""

from __future__ import annotations

import os
import sys

from feedsvc.config import ConfigError, load_settings
from feedsvc.logs import configure_logging

USAGE = "usage: python -m feedsvc api|writer|setup"


def main(argv: list[str]) -> int:
    """Run one role until it ends; the exit code says how it ended."""
    if len(argv) != 1 or argv[0] not in ("api", "writer", "setup"):
        print(USAGE, file=sys.stderr)
        return 2
    role = argv[0]
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        print(f"feedsvc {role}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, role)
    # Imported here so that a bad configuration fails before any heavy import.
    from feedsvc import roles

    return roles.run(role, settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
