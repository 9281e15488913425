#!/usr/bin/env python3
"""feed.py — drives the LiteLLM callback against a real tallyd and prints the
totals tally must end up with.

Imports integrations/litellm/tally_callback.py as a LiteLLM proxy would
(configured by environment variables, its module-level `tally_handler`), and
calls async_log_success_event / async_log_failure_event with
kwargs={"standard_logging_object": payload, ...} for every fixture in
fixtures/ (StandardLoggingPayload dicts built by hand after LiteLLM's type;
"status": "failure" ones go to the failure hook), --repeat times each, all
concurrently.

Independently of the callback's code, it derives from the fixtures' JSON text
what tally_spend must hold, from the mapping stated in
integrations/litellm/README.md, and prints one line per row:

  expect <TAB> entity_type scope entity_id spend prompt_tokens completion_tokens
         cache_read_tokens cache_creation_tokens requests successful_requests failed_requests

(tab-separated; spend with exactly 9 decimals, as Postgres prints numeric(38,9)),
and `events <TAB> N`. Exits 1 when an event was not recorded, or when a
callback whose tallyd is unreachable raised instead of logging.
"""

import argparse
import asyncio
import collections
import decimal
import hashlib
import json
import logging
import os
import pathlib
import socket
import sys
import unicodedata

HERE = pathlib.Path(__file__).resolve().parent
NANO = decimal.Decimal("0.000000001")


# --- the expectation, from the README's rules --------------------------------


def expected_id(value):
    """An id as the README says it is sent: controls -> U+FFFD, > 256 bytes ->
    prefix + "~" + 16 hex of its SHA-256, empty/None/non-text -> absent."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = "".join("\ufffd" if unicodedata.category(c) in ("Cc", "Cs") else c for c in str(value))
    if len(text.encode()) > 256:
        tail = "~" + hashlib.sha256(text.encode()).hexdigest()[:16]
        head = text
        while len(head.encode()) > 256 - len(tail):
            head = head[:-1]
        text = head + tail
    return text or None


def expected_tags(tags):
    out = []
    for tag in tags or []:
        tag = expected_id(tag.replace(",", "\uff0c") if isinstance(tag, str) else tag)
        if tag is not None and tag not in out:
            out.append(tag)
    return out[:64]


def expected_rows(fixtures, repeat):
    """(entity_type, scope, entity_id) -> [spend, prompt, completion,
    cache_read, cache_creation, requests, successful, failed]."""
    rows = collections.defaultdict(lambda: [decimal.Decimal(0)] + [0] * 7)
    for name, exact in fixtures:
        meta = exact["metadata"]
        failed = exact["status"] == "failure"
        spend = decimal.Decimal(0)
        if not failed and not exact["cache_hit"]:
            # tally rounds each event's spend half-to-even to the nano-unit.
            spend = exact["response_cost"].quantize(NANO, rounding=decimal.ROUND_HALF_EVEN)
        usage = meta.get("usage_object") or {}
        details = usage.get("prompt_tokens_details") or {}
        cache_read = max(usage.get("cache_read_input_tokens") or 0, details.get("cached_tokens") or 0)
        cache_creation = max(usage.get("cache_creation_input_tokens") or 0, details.get("cache_creation_tokens") or 0)
        measures = [spend, exact["prompt_tokens"], exact["completion_tokens"], cache_read, cache_creation, 1,
                    0 if failed else 1, 1 if failed else 0]

        user = expected_id(meta.get("user_api_key_user_id"))
        team = expected_id(meta.get("user_api_key_team_id"))
        entities = [
            ("key", "", expected_id(meta.get("user_api_key_hash"))),
            ("user", "", user),
            ("team", "", team),
            ("team_member", team or "", user if team else None),
            ("org", "", expected_id(meta.get("user_api_key_org_id"))),
            ("end_user", "", expected_id(exact["end_user"] or meta.get("user_api_key_end_user_id"))),
        ] + [("tag", "", tag) for tag in expected_tags(exact["request_tags"])]
        for entity_type, scope, entity_id in entities:
            if entity_id is None:
                continue
            row = rows[(entity_type, scope, entity_id)]
            for i, value in enumerate(measures):
                row[i] += value * repeat
    return rows


# --- the callback, as a proxy runs it ------------------------------------------


async def feed(handler, fixtures, repeat):
    calls = []
    for _ in range(repeat):
        for name, payload in fixtures:
            kwargs = {
                "standard_logging_object": payload,
                "litellm_call_id": payload["litellm_call_id"],
                "cache_hit": payload["cache_hit"],
                "response_cost": payload["response_cost"],
            }
            hook = handler.async_log_failure_event if payload["status"] == "failure" else handler.async_log_success_event
            calls.append(hook(kwargs, payload["response"], payload["startTime"], payload["endTime"]))
    await asyncio.gather(*calls)


async def check_unreachable_tallyd_is_logged_not_raised(module, payload):
    """A tallyd that refuses connections must cost the gateway nothing but a log line."""
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        os.environ["TALLY_URL"] = "redis://127.0.0.1:%d" % bound_not_listening.getsockname()[1]
        handler = module.TallyCallback()
        print("feed: one 'not recorded' error is expected next (a tallyd that is down)", file=sys.stderr)
        await handler.async_log_success_event({"standard_logging_object": payload}, None, None, None)
        await handler.close()
    return handler.lost == 1 and handler.recorded == 0


async def run(module, fixtures, repeat):
    handler = module.tally_handler
    await feed(handler, fixtures, repeat)
    await handler.close()
    down_ok = await check_unreachable_tallyd_is_logged_not_raised(module, fixtures[0][1])
    return handler.recorded, handler.lost, down_ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="tallyd's RESP port on 127.0.0.1")
    parser.add_argument("--repeat", type=int, default=20, help="times each fixture is logged")
    parser.add_argument("--ack", choices=("buffered", "durable"), default="buffered")
    parser.add_argument("--fixtures", default=str(HERE / "fixtures"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")

    paths = sorted(pathlib.Path(args.fixtures).glob("*.json"))
    # Floats as the proxy has them for the callback; Decimals of the very same
    # JSON text for the expectation.
    fixtures = [(p.stem, json.loads(p.read_text())) for p in paths]
    exact = [(p.stem, json.loads(p.read_text(), parse_float=decimal.Decimal)) for p in paths]

    os.environ["TALLY_URL"] = "redis://127.0.0.1:%d" % args.port
    os.environ["TALLY_ACK"] = args.ack
    sys.path.insert(0, str(HERE.parent.parent / "integrations" / "litellm"))
    import tally_callback

    recorded, lost, down_ok = asyncio.run(run(tally_callback, fixtures, args.repeat))

    events = len(fixtures) * args.repeat
    for (entity_type, scope, entity_id), row in sorted(expected_rows(exact, args.repeat).items()):
        cols = [entity_type, scope, entity_id, format(row[0].quantize(NANO), "f")] + [str(v) for v in row[1:]]
        print("expect\t" + "\t".join(cols))
    print("events\t%d" % events)
    if recorded != events or lost != 0:
        print("feed: %d of %d events recorded, %d lost" % (recorded, events, lost), file=sys.stderr)
        return 1
    if not down_ok:
        print("feed: a callback whose tallyd is down did not log the lost event", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
