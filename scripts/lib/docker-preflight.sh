# shellcheck shell=bash
# Sourced by run.sh and stop.sh: the checks both make before they touch Docker, so a
# machine without Docker, without a running engine, or without the Compose v2 plugin
# gets the same clear message from either script instead of Docker's own error
# (`docker compose down` without the plugin says "unknown flag: --remove-orphans").
#
#   docker_preflight NAME   exits 1 with "NAME: <what is missing and where to get it>"

docker_preflight() {
    local me="$1" version major minor
    command -v docker >/dev/null 2>&1 || {
        printf '%s: %s\n' "$me" "Docker is not installed. Install Docker Engine or Docker Desktop: https://docs.docker.com/get-docker/" >&2
        exit 1
    }
    if ! docker info >/dev/null 2>&1; then
        printf '%s: %s\n%s\n' "$me" "cannot reach the Docker engine; is it running, and may this user use it? 'docker info' says:" \
            "$(docker info 2>&1 | tail -n 5)" >&2
        exit 1
    fi
    version="$(docker compose version --short 2>/dev/null)" || {
        printf '%s: %s\n' "$me" "Docker Compose v2 (the 'docker compose' plugin) is missing: https://docs.docker.com/compose/install/" >&2
        exit 1
    }
    version="${version#v}"
    major="${version%%.*}"
    minor="${version#*.}"
    minor="${minor%%.*}"
    # --wait counts a one-shot that another service depends on with
    # service_completed_successfully as done when it exits 0; 2.20 has that.
    if ! [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] ||
        ((major < 2 || (major == 2 && minor < 20))); then
        printf '%s: %s\n' "$me" "Docker Compose $version is too old; 2.20 or newer is needed: https://docs.docker.com/compose/install/" >&2
        exit 1
    fi
}

#   docker_engine_preflight NAME   exits 1 unless the engine is Docker Engine 25 or newer
#
# For `up` only: compose.yaml's health checks set start_interval, which Engine 25 (API
# 1.44) introduced; Compose 2.24 to 2.29 refuse the whole file on an older engine
# ("can't set healthcheck.start_interval as feature require Docker Engine v25 or
# later", https://github.com/docker/compose/pull/11360). An engine whose version
# cannot be read (not a number) is let through: Compose will say what it lacks.
docker_engine_preflight() {
    local me="$1" engine major
    engine="$(docker version --format '{{.Server.Version}}' 2>/dev/null)" || engine=""
    major="${engine%%.*}"
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 25)); then
        printf '%s: %s\n' "$me" "Docker Engine $engine is too old; 25 or newer is needed: https://docs.docker.com/engine/install/" >&2
        exit 1
    fi
}
