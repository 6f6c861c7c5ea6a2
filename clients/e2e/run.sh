#!/usr/bin/env bash
# End-to-end test of the demo page: needs Node.js 20 or newer with npm; installs what is
# missing (Debian's chromium and a font, as root or through sudo; playwright-core from
# package-lock.json), builds the hub (the page is embedded in the binary), runs the test.
# The screenshots land in clients/e2e/output/ (demo.png, demo-bob.png; not committed).
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

fail() { echo "e2e: $*" >&2; exit 1; }
command -v node >/dev/null || fail "node is missing: install Node.js 20 or newer"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "Node.js $(node --version) is too old: 20 or newer is needed"
command -v npm >/dev/null || fail "npm is missing: install it with Node.js 20 or newer (it installs playwright-core)"

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM_PATH:-}" ]; then
  # chromium only recommends its fonts (--no-install-recommends skips them): without one
  # the screenshots have no glyphs. apt-install refreshes empty package lists first.
  "$root/scripts/apt-install" chromium fonts-dejavu-core
fi

if [ ! -f node_modules/playwright-core/package.json ]; then
  # playwright-core never downloads a browser; the variable is belt and braces.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi

if [ -z "${REALTIMEHUB_BIN:-}" ]; then
  (cd "$root" && cargo build --release)
fi

exec node --test demo.test.mjs
