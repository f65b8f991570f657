# shellcheck shell=bash
# Sourced by run.sh and scripts/changefeed-running: SQL against the Docker stack's
# CockroachDB cluster through whichever node is up, so a stopped node (roach1 included)
# does not blind them. Each node's container runs `cockroach sql` against itself.
#
#   cluster_sql SQL   prints the answer as TSV with its header line; tries roach1,
#                     roach2, roach3 in turn and fails only when none answers.
#                     FEEDSVC_ROACH_NODES overrides the list (space separated).

cluster_sql() {
    local node
    for node in ${FEEDSVC_ROACH_NODES:-roach1 roach2 roach3}; do
        if docker compose exec -T "$node" cockroach sql --insecure --format=tsv -e "$1" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}
