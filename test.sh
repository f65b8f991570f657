#!/usr/bin/env bash
# The whole test suite. With a reachable Docker engine it runs in containers against
# the real CockroachDB cluster (scripts/test-in-docker); otherwise natively, against
# PostgreSQL and a real Kafka broker started by the tests (the devstack package).
# Arguments go to pytest: `./test.sh -m "not slow"` skips the outage drills,
# `./test.sh -m slow` runs only them, `./test.sh tests/unit` only the unit tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ "${FEEDSVC_TEST_MODE:-}" != native ] && [ -x scripts/test-in-docker ] \
        && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    exec scripts/test-in-docker "$@"
fi

step() { printf '\n== %s\n' "$*"; }

step "bootstrap (installs what is missing)"
scripts/bootstrap

step "lint: ruff, mypy --strict"
uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy

if [ -x scripts/check-static ]; then
    step "static checks: compose loader, shellcheck, hadolint, topology"
    scripts/check-static
fi

step "the test image's file set: tests/unit and tests/static without .git (FEEDSVC_TEST_BACKEND=cockroach)"
uv run --frozen python scripts/docker_test_files.py -q

step "observability: promtool check config and rules, promtool test rules"
promtool check config observability/prometheus.yml
promtool test rules observability/alerts-test.yml

step "pytest"
uv run --frozen pytest "$@"
