#!/usr/bin/python3
"""bench/read_probe.py — staleness of TALLY.GET across instances.

  read_probe.py WRITER_PORT READER_PORT [SAMPLES]

Each sample records one event (buffered ack, spend 1) for user "probe" on the
writer and polls TALLY.GET on the reader every 2 ms until the new total shows;
the time from sending the record to seeing it is one staleness sample (it
holds the writer's buffer interval, the flush, the invalidation and the
refill). Prints every sample and p50/p99/max in milliseconds.
"""
import sys
import time

import redis


def spend(conn):
    reply = conn.execute_command("TALLY.GET", "user", "probe")
    fields = dict(zip(reply[::2], reply[1::2]))
    return fields[b"spend"].decode()


def main():
    writer = redis.Redis(port=int(sys.argv[1]))
    reader = redis.Redis(port=int(sys.argv[2]))
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    start = int(float(spend(reader)))
    out = []
    for i in range(samples):
        want = "%d.000000000" % (start + i + 1)
        t0 = time.monotonic()
        assert writer.execute_command("TALLY.RECORD", "user", "probe", "spend", "1") == b"OK"
        deadline = t0 + 30
        while spend(reader) != want:
            if time.monotonic() > deadline:
                sys.exit("read_probe: the reader never showed %s" % want)
            time.sleep(0.002)
        out.append((time.monotonic() - t0) * 1000)
        time.sleep(0.05)  # let samples start at different points of the intervals
    out.sort()

    def pct(p):
        return out[min(len(out) - 1, int(round(p / 100 * (len(out) - 1))))]

    print("staleness samples (ms): " + " ".join("%.0f" % s for s in out))
    print("staleness p50 %.0f ms  p99 %.0f ms  max %.0f ms  (%d samples)" % (pct(50), pct(99), out[-1], len(out)))


if __name__ == "__main__":
    main()
