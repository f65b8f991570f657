#!/usr/bin/env bash
# One-shot `cockroach init` for the compose stack (service roach-init).
#
# `cockroach init` waits for the node by itself, so it is not gated on node health:
# a node's /health?ready=1 answers 503 until the cluster is initialized.
# On an initialized cluster it fails with "cluster has already been initialized";
# that is the normal answer on every `./run.sh` after the first, so it counts as
# success, quietly. Any other failure fails the service, and setup never starts.
# It targets one node only: initializing through different hosts could bootstrap
# two clusters. https://www.cockroachlabs.com/docs/v25.4/cockroach-init
set -u

host="${COCKROACH_INIT_HOST:-roach1:26257}"

# When this cluster was initialized, for run.sh's licence notice: without a licence a
# multi-node cluster is throttled 7 days after init, and SQL shows no init time.
# https://www.cockroachlabs.com/docs/v25.4/licensing-faqs#throttling
# Recorded once, right after the init that created the cluster; a failure here is
# reported but does not fail the stack (the notice then names no date).
record_init_time() {
    cockroach sql --insecure --host="$host" --execute="
        CREATE DATABASE IF NOT EXISTS feedsvc;
        CREATE TABLE IF NOT EXISTS feedsvc.cluster_init (initialized_at TIMESTAMPTZ NOT NULL);
        INSERT INTO feedsvc.cluster_init SELECT now()
         WHERE NOT EXISTS (SELECT 1 FROM feedsvc.cluster_init);" >/dev/null ||
        echo "warning: could not record the cluster's init time (run.sh will not show the licence date)" >&2
}

if output="$(cockroach init --insecure --host="$host" 2>&1)"; then
    printf '%s\n' "$output"
    record_init_time
    exit 0
else
    status=$?
fi

case "$output" in
    *"cluster has already been initialized"*)
        echo "CockroachDB cluster at $host was already initialized"
        exit 0
        ;;
esac

printf '%s\n' "$output" >&2
echo "cockroach init --host=$host failed with exit status $status" >&2
exit "$status"
