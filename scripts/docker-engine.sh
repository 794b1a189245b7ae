#!/usr/bin/env bash
# Start a Docker engine and build the sandbox test image, for tests and CI on a Debian
# machine where we are root and only the package registries are reachable.
#
#   bash scripts/docker-engine.sh
#
# Idempotent; every stage is skipped when its result is already there:
#   1. packages   apt-get install docker.io debootstrap docker-compose (when missing)
#   2. engine     dockerd --bridge=none --iptables=false ...     (when no engine answers)
#   3. base       debootstrap minbase bookworm + docker import   (when $BASE_TAG is missing)
#   4. wheels     pip download torch numpy matplotlib ... on the host (cached)
#   5. image      docker build sandbox/Dockerfile FROM $BASE_TAG (when $IMAGE_TAG is missing
#                 or older than sandbox/Dockerfile)
#
# It always exits 0: when it cannot do something it says why, and the Docker tests
# skip with their own reason. The engine is left running for whoever comes next.
#
# Knobs (environment): REPRODESK_DOCKER_IMAGE (default reprodesk-sandbox:test),
# REPRODESK_DOCKER_BASE (reprodesk-base:bookworm), REPRODESK_DOCKER_CACHE
# (/var/cache/reprodesk-docker), DEBIAN_MIRROR (http://deb.debian.org/debian).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
IMAGE_TAG=${REPRODESK_DOCKER_IMAGE:-reprodesk-sandbox:test}
BASE_TAG=${REPRODESK_DOCKER_BASE:-reprodesk-base:bookworm}
CACHE=${REPRODESK_DOCKER_CACHE:-/var/cache/reprodesk-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ENGINE_LOG=/tmp/reprodesk-dockerd.log
TORCH_VERSION=2.13.0

T0=$(date +%s)
STAGE_T=$T0

say() { echo "docker-engine: $*"; }
stage_done() {  # stage name, what happened
    local now
    now=$(date +%s)
    say "$1: $2 ($((now - STAGE_T)) s)"
    STAGE_T=$now
}
give_up() {
    say "cannot provide a Docker engine with the sandbox image: $*"
    say "the Docker sandbox tests will be skipped (total $(($(date +%s) - T0)) s)"
    exit 0
}
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# ------------------------------------------------------------------ 1. packages
if command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 &&
    command -v docker-compose >/dev/null 2>&1; then
    stage_done packages "dockerd, debootstrap and docker-compose already installed"
elif [ "$(id -u)" != 0 ]; then
    give_up "dockerd/debootstrap are missing and we are not root to install them"
elif ! command -v apt-get >/dev/null 2>&1; then
    give_up "dockerd/debootstrap are missing and there is no apt-get"
else
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq >/tmp/reprodesk-apt.log 2>&1 ||
        ! apt-get install -y -qq --no-install-recommends docker.io debootstrap docker-compose \
            >>/tmp/reprodesk-apt.log 2>&1; then
        tail -n 5 /tmp/reprodesk-apt.log | sed 's/^/    /'
        give_up "apt-get install docker.io debootstrap failed (log: /tmp/reprodesk-apt.log)"
    fi
    stage_done packages "installed docker.io $(dpkg-query -W -f='${Version}' docker.io) and debootstrap"
fi

# ------------------------------------------------------------------ 2. engine
if engine_answers; then
    stage_done engine "an engine already answers ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
elif [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "$DOCKER_HOST" ]; then
    give_up "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine behind it"
elif [ "$(id -u)" != 0 ]; then
    give_up "no engine answers and we are not root to start dockerd"
else
    # No bridge and no iptables: this machine kind has no iptables rules to spare, and
    # sandbox containers use network "none" anyway. setsid: the engine outlives us.
    setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
        >"$ENGINE_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        engine_answers && break
        sleep 1
    done
    if ! engine_answers; then
        tail -n 5 "$ENGINE_LOG" | sed 's/^/    /'
        give_up "dockerd did not answer within 60 s (log: $ENGINE_LOG)"
    fi
    stage_done engine "started dockerd $(docker version -f '{{.Server.Version}}' 2>/dev/null) (log: $ENGINE_LOG)"
fi

# ------------------------------------------------------------------ 3. base image
mkdir -p "$CACHE" || give_up "cannot create the cache dir $CACHE"
if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    stage_done base "$BASE_TAG already present"
else
    ROOTFS=$CACHE/rootfs-bookworm
    if [ ! -f "$ROOTFS/.complete" ]; then
        rm -rf "$ROOTFS"
        if ! debootstrap --variant=minbase --include=python3,python3-venv bookworm \
            "$ROOTFS" "$MIRROR" >/tmp/reprodesk-debootstrap.log 2>&1; then
            tail -n 5 /tmp/reprodesk-debootstrap.log | sed 's/^/    /'
            give_up "debootstrap failed (log: /tmp/reprodesk-debootstrap.log)"
        fi
        # Nothing of apt's download cache belongs in the image.
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
        touch "$ROOTFS/.complete"
    fi
    if ! tar -C "$ROOTFS" --exclude=./.complete -c . | docker import - "$BASE_TAG" >/dev/null; then
        give_up "docker import of $ROOTFS failed"
    fi
    stage_done base "built $BASE_TAG from debootstrap (rootfs cached in $ROOTFS)"
fi

# ------------------------------------------------------------------ 4. wheels
# The build context mirrors the repo's layout (sandbox/Dockerfile, sandbox/wheels/),
# so the same Dockerfile builds from the repo root (docker compose) and from here.
CTX=$CACHE/context
WHEELS=$CTX/sandbox/wheels
PY_IN_IMAGE=$(docker run --rm --network none "$BASE_TAG" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    give_up "$BASE_TAG has no working python3"
if [ -f "$WHEELS/.complete-$TORCH_VERSION-py$PY_IN_IMAGE" ]; then
    stage_done wheels "cached in $WHEELS"
else
    if [ -x "$REPO/.venv/bin/pip" ]; then PIP=("$REPO/.venv/bin/pip"); else PIP=(python3 -m pip); fi
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # --python-version/--only-binary: wheels for the image's interpreter, not the host's.
    # pip's constraints (/etc/xdg/pip) still apply; torch==2.13.0 lies within them.
    if ! "${PIP[@]}" download -q --only-binary=:all: --python-version "$PY_IN_IMAGE" \
        -d "$WHEELS" "torch==$TORCH_VERSION" numpy matplotlib "setuptools>=77.0.3" \
        >/tmp/reprodesk-wheels.log 2>&1; then
        tail -n 5 /tmp/reprodesk-wheels.log | sed 's/^/    /'
        give_up "pip download of the image's wheels failed (log: /tmp/reprodesk-wheels.log)"
    fi
    touch "$WHEELS/.complete-$TORCH_VERSION-py$PY_IN_IMAGE"
    stage_done wheels "downloaded $(ls "$WHEELS"/*.whl | wc -l) wheels ($(du -sh "$WHEELS" | cut -f1)) for python $PY_IN_IMAGE"
fi

# ------------------------------------------------------------------ 5. sandbox image
cp sandbox/Dockerfile "$CTX/sandbox/Dockerfile"
DOCKERFILE_SUM=$(sha256sum sandbox/Dockerfile | cut -c1-16)
BUILT_SUM=$(docker image inspect -f '{{index .Config.Labels "reprodesk.dockerfile"}}' \
    "$IMAGE_TAG" 2>/dev/null || true)
if [ "$BUILT_SUM" = "$DOCKERFILE_SUM" ]; then
    stage_done image "$IMAGE_TAG already built from this Dockerfile"
else
    OLD_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE_TAG" 2>/dev/null || true)
    # The classic builder: what docker-py and compose v1 use too, and no buildx needed.
    if ! DOCKER_BUILDKIT=0 docker build -q -f "$CTX/sandbox/Dockerfile" -t "$IMAGE_TAG" \
        --build-arg "BASE=$BASE_TAG" --label "reprodesk.dockerfile=$DOCKERFILE_SUM" \
        "$CTX" >/tmp/reprodesk-image.log 2>&1; then
        tail -n 15 /tmp/reprodesk-image.log | sed 's/^/    /'
        give_up "docker build of $IMAGE_TAG failed (log: /tmp/reprodesk-image.log)"
    fi
    if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect -f '{{.Id}}' "$IMAGE_TAG")" ]; then
        docker image rm "$OLD_ID" >/dev/null 2>&1 || true # the image this one replaced
    fi
    stage_done image "built $IMAGE_TAG FROM $BASE_TAG ($(docker image inspect -f '{{.Size}}' "$IMAGE_TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
fi

say "ready: engine answers, image $IMAGE_TAG present (total $(($(date +%s) - T0)) s)"
