#!/usr/bin/env bash
# Stop feedsvc's Docker stack. The data (CockroachDB and Kafka volumes) is kept, and
# ./run.sh brings the same cluster back. With --purge the volumes go too: that is how
# to reset a dev cluster, e.g. once an unlicensed cluster's 7-day grace is over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
    echo "usage: ./stop.sh [--purge]"
    echo "  (no flag)  stop and remove the containers, keep the data"
    echo "  --purge    also delete the data volumes of CockroachDB and Kafka"
}

case "${1:-}" in
    "" | --purge) ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

# Docker, its engine and Compose v2.20+: the same checks and messages as run.sh.
# shellcheck source=scripts/lib/docker-preflight.sh
. scripts/lib/docker-preflight.sh
docker_preflight stop.sh

case "${1:-}" in
    "")
        docker compose down --remove-orphans
        echo "feedsvc stopped; the data is kept (./stop.sh --purge deletes it)."
        ;;
    --purge)
        docker compose down --volumes --remove-orphans
        echo "feedsvc stopped and its data deleted; ./run.sh starts a fresh cluster."
        ;;
esac
