"""tally_callback — counts every LiteLLM call in tally.

A LiteLLM custom callback: for each logged call it sends one
`TALLY.RECORD field value ...` to a tallyd over the Redis protocol, built from
`kwargs["standard_logging_object"]` (LiteLLM's StandardLoggingPayload). The
field mapping, what is verified about it and how to enable the callback in a
proxy are in README.md beside this file.

Accounting must never fail a request: every error is caught and logged (at
most one ERROR line per 10 s, with the count of events lost), and a failed
TALLY.RECORD is not retried, because tally has no per-event id to drop a
second copy and a retry after a lost reply could count the call twice.

Settings come from the environment, read when the callback is created:
  TALLY_URL              tallyd's RESP address (default redis://127.0.0.1:6380)
  TALLY_PASSWORD         tallyd's resp_requirepass, when the URL carries none
  TALLY_ACK              buffered (default) or durable: durable makes every
                         connection send `TALLY.ACK durable`, so +OK means the
                         event is persisted (in Redis, or tallyd's fsynced
                         spill journal), not only in tallyd's memory
  TALLY_TIMEOUT          seconds to wait for a connection or a reply (default 5)
  TALLY_MAX_CONNECTIONS  connections to tallyd at most (default 16); logging
                         tasks beyond that wait for a free one
"""

import asyncio
import datetime
import hashlib
import logging
import math
import os
import re
import time

import redis.asyncio

try:
    from litellm.integrations.custom_logger import CustomLogger as _Base
except ImportError:  # lets the module load, and be tested, without LiteLLM

    class _Base:
        def __init__(self, *args, **kwargs):
            pass


log = logging.getLogger("tally_callback")

# tally's limits (docs/design.md §4, runtime/include/tally/event.hpp): an event
# that breaks one is refused whole, so values are made to fit before sending.
MAX_ID_BYTES = 256
MAX_TAGS = 64
MAX_TOKENS = 1_000_000_000_000

# C0 and C1 controls and DEL are refused by tally; lone surrogates (possible in
# a str decoded from JSON) cannot be encoded as UTF-8 at all.
_UNSENDABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_LOSS_REPORT_SECONDS = 10.0


def clean_id(value):
    """Returns `value` as an id tally accepts, or None when there is none.

    Only str and int are ids; anything else (None, "", bools, dicts) is None.
    Control characters become U+FFFD, so the id keeps its length and stays
    recognisable. An id longer than 256 bytes of UTF-8 becomes its first bytes,
    "~" and 16 hex digits of the SHA-256 of the whole id: cutting alone would
    merge distinct ids that share a prefix (end_user comes from the client).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = _UNSENDABLE.sub("\ufffd", str(value))
    raw = text.encode("utf-8")
    if len(raw) > MAX_ID_BYTES:
        suffix = "~" + hashlib.sha256(raw).hexdigest()[:16]
        text = raw[: MAX_ID_BYTES - len(suffix)].decode("utf-8", "ignore") + suffix
    return text or None


def clean_tags(tags):
    """Returns the request tags as tally's comma-separated list, or None.

    A comma inside one tag (LiteLLM's "User-Agent: ..." tags have them) becomes
    U+FF0C FULLWIDTH COMMA, so the tag stays one tag. Each tag is then cleaned
    like an id; empty ones are dropped, repeated ones sent once. Past 64
    distinct tags the rest are dropped (and logged), since tally would refuse
    the whole event.
    """
    if not isinstance(tags, (list, tuple)):
        return None
    out = []
    for tag in tags:
        if isinstance(tag, str):
            tag = tag.replace(",", "\uff0c")
        tag = clean_id(tag)
        if tag is not None and tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        log.warning("tally: %d request tags, only the first %d are counted", len(out), MAX_TAGS)
        del out[MAX_TAGS:]
    return ",".join(out) or None


def spend_text(cost):
    """Returns a cost in USD as tally's spend text, or None for zero or none.

    repr() of a float is the shortest decimal that reads back as the same
    float, so tally gets every digit the float carries and no invented ones
    (it may use scientific notation, "1.5e-07", which tally accepts). A
    negative, NaN or infinite cost is not sent (and logged): tally would refuse
    the event, and the call is still counted without it.
    """
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        return None
    if not math.isfinite(cost) or cost < 0:
        log.warning("tally: response_cost %r is not a cost; the call is counted without spend", cost)
        return None
    return repr(cost) if cost > 0 else None


def count_text(count):
    """Returns a token count as text, or None for zero, none or a non-count."""
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_TOKENS:
        return None
    return str(count)


def ts_text(start_time):
    """Returns the call's start as unix milliseconds, or None (tally then
    uses the time it receives the event). LiteLLM's startTime is epoch seconds."""
    if isinstance(start_time, datetime.datetime):
        start_time = start_time.timestamp()
    if isinstance(start_time, bool) or not isinstance(start_time, (int, float)):
        return None
    if not math.isfinite(start_time) or start_time <= 0:
        return None
    return str(round(start_time * 1000))


def cache_token_counts(payload):
    """Returns (cache read, cache creation) tokens from the usage dict.

    LiteLLM keeps the response's usage in metadata.usage_object (also in
    hidden_params.usage_object). Anthropic-style keys sit at its top; the
    OpenAI-style cache read is prompt_tokens_details.cached_tokens. Both name
    the same tokens when both are present, so the larger is taken, never the sum.
    """
    usage = (payload.get("metadata") or {}).get("usage_object") or (payload.get("hidden_params") or {}).get(
        "usage_object"
    )
    if not isinstance(usage, dict):
        return None, None
    details = usage.get("prompt_tokens_details") or {}

    def largest(*values):
        counts = [int(c) for c in map(count_text, values) if c is not None]
        return str(max(counts)) if counts else None

    return (
        largest(usage.get("cache_read_input_tokens"), details.get("cached_tokens")),
        largest(usage.get("cache_creation_input_tokens"), details.get("cache_creation_tokens")),
    )


def record_command(payload, succeeded, cache_hit):
    """Returns the TALLY.RECORD command (a list of str) for one logged call.

    Fields without a value are left out: tally refuses empty ids, and absent
    measures count as 0. A failed call and a cache hit carry no spend, as in
    LiteLLM's own spend tracking.
    """
    metadata = payload.get("metadata") or {}
    cache_read, cache_creation = cache_token_counts(payload)
    fields = (
        ("key", clean_id(metadata.get("user_api_key_hash"))),  # the hashed virtual key, never the key
        ("user", clean_id(metadata.get("user_api_key_user_id"))),
        ("team", clean_id(metadata.get("user_api_key_team_id"))),
        ("org", clean_id(metadata.get("user_api_key_org_id"))),
        ("end_user", clean_id(payload.get("end_user") or metadata.get("user_api_key_end_user_id"))),
        ("tags", clean_tags(payload.get("request_tags"))),
        ("model", clean_id(payload.get("model"))),
        ("model_group", clean_id(payload.get("model_group"))),
        ("provider", clean_id(payload.get("custom_llm_provider"))),
        ("endpoint", clean_id(metadata.get("user_api_key_request_route"))),
        ("spend", spend_text(payload.get("response_cost")) if succeeded and not cache_hit else None),
        ("prompt_tokens", count_text(payload.get("prompt_tokens"))),
        ("completion_tokens", count_text(payload.get("completion_tokens"))),
        ("cache_read_tokens", cache_read),
        ("cache_creation_tokens", cache_creation),
        ("status", "ok" if succeeded else "error"),
        ("ts", ts_text(payload.get("startTime"))),
    )
    command = ["TALLY.RECORD"]
    for name, value in fields:
        if value is not None:
            command += [name, value]
    return command


async def _connect_durable(connection):
    """Sets up a new connection as redis-py would (AUTH, SELECT), then asks
    tallyd for durable replies. redis-py calls this on every (re)connect, so a
    reconnected connection is durable again."""
    await connection.on_connect()
    await connection.send_command("TALLY.ACK", "durable")
    if await connection.read_response() != "OK":
        raise redis.ConnectionError("tallyd refused TALLY.ACK durable")


class TallyCallback(_Base):
    """Sends one TALLY.RECORD per successful or failed LiteLLM call.

    The connection pool is made on first use, inside the running event loop
    (redis.asyncio objects belong to the loop that made them). `recorded` and
    `lost` count the events tallyd answered +OK and those it did not get or
    refused.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.url = os.environ.get("TALLY_URL") or "redis://127.0.0.1:6380"
        self.password = os.environ.get("TALLY_PASSWORD") or None
        self.ack = (os.environ.get("TALLY_ACK") or "buffered").lower()
        if self.ack not in ("buffered", "durable"):
            raise ValueError(f"TALLY_ACK must be buffered or durable, not {self.ack!r}")
        self.timeout_seconds = float(os.environ.get("TALLY_TIMEOUT") or 5)
        self.max_connections = int(os.environ.get("TALLY_MAX_CONNECTIONS") or 16)
        self.recorded = 0
        self.lost = 0
        self._client = None
        self._loop = None
        self._unreported_losses = 0
        self._last_loss_report = -math.inf

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        await self._record(kwargs, succeeded=True)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        await self._record(kwargs, succeeded=False)

    async def close(self):
        """Closes the connections (for a clean shutdown; optional)."""
        if self._client is not None:
            client, self._client = self._client, None
            # redis-py 5 renamed close() to aclose(); 4.3 (Debian 12) has only close().
            await (client.aclose() if hasattr(client, "aclose") else client.close())
            await client.connection_pool.disconnect()

    def _connection(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url,
                password=self.password,
                max_connections=self.max_connections,
                timeout=self.timeout_seconds,  # wait for a free connection
                socket_timeout=self.timeout_seconds,
                socket_connect_timeout=self.timeout_seconds,
                decode_responses=True,
                redis_connect_func=_connect_durable if self.ack == "durable" else None,
            )
            self._client = redis.asyncio.Redis(connection_pool=pool)
            self._loop = loop
        return self._client

    async def _record(self, kwargs, succeeded):
        command = None
        try:
            payload = kwargs.get("standard_logging_object")
            if not isinstance(payload, dict):
                raise ValueError("no standard_logging_object in kwargs")
            cache_hit = payload.get("cache_hit") is True or kwargs.get("cache_hit") is True
            command = record_command(payload, succeeded, cache_hit)
            await self._connection().execute_command(*command)
            self.recorded += 1
        except Exception as error:  # a gateway must not fail a request because accounting is down
            self._report_loss(error, command)

    def _report_loss(self, error, command):
        self.lost += 1
        self._unreported_losses += 1
        log.debug("tally: not recorded: %s: %r", error, command)
        now = time.monotonic()
        if now - self._last_loss_report >= _LOSS_REPORT_SECONDS:
            log.error(
                "tally: %d usage event(s) not recorded (%d in total); last error: %s: %s",
                self._unreported_losses,
                self.lost,
                type(error).__name__,
                error,
            )
            self._unreported_losses = 0
            self._last_loss_report = now


# The instance a LiteLLM proxy config names: callbacks: ["tally_callback.tally_handler"].
tally_handler = TallyCallback()
