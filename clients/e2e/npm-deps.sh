# Sourced by run.sh and typecheck.sh: checks for Node.js 20+ and npm, and installs this
# directory's packages (package-lock.json: playwright-core, typescript) when node_modules is
# missing or older than the lockfile.
fail() { echo "e2e: $*" >&2; exit 1; }
command -v node >/dev/null || fail "node is missing: install Node.js 20 or newer"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "Node.js $(node --version) is too old: 20 or newer is needed"
command -v npm >/dev/null || fail "npm is missing: install it with Node.js 20 or newer (it installs playwright-core and typescript)"

# npm writes node_modules/.package-lock.json on every install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # playwright-core never downloads a browser; the variable is belt and braces.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi
