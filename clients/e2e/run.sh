#!/usr/bin/env bash
# End-to-end test of the demo page: installs what is missing (Debian's chromium, playwright-core
# from package-lock.json), builds the hub (the page is embedded in the binary), runs the test.
# The screenshot lands in clients/e2e/output/demo.png.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM_PATH:-}" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
fi

if [ ! -f node_modules/playwright-core/package.json ]; then
  # playwright-core never downloads a browser; the variable is belt and braces.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi

if [ -z "${REALTIMEHUB_BIN:-}" ]; then
  (cd "$root" && cargo build --release)
fi

exec node --test demo.test.mjs
