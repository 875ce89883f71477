#!/usr/bin/env bash
# Several release demo servers on one PostgreSQL: how long after a revoke through one server
# the others refuse the key, and what the idle servers' change feeds cost the database.
#
# For each server count (default 1 2 4 8): starts that many servers (same ADMIN_TOKEN and
# API_KEY_PEPPER, one schema of their own in DATABASE_URL's database, each connection named
# `tak_proc_<n>` and `tak_proc_<n> change feed`), creates a key, then REVOCATIONS times:
# revokes it through server r mod N and polls /v1/ping with it on every *other* server (on
# the one server when N = 1) until each answers 401 — the lag is from just before the revoke
# request to that 401 — then reactivates it and waits until every server answers 200 again.
# Polling runs in python3 over keep-alive connections, one thread per waiting server, so
# each server is polled about once per loopback round trip whatever N is (a single poller
# walking the waiting servers in turn would add one round trip per server ahead of it).
#
# Then the same lag measured without polling: before each revoke, an event stream
# (GET /v1/events) is opened with the key on every other server, and a thread blocked in recv
# notes when each one ends (the server ends a stream as soon as it drops its key).
#
# Then, with the servers idle, over WINDOW seconds: connections by application_name and
# state (pg_stat_activity), notifications a listener on the shared channel receives per
# second (psql LISTEN tower_api_keys), heartbeats every feed received in all (from each
# server's /metrics: its own back plus other processes'), committed transactions per second
# in the database (pg_stat_database), and CPU time of the PostgreSQL processes (from /proc:
# the server must run on this machine); then the heartbeat round trips the feeds measured
# themselves (api_key_feed_delivery_seconds), all servers' histograms added up.
#
# Needs: curl, python3, psql. It installs nothing. Run by hand, not in CI.
# Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/test scripts/processes.sh [COUNTS...]
#        REVOCATIONS=100 WINDOW=10 (defaults)
#        SERVER=path/to/server: run that build of the demo (an earlier release, say) instead
#        of building this one
set -euo pipefail
cd "$(dirname "$0")/.."

counts=("$@")
((${#counts[@]})) || counts=(1 2 4 8 16)
revocations=${REVOCATIONS:-100}
window=${WINDOW:-10}
url=${DATABASE_URL:?set DATABASE_URL to a postgres:// URL}
schema=tak_processes

missing=()
for tool in curl python3 psql; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "processes.sh needs: ${missing[*]} (Debian: apt-get install curl python3 postgresql-client)" >&2
  exit 1
fi

server=${SERVER:-}
if [[ -z $server ]]; then
  echo "building the demo server (release, postgres)..." >&2
  cargo build --release --example server --features postgres >&2
  server=target/release/examples/server
fi

export ADMIN_TOKEN=processes-bench-admin-token
API_KEY_PEPPER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export API_KEY_PEPPER
separator='?'
[[ $url == *\?* ]] && separator='&'

work=$(mktemp -d)
pids=()
stop_servers() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_servers
  psql "$url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

for n in "${counts[@]}"; do
  psql "$url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null 2>&1
  ports=()
  for i in $(seq 0 $((n - 1))); do
    server_url="$url${separator}options=-c%20search_path%3D$schema&application_name=tak_proc_$i"
    RUST_LOG=warn "$server" --addr 127.0.0.1:0 \
      --database-url "$server_url" >"$work/out.$i" 2>"$work/err.$i" &
    pids+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 200); do
      grep -q "listening on" "$work/out.$i" && break
      sleep 0.05
    done
    line=$(grep -m1 "listening on" "$work/out.$i") || {
      cat "$work/err.$i" >&2
      echo "server $i did not start" >&2
      exit 1
    }
    ports+=("${line##*:}")
  done
  echo "== $n server(s) on ports ${ports[*]}" >&2

  python3 - "$revocations" "$ADMIN_TOKEN" "${ports[@]}" <<'PY'
import http.client, json, socket, sys, threading, time

revocations, token, ports = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
conns = {}

def call(i, method, path, headers=None):
    for attempt in range(3):
        conn = conns.get(i) or http.client.HTTPConnection("127.0.0.1", ports[i], timeout=10)
        conns[i] = conn
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            return response.status, body
        except (OSError, http.client.HTTPException):
            conn.close()
            conns.pop(i, None)
    raise RuntimeError(f"server {i} does not answer")

admin = {"authorization": f"Bearer {token}", "content-length": "0"}
status, body = call(0, "POST", "/admin/accounts/procs/keys", admin)
assert status in (200, 201), (status, body)
created = json.loads(body)
key, key_id = created["key"], created["id"]
ping = {"x-api-key": key}
key_path = f"/admin/accounts/procs/keys/{key_id}"

def wait_all(servers, expected, started, bound=10.0):
    """Polls each of `servers` from a thread of its own until it answers `expected`;
    returns each one's lag."""
    lags, failures = {}, []

    def poll(i):
        try:
            while True:
                status, _ = call(i, "GET", "/v1/ping", ping)
                if status == expected:
                    lags[i] = time.perf_counter() - started
                    return
                if status not in (200, 401):
                    raise RuntimeError(f"server {i} answered {status}")
                if time.perf_counter() - started > bound:
                    raise RuntimeError(f"server {i} still not {expected} after {bound} s")
        except Exception as err:  # reported by the caller
            failures.append(err)

    threads = [threading.Thread(target=poll, args=(i,)) for i in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return lags

n = len(ports)
wait_all(range(n), 200, time.perf_counter())
revoke_lags, reactivate_lags, revoke_calls = [], [], []
for r in range(revocations):
    by = r % n
    others = [i for i in range(n) if i != by] or [by]
    started = time.perf_counter()
    status, body = call(by, "POST", f"{key_path}/revoke", admin)
    assert status == 200, (status, body)
    revoke_calls.append(time.perf_counter() - started)
    revoke_lags += wait_all(others, 401, started).values()
    started = time.perf_counter()
    status, body = call(by, "POST", f"{key_path}/reactivate", admin)
    assert status == 200, (status, body)
    reactivate_lags += wait_all(range(n), 200, started).values()

def spread(values):
    values = sorted(v * 1000 for v in values)
    at = lambda q: values[round((len(values) - 1) * q)]
    return f"n={len(values)} p50 {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms, max {values[-1]:.2f} ms"

print(f"servers={n} revocations={revocations}")
print(f"  revoke request itself: {spread(revoke_calls)}")
print(f"  revoked -> 401 on {'the other servers' if n > 1 else 'the same server'}: {spread(revoke_lags)}")
print(f"  reactivated -> 200 on every server: {spread(reactivate_lags)}")

# The same lag without polling: an idle event stream (GET /v1/events) on every other server,
# read by a thread blocked in recv, ends when that server drops the key; nothing spins while
# the change travels, so the measurement doesn't compete with the servers for the cores.
def open_stream(i):
    sock = socket.create_connection(("127.0.0.1", ports[i]), timeout=30)
    sock.sendall(f"GET /v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\r\n".encode())
    received = b""
    while b"data: tick 1" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            return None
        received += chunk
    return sock if received.startswith(b"HTTP/1.1 200") else None

def until_end(sock, ends, i):
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    ends[i] = time.perf_counter()
    sock.close()

if open_stream(0) is None:
    print("  (no /v1/events on this build: stream lags not measured)")
    sys.exit(0)
stream_lags = []
for r in range(revocations):
    by = r % n
    others = [i for i in range(n) if i != by] or [by]
    streams = {i: open_stream(i) for i in others}
    assert all(streams.values()), "a stream was refused"
    ends = {}
    readers = [threading.Thread(target=until_end, args=(sock, ends, i)) for i, sock in streams.items()]
    for reader in readers:
        reader.start()
    time.sleep(0.05)  # idle: the revoke lands between two events
    started = time.perf_counter()
    status, body = call(by, "POST", f"{key_path}/revoke", admin)
    assert status == 200, (status, body)
    for reader in readers:
        reader.join()
    stream_lags += [end - started for end in ends.values()]
    status, body = call(by, "POST", f"{key_path}/reactivate", admin)
    assert status == 200, (status, body)
    wait_all(range(n), 200, time.perf_counter())
print(f"  revoked -> idle stream ended on {'the other servers' if n > 1 else 'the same server'} (no polling): {spread(stream_lags)}")
PY

  # Idle load: what the feeds cost the database with nothing happening.
  sleep 2
  psql "$url" -AtF ' ' -c "SELECT coalesce(nullif(application_name, ''), '(none)'), state, count(*)
    FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tak_proc_%'
    GROUP BY 1, 2 ORDER BY 1, 2" | sed 's/^/  connection: /'
  xacts() { psql "$url" -Atc "SELECT pg_stat_clear_snapshot(); SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()" | tail -1; }
  pg_cpu() { # clock ticks of every process named postgres
    python3 -c '
import os
total = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    if name == "postgres":
        total += int(rest[11]) + int(rest[12])
print(total)'
  }
  feed_heartbeats() { # heartbeats every feed received (its own back + others'), or "n/a"
    local total=0 text own foreign
    for port in "${ports[@]}"; do
      text=$(curl -s "http://127.0.0.1:$port/metrics")
      own=$(sed -n 's/^api_key_feed_delivery_seconds_count //p' <<<"$text")
      foreign=$(sed -n 's/^api_key_feed_foreign_heartbeats_total //p' <<<"$text")
      [[ -n $own && -n $foreign ]] || { echo n/a; return; }
      total=$((total + own + foreign))
    done
    echo "$total"
  }
  x0=$(xacts)
  c0=$(pg_cpu)
  t0=$(date +%s.%N)
  h0=$(feed_heartbeats)
  notes=$(psql "$url" -c "LISTEN tower_api_keys" -c "SELECT pg_sleep($window)" -c "SELECT 1" 2>&1 |
    grep -c 'Asynchronous notification' || true)
  h1=$(feed_heartbeats)
  t1=$(date +%s.%N)
  c1=$(pg_cpu)
  x1=$(xacts)
  ticks=$(getconf CLK_TCK)
  python3 - "$n" "$window" "$notes" "$h0" "$h1" "$t0" "$t1" "$x0" "$x1" "$c0" "$c1" "$ticks" <<'PY'
import sys
n, window, notes = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
h0, h1 = sys.argv[4:6]
t0, t1, x0, x1, c0, c1, ticks = (float(v) for v in sys.argv[6:])
if "n/a" in (h0, h1):  # a release whose /metrics doesn't show the feed: every feed hears all
    feeds = f"{n * notes / window:.0f}/s if every feed hears all of them"
else:
    feeds = f"{(int(h1) - int(h0)) / (t1 - t0):.1f}/s counted by the {n} feeds"
print(f"  idle over {window:.0f} s: a listener on the shared channel receives "
      f"{notes / window:.1f} notifications/s; heartbeats received in all: {feeds}; "
      f"{(x1 - x0) / window:.1f} commits/s in the whole database (every client of it, this probe included); "
      f"PostgreSQL CPU {1000 * (c1 - c0) / ticks / window:.1f} ms/s")
PY
  # What the feeds measured themselves: every heartbeat's round trip since the servers started.
  for port in "${ports[@]}"; do curl -s "http://127.0.0.1:$port/metrics"; done | python3 -c '
import collections, sys
buckets = collections.Counter()
for line in sys.stdin:
    if line.startswith("api_key_feed_delivery_seconds_bucket{le=\""):
        bound, count = line[len("api_key_feed_delivery_seconds_bucket{le=\""):].split("\"} ")
        buckets[bound] += int(count)
if buckets:
    total = buckets["+Inf"]
    shown = ", ".join(f"<= {float(b) * 1000:g} ms {100 * buckets[b] / total:.1f}%"
                      for b in ("0.001", "0.0025", "0.005", "0.01", "0.05") if total)
    print(f"  heartbeat round trips measured by the feeds: n={total}, {shown}")'
  stop_servers
done
