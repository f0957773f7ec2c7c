#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/test_browser.py) when it is absent.
# Never fails the build: without apt-get or root (or passwordless sudo) it says so and the test
# skips itself with that reason. Playwright drives this binary; `playwright install` is never run.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: absent and no apt-get here; the browser test will be skipped"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "chromium: absent and not root (no passwordless sudo); the browser test will be skipped"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; then
    echo "chromium: installed $(/usr/bin/chromium --version 2>/dev/null | head -n1) in $(( $(date +%s) - start )) s"
else
    echo "chromium: apt-get install failed; the browser test will be skipped"
fi
exit 0
