#!/usr/bin/env bash
# How long an open stream outlives its key: release demo servers, SSE streams on
# `GET /v1/events` (one event a second, idle in between), each key revoked through the admin
# API, and the time from just before the revoke request to the stream's end (the final
# chunk of its chunked body) as the client sees it.
#
# With DATABASE_URL (postgres://…): two servers on one schema of their own; each stream is
# opened on server B and its key revoked through server A, so the end travels through
# PostgreSQL's change feed. Without it: one server (in-memory store), stream and revoke on it.
#
# Needs: curl, python3 (and psql with DATABASE_URL). It installs nothing. Run by hand, not in
# CI. Usage: [DATABASE_URL=postgres://…] STREAMS=100 scripts/streams.sh
set -euo pipefail
cd "$(dirname "$0")/.."

streams=${STREAMS:-100}
schema=tak_streams
url=${DATABASE_URL:-}

echo "building the demo server (release, postgres)..." >&2
cargo build --release --example server --features postgres >&2

export ADMIN_TOKEN=streams-bench-admin-token
API_KEY_PEPPER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export API_KEY_PEPPER

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$url" ]; then
    psql "$url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

servers=1
args=()
if [ -n "$url" ]; then
  servers=2
  psql "$url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
  separator='?'
  [[ $url == *\?* ]] && separator='&'
  args=(--database-url "$url${separator}options=-c%20search_path%3D$schema")
fi

ports=()
for i in $(seq 0 $((servers - 1))); do
  RUST_LOG=warn target/release/examples/server --addr 127.0.0.1:0 "${args[@]}" \
    >"$work/out.$i" 2>"$work/err.$i" &
  pids+=($!)
done
for i in $(seq 0 $((servers - 1))); do
  for _ in $(seq 200); do
    grep -q "listening on" "$work/out.$i" && break
    sleep 0.05
  done
  line=$(grep -m1 "listening on" "$work/out.$i") || {
    cat "$work/err.$i" >&2
    exit 1
  }
  ports+=("${line##*:}")
done

python3 - "$streams" "$ADMIN_TOKEN" "${ports[@]}" <<'PY'
import http.client, json, socket, sys, time

streams, token, ports = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
admin_port, stream_port = ports[0], ports[-1]
admin = {"authorization": f"Bearer {token}", "content-length": "0"}
conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)

def call(method, path):
    conn.request(method, path, headers=admin)
    response = conn.getresponse()
    return response.status, response.read()

def open_stream(key):
    sock = socket.create_connection(("127.0.0.1", stream_port), timeout=30)
    sock.sendall(f"GET /v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\r\n".encode())
    received = b""
    while b"data: tick 1" not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:80]
    return sock

def until_end(sock):
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk

lags, calls = [], []
for s in range(streams):
    status, body = call("POST", f"/admin/accounts/streams{s}/keys")
    assert status == 201, (status, body)
    created = json.loads(body)
    sock = open_stream(created["key"])
    # Idle: the revoke lands between two events.
    time.sleep(0.2)
    started = time.perf_counter()
    status, body = call("POST", f"/admin/accounts/streams{s}/keys/{created['id']}/revoke")
    assert status == 200, (status, body)
    calls.append(time.perf_counter() - started)
    until_end(sock)
    lags.append(time.perf_counter() - started)
    sock.close()

def spread(values):
    values = sorted(v * 1000 for v in values)
    at = lambda q: values[round((len(values) - 1) * q)]
    return f"n={len(values)} p50 {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms, max {values[-1]:.2f} ms"

where = "through the other server" if len(ports) > 1 else "on the same server"
print(f"servers={len(ports)} streams={streams} (revoked {where})")
print(f"  revoke request itself: {spread(calls)}")
print(f"  revoke -> stream ended: {spread(lags)}")
PY
