#!/usr/bin/env bash
# Headless Chromium for the HTML-export test (tests/integration/test_export_html.py).
# Best effort: Debian's package, as root, from the package registry. When it cannot be
# installed this says why and exits 0; the test then skips with the reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown))"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: not installed and cannot install it here (needs root and apt-get);" \
        "the HTML-export browser test will skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq chromium >/dev/null; then
    echo "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown))"
else
    echo "chromium: apt-get install failed; the HTML-export browser test will skip"
fi
exit 0
