"""`python -m devstack up|down|status [--root DIR]`: what `scripts/local-stack` runs."""

import sys

from devstack.cli import main

sys.exit(main())
