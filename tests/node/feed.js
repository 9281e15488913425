#!/usr/bin/env node
// tests/node/feed.js — drives integrations/node/tally.js against a real
// tallyd and prints the totals tally must end up with.
//
//   node feed.js --port P [--repeat N] [--ack buffered|durable]
//
// Sends every call below --repeat times, all concurrently, through one
// TallyClient (ioredis must be resolvable: NODE_PATH names the node_modules
// the test installed from integrations/node/package-lock.json). Then, from
// the calls' own values and the rules in docs/design.md §4 (independently of
// tally.js), prints one line per tally_spend row, as tests/litellm/feed.py
// does:
//
//   expect <TAB> entity_type scope entity_id spend prompt_tokens completion_tokens
//          cache_read_tokens cache_creation_tokens requests successful_requests failed_requests
//
// and `events <TAB> N`. Exits 1 when an event was not recorded, or when a
// client whose tallyd is down threw instead of resolving false.
'use strict';

const net = require('net');
const path = require('path');
const { TallyClient } = require(path.join(__dirname, '..', '..', 'integrations', 'node', 'tally.js'));

// 2026-01-01T12:00:00Z: the calls land in one minute bucket.
const TS = 1767268800000;

// What a gateway hands over after each LLM call. Spends as gateways have
// them: floats (including one whose text is scientific and one that is not
// a short decimal), and a decimal string.
const CALLS = [
  { key: 'k-node-1', user: 'alice', team: 't1', org: 'o1', model: 'gpt-4o', provider: 'openai',
    endpoint: '/v1/chat/completions', tags: ['prod', 'app:chat'], spend: 0.00042, prompt_tokens: 120,
    completion_tokens: 30, status: 'ok', ts: TS },
  { key: 'k-node-1', user: 'bob', team: 't1', model: 'gpt-4o-mini', spend: '0.000000123',
    prompt_tokens: 900, completion_tokens: 12, cache_read_tokens: 512, status: 'ok', ts: TS + 1000 },
  { key: 'k-node-2', user: 'carol', end_user: 'customer-7', model: 'claude-3-5-sonnet', provider: 'anthropic',
    tags: ['batch,nightly'], spend: 1.5e-7, prompt_tokens: 10, completion_tokens: 5,
    cache_creation_tokens: 2048, status: 'ok', ts: TS + 2000 },
  { key: 'k-node-2', user: 'carol', model: 'claude-3-5-sonnet', status: 'error', ts: TS + 3000 },
  { key: 'k-node-3', team: 't2', model: 'gpt-4o', spend: 0.1 + 0.2, prompt_tokens: 1, status: 'ok',
    ts: TS + 4000 },
];

// --- the expectation ----------------------------------------------------------

const NANO_DIGITS = 9;

/// A decimal's text (plain or scientific) as an exact BigInt of nano-units,
/// rounded half-to-even, as tally parses spend.
function nanos(text) {
  const m = /^(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(text);
  if (!m)
    throw new Error(`not a decimal: ${text}`);
  const digits = (m[1] || '') + (m[2] || '');
  const scale = (m[2] || '').length - Number(m[3] || 0) - NANO_DIGITS;  // value = digits * 10^-scale nanos
  let n = BigInt(digits || '0');
  if (scale <= 0)
    return n * 10n ** BigInt(-scale);
  const div = 10n ** BigInt(scale);
  const q = n / div, r = n % div, half = div / 2n;
  return r > half || (r === half && q % 2n === 1n) ? q + 1n : q;
}

function formatNanos(n) {
  const s = n.toString().padStart(NANO_DIGITS + 1, '0');
  return `${s.slice(0, -NANO_DIGITS)}.${s.slice(-NANO_DIGITS)}`;
}

/// tally_spend rows: "entity_type\tscope\tentity_id" -> [spend, prompt, completion,
/// cache_read, cache_creation, requests, successful, failed].
function expectedRows(calls, repeat) {
  const rows = new Map();
  for (const c of calls) {
    const failed = c.status === 'error';
    const measures = [c.spend === undefined ? 0n : nanos(String(c.spend)), c.prompt_tokens || 0,
                      c.completion_tokens || 0, c.cache_read_tokens || 0, c.cache_creation_tokens || 0, 1,
                      failed ? 0 : 1, failed ? 1 : 0];
    const entities = [['key', '', c.key], ['user', '', c.user], ['team', '', c.team],
                      ['team_member', c.team || '', c.team ? c.user : undefined], ['org', '', c.org],
                      ['end_user', '', c.end_user],
                      ...(c.tags || []).map((t) => ['tag', '', t.replace(/,/g, '\uff0c')])];
    for (const [type, scope, id] of entities) {
      if (id === undefined)
        continue;
      const k = `${type}\t${scope}\t${id}`;
      if (!rows.has(k))
        rows.set(k, [0n, 0, 0, 0, 0, 0, 0, 0]);
      const row = rows.get(k);
      row[0] += measures[0] * BigInt(repeat);
      for (let i = 1; i < 8; ++i)
        row[i] += measures[i] * repeat;
    }
  }
  return rows;
}

// --- the client, as a gateway uses it -----------------------------------------

/// A client pointed at a port nothing listens on must resolve false and log.
async function downTallydIsLoggedNotThrown() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  await new Promise((resolve) => server.close(resolve));  // the port is now closed
  const quiet = { warn() {}, error() {} };
  const client = new TallyClient({ url: `redis://127.0.0.1:${port}`, timeoutMs: 500, logger: quiet });
  let ok;
  try {
    ok = await client.record(CALLS[0]);
  } catch (err) {
    return false;
  } finally {
    client.redis.disconnect();
  }
  return ok === false && client.lost === 1 && client.recorded === 0;
}

async function main() {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const port = Number(opt('port'));
  const repeat = Number(opt('repeat', '20'));
  const ack = opt('ack', 'buffered');
  if (!port)
    throw new Error('--port is required');

  const client = new TallyClient({ url: `redis://127.0.0.1:${port}`, ack, timeoutMs: 10000 });
  const sends = [];
  for (let r = 0; r < repeat; ++r)
    for (const c of CALLS)
      sends.push(client.record(c));
  await Promise.all(sends);
  await client.close();
  const downOk = await downTallydIsLoggedNotThrown();

  const events = CALLS.length * repeat;
  for (const [k, row] of [...expectedRows(CALLS, repeat)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    console.log(['expect', k, formatNanos(row[0]), ...row.slice(1).map(String)].join('\t'));
  console.log(`events\t${events}`);
  if (client.recorded !== events || client.lost !== 0) {
    console.error(`feed: ${client.recorded} of ${events} events recorded, ${client.lost} lost`);
    return 1;
  }
  if (!downOk) {
    console.error('feed: a client whose tallyd is down did not resolve false');
    return 1;
  }
  return 0;
}

main().then((code) => process.exit(code), (err) => {
  console.error(err);
  process.exit(1);
});
