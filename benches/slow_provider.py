#!/usr/bin/env python3
"""Driver of the slow-provider benchmark (benches/slow_provider.sh): against a running Switchboard
whose `slow` provider (route `sms`) is rate-limited and whose `fast` provider (route `email`) is
not, queues BACKLOG SMS for `slow`, waits SETTLE seconds (the dispatcher takes each in once, to
set it waiting for its token), then sends email for `fast` at B_RATE a second for B_SECS seconds,
waits until every email is finished, and prints one line:

  RESULT backlog=… b_messages=… p50_ms=… p99_ms=… max_ms=… slow_sent=… queue_depth=…

p50/p99/max: the email's queue-to-attempt time, its first attempt's start (`time` − `latency_ms`)
minus its `created_at`, from GET /v1/messages/{id} (milliseconds on both ends). slow_sent: the
attempts `slow` made by the end of the email window (its backlog is mostly still waiting);
queue_depth: `switchboard_queue_depth` then.

Usage: slow_provider.py BASE_URL BACKLOG B_RATE B_SECS SETTLE
"""
import datetime, http.client, json, sys, threading, time, urllib.parse

base, backlog, b_rate, b_secs, settle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
host = urllib.parse.urlsplit(base)
SENDERS = 8


def connect():
    return http.client.HTTPConnection(host.hostname, host.port, timeout=30)


def call(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    return answer.status, data


def post_all(messages):
    """POSTs each message (several connections at once); the ids of the 202s, in order."""
    ids = [None] * len(messages)
    failures = []

    def worker(offset):
        conn = connect()
        for i in range(offset, len(messages), SENDERS):
            due = messages[i][0]
            if due is not None:
                time.sleep(max(0.0, due - time.monotonic()))
            status, data = call(conn, "POST", "/v1/messages", messages[i][1])
            if status == 202:
                ids[i] = json.loads(data)["id"]
            else:
                failures.append((status, data[:200]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"{len(failures)} sends refused, e.g. {failures[0]}")
    return ids


def metric(conn, name, label=""):
    status, data = call(conn, "GET", "/metrics")
    total = 0.0
    for line in data.decode().splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ms(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


sms = {"channel": "sms", "from": "+12016661234", "to": "+18045551234", "body": "bench"}
email = {"channel": "email", "from": "app@example.com", "to": "user@example.org", "subject": "bench", "body": "bench"}

post_all([(None, sms)] * backlog)
start = time.monotonic() + settle
count = int(b_rate * b_secs)
fast_ids = post_all([(start + i / b_rate, email) for i in range(count)])
conn = connect()
slow_sent = metric(conn, "switchboard_dispatch_attempts_total", 'provider="slow"')
depth = metric(conn, "switchboard_queue_depth")

waits = []
for id in fast_ids:
    for _ in range(3000):
        status, data = call(conn, "GET", f"/v1/messages/{id}")
        view = json.loads(data)
        if view.get("status") in ("sent", "failed") and view.get("attempts"):
            break
        time.sleep(0.01)
    else:
        sys.exit(f"email {id} never finished: {view}")
    first = view["attempts"][0]
    waits.append(ms(first["time"]) - first["latency_ms"] - ms(view["created_at"]))

waits.sort()
pick = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))]
print(f"RESULT backlog={backlog} b_messages={len(waits)} p50_ms={pick(0.50):.0f} p99_ms={pick(0.99):.0f} "
      f"max_ms={waits[-1]:.0f} slow_sent={slow_sent:.0f} queue_depth={depth:.0f}")
