#!/usr/bin/python3
"""tests/compat/redis_py.py — redis-py (Debian's python3-redis) against a
real tallyd, sync and asyncio, the way an application would use it.

    redis_py.py --port P --password PW

Same scenarios and output as clients.js: `told <TAB> key <TAB> n` for the
events the client was told succeeded; exit 1 when a reply breaks the
protocol's promise.
"""
import argparse
import asyncio
import re
import sys

import redis
import redis.asyncio

TS = "1767268800000"
told = {}
failed = False


def record(key, spend="1"):
    return ("TALLY.RECORD", "key", key, "spend", spend, "ts", TS)


def tell(key, n=1):
    told[key] = told.get(key, 0) + n


def check(cond, what):
    global failed
    if not cond:
        print(f"redis-py: {what}", file=sys.stderr)
        failed = True


def k(name):
    return f"redis-py-{name}"


def sync_scenarios(port, password):
    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    check(r.ping() is True, "PING")
    if r.execute_command(*record(k("single"))) == b"OK":
        tell(k("single"))

    p = r.pipeline(transaction=False)
    for _ in range(100):
        p.execute_command(*record(k("pipeline")))
    for res in p.execute(raise_on_error=False):
        if res == b"OK":
            tell(k("pipeline"))

    # pipeline() is MULTI/EXEC by default.
    m = r.pipeline()
    for _ in range(10):
        m.execute_command(*record(k("multi")))
    for res in m.execute():
        if res == b"OK":
            tell(k("multi"))

    bad = r.pipeline()
    for _ in range(3):
        bad.execute_command(*record(k("multi-refused")))
    bad.execute_command(*record(k("multi-refused"), "abc"))
    try:
        res = bad.execute()
        check(False, f"EXEC with a refused event succeeded: {res}")
    except redis.ResponseError as e:
        check("bad_number spend" in str(e) or "not_counted" in str(e), f"EXEC error: {e}")

    try:
        r.execute_command(*record(k("error"), "-1"))
        check(False, "a negative spend was accepted")
    except redis.ResponseError as e:
        check(re.search(r"negative_value spend", str(e)) is not None, f"error reply: {e}")

    d = redis.Redis(host="127.0.0.1", port=port, password=password, single_connection_client=True)
    check(d.execute_command("TALLY.ACK", "durable") == b"OK", "TALLY.ACK durable")
    dp = d.pipeline(transaction=False)
    for _ in range(20):
        dp.execute_command(*record(k("durable")))
    for res in dp.execute():
        if res == b"OK":
            tell(k("durable"))
    d.close()

    r.connection_pool.disconnect()  # the next command reconnects
    if r.execute_command(*record(k("reconnect"))) == b"OK":
        tell(k("reconnect"))
    r.close()


async def async_scenarios(port, password):
    r = redis.asyncio.Redis(host="127.0.0.1", port=port, password=password)
    if await r.execute_command(*record(k("asyncio"))) == b"OK":
        tell(k("asyncio"))
    p = r.pipeline()
    for _ in range(10):
        p.execute_command(*record(k("asyncio")))
    for res in await p.execute():
        if res == b"OK":
            tell(k("asyncio"))
    await r.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--password", required=True)
    a = ap.parse_args()
    try:
        sync_scenarios(a.port, a.password)
        asyncio.run(async_scenarios(a.port, a.password))
    except Exception as e:  # any exception is a compatibility failure
        check(False, f"{type(e).__name__}: {e}")
    for key, n in told.items():
        print(f"told\t{key}\t{n}")
    sys.exit(1 if failed else 0)


main()
