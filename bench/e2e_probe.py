#!/usr/bin/python3
"""bench/e2e_probe.py — end-to-end staleness: TALLY.RECORD to a row in Postgres.

  e2e_probe.py RESP_PORT POSTGRES_URL SCHEMA SECONDS [MEAN_GAP_MS]

A sender thread records one event with a key never used before (spend 1,
buffered ack, as a gateway sends it) every MEAN_GAP_MS on average (default
100; each gap drawn uniformly from 0.5x to 1.5x, so samples land at every
phase of the buffer and flush intervals). The main thread asks Postgres
every 5 ms which of the outstanding keys have their tally_spend row; the
time from sending a record to the first poll that sees its row is one
sample. Polls go through one long-running psql (no psycopg here): one
indexed lookup of at most a few dozen keys, well under a millisecond.

Prints the samples' p50/p90/p99/max in milliseconds and how many were taken;
exits non-zero when a row did not show within 60 s (that is a lost event or
stage 2 falling behind, not a slow sample).
"""
import random
import subprocess
import sys
import threading
import time

import redis

POLL_S = 0.005
GIVE_UP_S = 60.0


class Psql:
    """One psql session; query() returns the rows of one statement as lines."""

    def __init__(self, url):
        self.proc = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0", url],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def query(self, sql):
        self.proc.stdin.write(sql + ";\n\\echo __end__\n")
        self.proc.stdin.flush()
        rows = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit("e2e_probe: psql ended")
            line = line.rstrip("\n")
            if line == "__end__":
                return rows
            if line:
                rows.append(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    port, url, schema, seconds = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    mean_gap = (float(sys.argv[5]) if len(sys.argv) > 5 else 100.0) / 1000
    run = "e2e-%d-%d" % (int(time.time()), random.randrange(1 << 30))
    conn = redis.Redis(port=port)
    pg = Psql(url)

    sent = {}          # key -> monotonic send time, until seen
    lock = threading.Lock()
    samples = []
    done_sending = threading.Event()
    failure = []       # the sender's error, reported by the main thread

    def sender():
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            key = "%s-%d" % (run, i)
            i += 1
            t0 = time.monotonic()
            reply = conn.execute_command("TALLY.RECORD", "key", key, "spend", "1")
            if reply != b"OK":
                failure.append("TALLY.RECORD answered %r" % reply)
                break
            with lock:
                sent[key] = t0
            time.sleep(random.uniform(0.5, 1.5) * mean_gap)
        done_sending.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    while True:
        if failure:
            sys.exit("e2e_probe: " + failure[0])
        with lock:
            waiting = dict(sent)
        if not waiting:
            if done_sending.is_set():
                break
            time.sleep(POLL_S)
            continue
        keys = ",".join("'%s'" % k for k in waiting)
        seen = pg.query("SELECT entity_id FROM %s.tally_spend WHERE entity_type = 'key' AND scope = '' "
                        "AND entity_id IN (%s)" % (schema, keys))
        now = time.monotonic()
        with lock:
            for key in seen:
                if key in sent:
                    samples.append((now - sent.pop(key)) * 1000)
            late = [k for k, t0 in sent.items() if now - t0 > GIVE_UP_S]
        if late:
            sys.exit("e2e_probe: %d rows not in Postgres after %.0f s (first: %s)" % (len(late), GIVE_UP_S, late[0]))
        time.sleep(POLL_S)
    pg.close()

    samples.sort()

    def pct(p):
        return samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))]

    print("staleness p50 %.0f ms  p90 %.0f ms  p99 %.0f ms  max %.0f ms  min %.0f ms  (%d samples)"
          % (pct(50), pct(90), pct(99), samples[-1], samples[0], len(samples)))


if __name__ == "__main__":
    main()
