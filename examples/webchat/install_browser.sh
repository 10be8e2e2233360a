#!/usr/bin/env sh
# Install what tests/test_webchat.py needs to run examples/05_webchat.py in a real browser:
# Debian's chromium package (the Playwright Python package is the browser extra; we never
# run `playwright install`, the test launches /usr/bin/chromium). .ci/run runs this script;
# the tests never install anything. Idempotent; needs root or password-less sudo for
# apt-get. Exits 0 when a browser is available afterwards.
set -eu

find_browser() {
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if browser=$(find_browser); then
  echo "browser: $browser"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "install_browser.sh: cannot install chromium: not root and no password-less sudo" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: cannot install chromium: no apt-get on this system" >&2
  exit 1
fi

$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
browser=$(find_browser)
echo "browser: $browser"
