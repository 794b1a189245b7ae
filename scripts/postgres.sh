#!/usr/bin/env bash
# PostgreSQL server binaries for the Postgres checkpointer test (Debian's package).
# Best effort: where it cannot install, the test skips and says why. The test itself
# starts a throw-away server on 127.0.0.1 and stops it.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
    echo "postgres.sh: PostgreSQL binaries present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: not root; cannot apt-get install postgresql" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql > /dev/null
# Debian starts a cluster of its own on install where it can; the test does not use it.
service postgresql stop > /dev/null 2>&1 || true
echo "postgres.sh: installed $(ls /usr/lib/postgresql)"
