#!/usr/bin/env bash
# End-to-end test of the demo page: needs Node.js 20 or newer with npm; installs what is
# missing (Debian's chromium and a font, as root or through sudo; playwright-core from
# package-lock.json), builds the hub (the page is embedded in the binary), runs the test.
# The screenshots land in clients/e2e/output/ (demo.png, demo-bob.png; not committed).
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

# Node.js 20+ and npm, then `npm ci` when node_modules is missing or stale.
. ./npm-deps.sh

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM_PATH:-}" ]; then
  # chromium only recommends its fonts (--no-install-recommends skips them): without one
  # the screenshots have no glyphs. apt-install refreshes empty package lists first.
  "$root/scripts/apt-install" chromium fonts-dejavu-core
fi

if [ -z "${REALTIMEHUB_BIN:-}" ]; then
  (cd "$root" && cargo build --release)
fi

exec node --test demo.test.mjs
