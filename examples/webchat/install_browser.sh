#!/usr/bin/env sh
# Install what tests/test_webchat.py needs to run examples/05_webchat.py in a real browser:
# Debian's chromium-headless-shell package (the Playwright Python package is the browser
# extra; we never run `playwright install`). The headless shell is Chromium without the
# browser's own UI: tests/test_webchat.py ran in 19 s with it against 35 s with the full
# `chromium` (new headless mode), whose main process alone spent 3.4x the headless shell's
# CPU time (serially, this 2-core machine, 2026-12-04). A machine
# with only `chromium` (or another Chromium) still runs the tests. .ci/run runs this
# script; the tests never install anything. Idempotent; needs root or password-less sudo
# for apt-get. Exits 0 when a browser is available afterwards.
set -eu

find_browser() {
  for name in chromium-headless-shell chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

# Where the headless shell cannot be installed, any Chromium found will do (slower).
settle_for_any_browser() {
  if browser=$(find_browser); then
    echo "browser: $browser (chromium-headless-shell not installed: $1)"
    exit 0
  fi
  echo "install_browser.sh: cannot install chromium: $1" >&2
  exit 1
}

if command -v chromium-headless-shell >/dev/null 2>&1; then
  echo "browser: $(command -v chromium-headless-shell)"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  settle_for_any_browser "not root and no password-less sudo"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  settle_for_any_browser "no apt-get on this system"
fi

$SUDO apt-get update -q
# Debian bookworm's security archive has the headless shell since Chromium 130; older
# sources have only the full browser.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium-headless-shell ||
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
browser=$(find_browser)
echo "browser: $browser"
