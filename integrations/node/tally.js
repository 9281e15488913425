// integrations/node/tally.js — count a Node gateway's calls in tally: one
// TALLY.RECORD per call, sent to tallyd over the Redis protocol with ioredis.
//
//   const { TallyClient } = require('./tally');
//   const tally = new TallyClient();             // TALLY_URL, TALLY_ACK
//   await tally.record({ key: keyHash, user: 'alice', team: 't1', model: 'gpt-4o',
//                        spend: 0.00042, prompt_tokens: 120, completion_tokens: 30,
//                        status: 'ok' });
//   await tally.close();                         // on shutdown
//
// record() never throws and never retries: it resolves true when tallyd
// answered +OK, false when the event is lost (tallyd down or slow, or the
// event refused: the reason is logged). A retry could count a call twice,
// since tally has no per-event id to drop a second copy.
'use strict';

const Redis = require('ioredis');

// TALLY.RECORD's fields (docs/design.md §4). Ids are text; tally refuses an
// id that is empty, over 256 bytes, or holds a control character.
const ID_FIELDS = ['key', 'user', 'team', 'org', 'end_user', 'model', 'model_group', 'provider', 'endpoint',
                   'status'];
// Measures: spend is a decimal (a number or a decimal string: tally parses
// the text exactly and rounds once, half-to-even, to 10^-9); the rest are
// integers; ts is epoch milliseconds (default: when tallyd receives it).
const MEASURE_FIELDS = ['spend', 'prompt_tokens', 'completion_tokens', 'cache_read_tokens',
                        'cache_creation_tokens', 'ts'];

/// Returns TALLY.RECORD's arguments for one call's usage, leaving out fields
/// with no value (tally refuses empty ids; an absent measure counts as 0).
function recordArgs(usage) {
  const args = [];
  for (const name of ID_FIELDS) {
    const value = usage[name];
    if (value !== undefined && value !== null && value !== '')
      args.push(name, String(value));
  }
  // Tags are one comma-separated field: a comma inside a tag would split it.
  const tags = (usage.tags || []).filter((t) => t !== '').map((t) => String(t).replace(/,/g, '\uff0c'));
  if (tags.length)
    args.push('tags', tags.join(','));
  for (const name of MEASURE_FIELDS) {
    const value = usage[name];
    if (value !== undefined && value !== null && value !== 0 && value !== '')
      args.push(name, String(value));  // a number's shortest round-trip text
  }
  return args;
}

class TallyClient {
  /// url: tallyd's RESP address (default TALLY_URL, else redis://127.0.0.1:6380).
  /// ack: 'buffered' (+OK once tallyd holds it in memory) or 'durable' (+OK
  /// once persisted in Redis or tallyd's spill journal); default TALLY_ACK.
  /// timeoutMs bounds each record().
  constructor({ url = process.env.TALLY_URL || 'redis://127.0.0.1:6380',
                ack = process.env.TALLY_ACK || 'buffered', timeoutMs = 2000, logger = console } = {}) {
    if (ack !== 'buffered' && ack !== 'durable')
      throw new Error(`TALLY_ACK must be buffered or durable, not '${ack}'`);
    this.ack = ack;
    this.logger = logger;
    this.recorded = 0;
    this.lost = 0;
    this.redis = new Redis(url, {
      enableReadyCheck: false,              // tallyd has no INFO
      autoResendUnfulfilledCommands: false, // a resent command may be counted twice
      maxRetriesPerRequest: 1,              // fail while tallyd stays down, do not pile up
      commandTimeout: timeoutMs,
    });
    // Without a listener, a connection error would crash the process.
    this.redis.on('error', (err) => this.logger.warn(`tally: ${err.message}`));
  }

  /// Sends one call's usage; resolves true when tallyd acknowledged it.
  async record(usage) {
    const args = recordArgs(usage);
    try {
      if (this.ack === 'durable') {
        // The mode is per connection and a reconnect resets it, so it goes
        // with every event: a pipeline keeps the two on one connection, in
        // order, and costs one more +OK.
        const replies = await this.redis.pipeline().call('TALLY.ACK', 'durable').call('TALLY.RECORD', ...args).exec();
        for (const [err] of replies)
          if (err)
            throw err;
      } else {
        await this.redis.call('TALLY.RECORD', ...args);
      }
      this.recorded += 1;
      return true;
    } catch (err) {
      this.lost += 1;
      this.logger.error(`tally: event not recorded (${err.message}): ${args.join(' ')}`);
      return false;
    }
  }

  /// Closes the connection once the replies in flight are in.
  async close() {
    try {
      await this.redis.quit();
    } catch (err) {
      this.redis.disconnect();
    }
  }
}

module.exports = { TallyClient, recordArgs };
