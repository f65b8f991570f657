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
