// Reconnect backoff, without a hub: a WebSocket that always fails, and the `random` option
// driving the jitter. The delay before attempt n is documented (realtimehub.d.ts,
// ReconnectingInfo) as random in [0, min(reconnectMaxMs, reconnectBaseMs * 2^(n-1))).
// Run: node --test clients/js/test/backoff.test.js (or with the others: see README.md)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { RealtimeHub } from '../realtimehub.js';

/** A WebSocket whose handshake always fails (asynchronously, as a real one does). */
class FailingWS {
  constructor() {
    this.readyState = 0;
    setImmediate(() => {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: '', wasClean: false });
    });
  }
  send() {
    throw new Error('not open');
  }
  close() {}
}

/** The REST probe after a failed handshake: a hub that does not say the key is bad. */
const fetchUnavailable = async () => ({ status: 503, json: async () => null });

/**
 * Connects with a failing WebSocket and returns the `reconnecting` events of the first
 * `randoms.length` attempts; `random()` returns randoms[i] for attempt i + 1. The client is
 * closed as soon as the last of them is scheduled, so only the earlier delays are waited for.
 */
function reconnectDelays(randoms, options = {}) {
  let calls = 0;
  const random = () => randoms[calls++] ?? 0;
  const hub = new RealtimeHub(
    { url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'u' },
    { WebSocket: FailingWS, fetch: fetchUnavailable, ...options, random },
  );
  const seen = [];
  return new Promise((resolve, reject) => {
    hub.on('reconnecting', (info) => {
      seen.push(info);
      if (seen.length === randoms.length) {
        setImmediate(() => {
          hub.close();
          if (calls === randoms.length) resolve(seen);
          else reject(new Error(`random() was called ${calls} times for ${randoms.length} attempts`));
        });
      }
    });
    hub.connect().then(
      () => reject(new Error('connect() resolved with a failing WebSocket')),
      (err) => {
        if (err.code !== 'closed') reject(err);
      },
    );
  });
}

/** The documented ceiling of attempt n. */
const ceiling = (n, base, max) => Math.min(max, base * 2 ** (n - 1));
/** Just below 1: the largest delay the jitter can pick. */
const TOP = 1 - 2 ** -40;

describe('reconnect backoff', () => {
  test('doubles per attempt from reconnectBaseMs (defaults: 500 ms base, 30 s cap)', async () => {
    // The earlier attempts draw 0 (retry at once), the last one the top of its range.
    for (let n = 1; n <= 8; n++) {
      const randoms = [...Array(n - 1).fill(0), TOP];
      const seen = await reconnectDelays(randoms);
      assert.deepEqual(
        seen.map((s) => s.attempt),
        randoms.map((_, i) => i + 1),
      );
      assert.equal(seen[n - 1].delayMs, ceiling(n, 500, 30000) - 1, `attempt ${n}`);
    }
    // 500, 1000, ..., 16000, then 500 * 64 = 32000 is capped at 30000.
    assert.equal(ceiling(7, 500, 30000), 30000);
  });

  test('grows 1, 2, 4, ... up to reconnectMaxMs and stays there', async () => {
    const seen = await reconnectDelays(Array(12).fill(TOP), { reconnectBaseMs: 1, reconnectMaxMs: 20 });
    assert.deepEqual(
      seen.map((s) => s.delayMs),
      [0, 1, 3, 7, 15, 19, 19, 19, 19, 19, 19, 19],
    );
  });

  test('the cap still holds at attempt 60 (the exponent is bounded)', async () => {
    const randoms = [...Array(59).fill(0), TOP];
    const seen = await reconnectDelays(randoms, { reconnectBaseMs: 1000, reconnectMaxMs: 45000 });
    assert.equal(seen[59].attempt, 60);
    assert.equal(seen[59].delayMs, 44999);
  });

  test('full jitter: the delay is floor(random() * ceiling), within [0, ceiling)', async () => {
    const randoms = [0, 0.5, TOP, 0.25, 0.75, 0.1, 0.9, 0.999];
    const seen = await reconnectDelays(randoms, { reconnectBaseMs: 3, reconnectMaxMs: 100 });
    seen.forEach(({ attempt, delayMs }, i) => {
      const top = ceiling(attempt, 3, 100);
      assert.equal(delayMs, Math.floor(randoms[i] * top), `attempt ${attempt}`);
      assert.ok(Number.isInteger(delayMs) && delayMs >= 0 && delayMs < top, `attempt ${attempt}: ${delayMs} in [0, ${top})`);
    });
  });

  test('with the default random source every delay stays in its range', async () => {
    const hub = new RealtimeHub(
      { url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'u' },
      { WebSocket: FailingWS, fetch: fetchUnavailable, reconnectBaseMs: 1, reconnectMaxMs: 8, maxReconnectAttempts: 10 },
    );
    const seen = [];
    hub.on('reconnecting', (info) => seen.push(info));
    await assert.rejects(hub.connect(), { code: 'reconnect_failed' });
    assert.equal(seen.length, 10);
    for (const { attempt, delayMs } of seen) {
      assert.ok(Number.isInteger(delayMs) && delayMs >= 0 && delayMs < ceiling(attempt, 1, 8), `attempt ${attempt}: ${delayMs}`);
    }
  });

  test('the random option must be a function', () => {
    const config = { url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'u' };
    assert.throws(() => new RealtimeHub(config, { WebSocket: FailingWS, random: 0.5 }), /option random must be a function/);
  });
});
