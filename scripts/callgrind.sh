#!/usr/bin/env bash
# Instructions per request in the release demo server, counted by callgrind (deterministic:
# the same binary and inputs give the same counts whatever else the machine does).
#
#   scripts/callgrind.sh [REQUESTS]        # default 2000 per route
#   KEEP=/tmp/cg scripts/callgrind.sh      # also keeps the dumps, for callgrind_annotate
#   LIMIT=1000000/1 scripts/callgrind.sh   # the key has a rate limit (requests/seconds)
#   LIMIT=1/86400 EXPECT=429 scripts/callgrind.sh   # a key over its limit: every request 429
#   TOKIO_WORKER_THREADS=1 scripts/callgrind.sh   # one worker: less run-to-run scatter
#   BODY='{"allowed_ips":["127.0.0.1"]}' scripts/callgrind.sh   # any create body for the key
#
# Starts the demo server, `examples/server/` (release, as `cargo run --release --example server` builds it: in-memory store) under
# `valgrind --tool=callgrind`, creates a key, warms both routes up, then for each route zeroes
# the counters, sends REQUESTS keep-alive HTTP/1.1 GETs over one connection (curl), dumps the
# counters and divides. Prints the open route (`/healthz`), the protected one (`/v1/ping` with a
# cached valid key), and the difference: what the API-key layer adds per request.
# Needs valgrind and curl. Run by hand; CI doesn't.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-2000}
port=${PORT:-3917}
token=callgrind-admin-token-0123456789
work=$(mktemp -d)
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --example server >&2
binary=target/release/examples/server

# --dump-instr=no --collect-systime=no: only the instruction totals are needed.
ADMIN_TOKEN=$token RUST_LOG=${RUST_LOG:-off} env -u DATABASE_URL valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  "$binary" --addr "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done

body='{}'
if [ -n "${LIMIT:-}" ]; then
  body="{\"rate_limit\":{\"requests\":${LIMIT%/*},\"per_seconds\":${LIMIT#*/}}}"
fi
body=${BODY:-$body}
key=$(curl -fs -X POST -H "authorization: Bearer $token" -H "content-type: application/json" -d "$body" \
  "http://127.0.0.1:$port/admin/accounts/callgrind/keys" |
  sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
[ -n "$key" ] || { echo "could not create a key" >&2; exit 1; }

# A curl config that sends $2 GETs of $1 on one keep-alive connection.
config() {
  local url=$1 count=$2
  for _ in $(seq "$count"); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$url"
  done
}
config "http://127.0.0.1:$port/healthz" "$requests" >"$work/open.cfg"
config "http://127.0.0.1:$port/v1/ping" "$requests" >"$work/protected.cfg"

# Instructions executed by the server while `curl -K $1` runs.
count() {
  local cfg=$1
  local expect=$2
  callgrind_control -z "$server_pid" >/dev/null
  curl -s -w '%{http_code}\n' -H "x-api-key: $key" -K "$cfg" >"$work/codes"
  callgrind_control -d "$server_pid" >/dev/null
  # Every answer must be the one this run measures (a 401 would measure a refusal instead).
  if [ -n "$expect" ] && grep -qv "^$expect\$" "$work/codes"; then
    echo "expected every answer to be $expect, got: $(sort "$work/codes" | uniq -c | tr '\n' ' ')" >&2
    exit 1
  fi
  # The newest dump's totals line: "totals: <Ir>".
  local dump
  dump=$(ls -t "$work"/cg."$server_pid".* | head -n 1)
  sed -n 's/^totals: \([0-9]*\).*/\1/p' "$dump"
}

# Warm-up: the key is cached, connections and allocator pools are in use.
expect=${EXPECT:-200}
count "$work/open.cfg" 200 >/dev/null
count "$work/protected.cfg" "" >/dev/null # a key with a budget of 1 spends it here

open=$(count "$work/open.cfg" 200)
protected=$(count "$work/protected.cfg" "$expect")
per_open=$((open / requests))
per_protected=$((protected / requests))
if [ -n "${KEEP:-}" ]; then
  # The dumps, for `callgrind_annotate --inclusive=yes KEEP/cg.*`.
  mkdir -p "$KEEP" && cp "$work"/cg.* "$KEEP"/
fi
printf '%-34s %12s\n' "route" "instr/request"
printf '%-34s %12d\n' "/healthz (open)" "$per_open"
printf '%-34s %12d\n' "/v1/ping (cached key, $expect)" "$per_protected"
printf '%-34s %12d\n' "difference (the layer)" "$((per_protected - per_open))"
