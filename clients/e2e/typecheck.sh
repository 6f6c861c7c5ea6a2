#!/usr/bin/env bash
# Type-checks the JavaScript client's TypeScript declarations (clients/js/realtimehub.d.ts):
# compiles typecheck/usage.ts with `tsc --noEmit --strict` (typescript from package-lock.json,
# installed when missing; needs Node.js 20 or newer with npm).
set -euo pipefail
cd "$(dirname "$0")"
. ./npm-deps.sh
node_modules/.bin/tsc -p tsconfig.json --noEmit --strict
echo "typecheck: clients/js/realtimehub.d.ts OK (tsc $(node_modules/.bin/tsc --version | sed 's/^Version //'), --strict)"
