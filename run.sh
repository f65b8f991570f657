#!/usr/bin/env bash
# Build and start feedsvc on Docker, wait until every service is healthy (the
# one-shots roach-init and setup: finished with exit 0), then print where things
# are. Running it again on a running stack changes nothing and succeeds; it never
# deletes data. ./stop.sh stops the stack.
#
# FEEDSVC_START_TIMEOUT (seconds, default 600) bounds the wait for health; pulling
# the images on a first run comes before it. FEEDSVC_RUN_LOG names a file that keeps
# what Compose said (the quiet build and `up`), which is otherwise deleted on exit: the
# CI workflow greps it for recreated containers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

timeout_s="${FEEDSVC_START_TIMEOUT:-600}"
one_shots=" roach-init setup "

die() {
    printf 'run.sh: %s\n' "$*" >&2
    exit 1
}

# --- Docker and Compose v2 are there (the same checks as stop.sh) -------------
# shellcheck source=scripts/lib/docker-preflight.sh
. scripts/lib/docker-preflight.sh
docker_preflight run.sh
docker_engine_preflight run.sh
# shellcheck source=scripts/lib/cluster-sql.sh
. scripts/lib/cluster-sql.sh

if [ -n "${FEEDSVC_RUN_LOG:-}" ]; then
    log="$FEEDSVC_RUN_LOG"
    : >"$log"
else
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
fi

# --- Pull and build -----------------------------------------------------------
# Images the stack needs that are not on this machine yet (ours, one per built
# service, <project>-<service>, are built below). `config --images` lists every
# service's image.
missing=()
while IFS= read -r image; do
    [ -n "$image" ] || continue
    docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
done < <(docker compose config --images)

# On a first run the pulls and the build take minutes: show their progress. Later
# runs (every image there) build quietly into the log, which is shown on failure.
if [ "${#missing[@]}" -gt 0 ]; then
    echo "Pulling images and building feedsvc (first run: a few minutes)..."
    # --ignore-buildable (Compose 2.15+, older than the 2.20 we require): our images
    # are built here, not pulled. https://github.com/docker/compose/pull/10134
    docker compose pull --ignore-buildable ||
        die "pulling the images failed (output above); check the network and run ./run.sh again"
    docker compose build || die "building the image failed (output above)"
else
    echo "Building the feedsvc image if the code changed..."
    if ! docker compose build >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "building the image failed (output above)"
    fi
fi

# Lists each container that is not where it should be, with its last log lines.
report_failure() {
    echo >&2
    echo "run.sh: the stack did not become healthy (waited up to ${timeout_s}s). Compose said:" >&2
    tail -n 15 "$log" >&2
    local states="" service state health code what seen=" " reported=" " all
    # `docker inspect` templates work with every Compose version (`compose ps
    # --format` takes templates only in recent ones).
    local ids
    ids="$(docker compose ps --all --quiet)" || true
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086 # one argument per container id
        states="$(docker inspect --format \
            '{{index .Config.Labels "com.docker.compose.service"}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.ExitCode}}' \
            $ids)" || true
    fi
    while IFS='|' read -r service state health code; do
        [ -n "$service" ] || continue
        seen="$seen$service "
        if [[ "$one_shots" == *" $service "* ]]; then
            [ "$state" = exited ] && [ "$code" = 0 ] && continue
        else
            [ "$state" = running ] && { [ -z "$health" ] || [ "$health" = healthy ]; } && continue
        fi
        [[ "$reported" == *" $service "* ]] && continue
        reported="$reported$service "
        what="$state${health:+, $health}"
        [ "$state" = exited ] && what="$what, exit status $code"
        echo >&2
        echo "== $service is $what; its last log lines:" >&2
        docker compose logs --no-color --tail 30 "$service" >&2 || true
    done <<<"$states"
    all="$(docker compose config --services)" || true
    for service in $all; do
        [[ "$seen" == *" $service "* ]] ||
            echo "== $service was not started: a service it depends on did not get ready" >&2
    done
    echo >&2
    echo "Inspect with: docker compose ps --all; docker compose logs SERVICE. Data is kept; fix and run ./run.sh again." >&2
}

echo "Starting the stack and waiting until it is healthy (up to ${timeout_s}s)..."
if ! docker compose up --detach --wait --wait-timeout "$timeout_s" --quiet-pull >>"$log" 2>&1; then
    report_failure
    exit 1
fi

# --- Where things are ---------------------------------------------------------
# The published address, e.g. 127.0.0.1:8000 (a free port when the .env left it empty).
address() { docker compose port "$1" "$2" 2>/dev/null | tail -n 1; }
# The front door (haproxy) in front of the api replicas: what users and the bot hit.
api="$(address haproxy 8000)"
console="$(address roach1 8080)"
sql="$(address roach1 26257)"
kafka="$(address kafka 9094)"
bot="$(address bot 8001)"

# --- Licence -------------------------------------------------------------------
# Without a licence key a multi-node cluster is throttled to 5 concurrent open
# transactions 7 days after `cockroach init`:
# https://www.cockroachlabs.com/docs/v25.4/licensing-faqs#throttling
# cockroach/init-cluster.sh records when it initialized the cluster (in
# feedsvc.cluster_init); prints nothing when a licence is set.
# Through any node that is up (scripts/lib/cluster-sql.sh), not roach1 alone.
sql() {
    local answer
    answer="$(cluster_sql "$1")" || return 1
    printf '%s\n' "$answer" | tail -n +2
}
licence_notice() {
    local key until
    key="$(sql "SHOW CLUSTER SETTING enterprise.license")" || return 0
    [ -z "$key" ] || return 0
    # A TIMESTAMP in the session's time zone, UTC unless set otherwise.
    until="$(sql "SELECT date_trunc('second', initialized_at + INTERVAL '7 days')::TIMESTAMP::STRING FROM feedsvc.cluster_init")" ||
        until=""
    echo
    if [ -n "$until" ]; then
        echo "No CockroachDB licence is set: the grace period ends ${until} UTC; after that"
    else
        echo "No CockroachDB licence is set: 7 days after this cluster was initialized"
    fi
    echo "the cluster allows 5 concurrent transactions. Set FEED_COCKROACH_LICENSE in .env,"
    echo "or reset the dev cluster with ./stop.sh --purge (docs/operations.md, \"CockroachDB licence\")."
}
licence_notice

cat <<EOF

feedsvc is up.
  Feed page            http://${api}/
  OpenAPI UI           http://${api}/schema
  CockroachDB console  http://${console}/
  SQL shell            docker compose exec roach1 cockroach sql --insecure --database=feedsvc
                       (or with a local cockroach binary: cockroach sql --insecure --url "postgresql://root@${sql}/feedsvc?sslmode=disable")
  Kafka from the host  ${kafka}
  Bot message rate     curl http://${bot}/rate
                       curl -X PUT -H 'Content-Type: application/json' -d '{"rate": 50}' http://${bot}/rate   (messages per second)
  Logs                 docker compose logs -f haproxy api writer
  Stop                 ./stop.sh (keeps the data), ./stop.sh --purge (deletes it)
EOF
