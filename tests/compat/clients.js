#!/usr/bin/env node
// tests/compat/clients.js — one Node.js Redis client library against a
// real tallyd, the way an application would use it.
//
//   node clients.js --client ioredis|node-redis --port P --password PW
//
// Runs: connect with AUTH, one record, a pipeline, MULTI/EXEC (and one
// with a refused event inside), durable acks, an error reply, reconnect.
// Every event names a key of its scenario and counts 1 request; the script
// prints `told <TAB> key <TAB> n` for the events the client was told
// succeeded, which the test compares with the rows in Postgres. Exits 1 when
// a reply is not what the protocol promises.
'use strict';

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2)
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port);
const password = args.password;
const lib = args.client;
const told = new Map();
const TS = '1767268800000';  // 2026-01-01T12:00:00Z

function record(key, spend = '1') {
  return ['TALLY.RECORD', 'key', key, 'spend', spend, 'ts', TS];
}
function tell(key, n = 1) {
  told.set(key, (told.get(key) || 0) + n);
}
function check(cond, what) {
  if (!cond) {
    console.error(`${lib}: ${what}`);
    process.exitCode = 1;
  }
}
const k = (name) => `${lib}-${name}`;

async function withIoredis() {
  const Redis = require('ioredis');
  const open = () => new Redis({ port, host: '127.0.0.1', password, maxRetriesPerRequest: 1 });
  let r = open();
  check(await r.ping() === 'PONG', 'PING');
  if (await r.call(...record(k('single'))) === 'OK') tell(k('single'));

  const p = r.pipeline();
  for (let i = 0; i < 100; ++i) p.call(...record(k('pipeline')));
  for (const [err, res] of await p.exec()) if (!err && res === 'OK') tell(k('pipeline'));

  const m = r.multi();
  for (let i = 0; i < 10; ++i) m.call(...record(k('multi')));
  for (const [err, res] of await m.exec()) if (!err && res === 'OK') tell(k('multi'));

  const bad = r.multi();
  for (let i = 0; i < 3; ++i) bad.call(...record(k('multi-refused')));
  bad.call(...record(k('multi-refused'), 'abc'));
  let results;
  try {
    results = await bad.exec();
  } catch (e) {
    results = [];
  }
  for (const [err, res] of results) if (!err && res === 'OK') tell(k('multi-refused'));
  check(results.length === 0 || results.every(([err]) => err), 'a refused event must fail the whole EXEC');

  try {
    await r.call(...record(k('error'), '-1'));
    check(false, 'a negative spend was accepted');
  } catch (e) {
    check(/negative_value spend/.test(e.message), `error reply: ${e.message}`);
  }

  const d = open();
  check(await d.call('TALLY.ACK', 'durable') === 'OK', 'TALLY.ACK durable');
  const dp = d.pipeline();
  for (let i = 0; i < 20; ++i) dp.call(...record(k('durable')));
  for (const [err, res] of await dp.exec()) if (!err && res === 'OK') tell(k('durable'));
  d.disconnect();

  r.disconnect();
  r = open();
  if (await r.call(...record(k('reconnect'))) === 'OK') tell(k('reconnect'));
  r.disconnect();
}

async function withNodeRedis() {
  const { createClient } = require('redis');
  // Default options: node-redis 6 opens with HELLO 3 (RESP3) AUTH ...
  const open = async () => {
    const c = createClient({ socket: { port, host: '127.0.0.1', reconnectStrategy: false }, password });
    c.on('error', (e) => check(false, `client error event: ${e.message}`));
    await c.connect();
    return c;
  };
  let r = await open();
  check(await r.ping() === 'PONG', 'PING');
  if (await r.sendCommand(record(k('single'))) === 'OK') tell(k('single'));

  const p = r.multi();
  for (let i = 0; i < 100; ++i) p.addCommand(record(k('pipeline')));
  for (const res of await p.execAsPipeline()) if (res === 'OK') tell(k('pipeline'));

  const m = r.multi();
  for (let i = 0; i < 10; ++i) m.addCommand(record(k('multi')));
  for (const res of await m.exec()) if (res === 'OK') tell(k('multi'));

  const bad = r.multi();
  for (let i = 0; i < 3; ++i) bad.addCommand(record(k('multi-refused')));
  bad.addCommand(record(k('multi-refused'), 'abc'));
  try {
    const res = await bad.exec();
    check(false, `EXEC with a refused event resolved: ${JSON.stringify(res)}`);
    for (const x of res) if (x === 'OK') tell(k('multi-refused'));
  } catch (e) {
    const replies = e.replies || [];
    for (const x of replies) if (x === 'OK') tell(k('multi-refused'));
  }

  try {
    await r.sendCommand(record(k('error'), '-1'));
    check(false, 'a negative spend was accepted');
  } catch (e) {
    check(/negative_value spend/.test(e.message), `error reply: ${e.message}`);
  }

  const got = await r.sendCommand(['TALLY.LEADER']);
  check(got !== null && typeof got === 'object', `TALLY.LEADER is a map in RESP3: ${JSON.stringify(got)}`);

  const d = await open();
  check(await d.sendCommand(['TALLY.ACK', 'durable']) === 'OK', 'TALLY.ACK durable');
  const dp = d.multi();
  for (let i = 0; i < 20; ++i) dp.addCommand(record(k('durable')));
  for (const res of await dp.execAsPipeline()) if (res === 'OK') tell(k('durable'));
  await d.close();

  await r.close();
  r = await open();
  if (await r.sendCommand(record(k('reconnect'))) === 'OK') tell(k('reconnect'));
  await r.close();
}

(async () => {
  try {
    if (lib === 'ioredis') await withIoredis();
    else if (lib === 'node-redis') await withNodeRedis();
    else throw new Error(`unknown client ${lib}`);
  } catch (e) {
    console.error(`${lib}: ${e.stack || e}`);
    process.exitCode = 1;
  }
  for (const [key, n] of told) console.log(`told\t${key}\t${n}`);
})();
