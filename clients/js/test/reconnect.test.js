// Reconnect and recovery against the real hub: a TCP proxy that can cut the connection, a hub
// killed with SIGKILL and restarted on the same port and database, and a replay cap small
// enough that the client must page history itself.
// Run: node --experimental-websocket --test clients/js/test/*.test.js
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { RealtimeHub } from '../realtimehub.js';
import { cleanupAll, track, projectWithRoom, requireWebSocket, record, rest, sleep, startHub, startProxy, until, waitFor } from '../test-support/helpers.js';

requireWebSocket();
// Stops every hub, proxy and client left behind, also after a timed-out test.
after(cleanupAll);

const T = { timeout: 20000 };
const FAST = { reconnectBaseMs: 50, reconnectMaxMs: 200 };

/** Seqs of stored messages with this content, through REST. */
async function storedWith(base, apiKey, room, content) {
  const { messages } = await rest(base, 'GET', `/api/v1/rooms/${room}/messages?limit=1000`, { apiKey });
  return messages.filter((m) => m.content === content);
}

describe('through a cuttable proxy', () => {
  let hub;
  let proxy;
  const clients = [];
  before(async () => {
    // replay cap 5: a client away for more than 5 messages gets recovered:false and pages.
    hub = await startHub({ args: ['--replay-cap', '5'] });
    proxy = await startProxy(hub.port);
  });
  after(async () => {
    for (const c of clients) c.close();
    await proxy.close();
    await hub.stop();
  });
  function client(url, apiKey, userId, options = {}) {
    const c = track(new RealtimeHub({ url, apiKey, userId }, { ...FAST, ...options }));
    clients.push(c);
    return c;
  }

  test('rejoins with since and gets what was sent while away, once and in order', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(proxy.url, apiKey, 'alice');
    const bob = client(hub.base, apiKey, 'bob');
    const log = record(alice, 'message', 'joined', 'reconnecting', 'close', 'connected');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    await bob.join(room);
    await bob.send(room, 'before');
    await until(() => log.message.length === 1, 3000, 'the first message');

    proxy.state.blocked = true;
    proxy.cut();
    await waitFor(alice, 'close', () => true, 3000);
    assert.equal(log.close[0].willReconnect, true);
    for (let i = 1; i <= 4; i++) await bob.send(room, `away ${i}`);
    // Sent while disconnected: queued, resolved after the reconnect.
    const queued = alice.send(room, 'sent while away');
    assert.equal(alice.pending().length, 1);
    await sleep(150);
    proxy.state.blocked = false;

    const ack = await queued;
    await until(() => log.message.some((m) => m.content === 'sent while away'), 5000, 'own message after reconnect');
    await bob.send(room, 'after');
    await until(() => log.message.some((m) => m.content === 'after'), 3000, 'the live message after reconnect');

    assert.ok(log.reconnecting.length >= 1);
    assert.equal(log.connected.length >= 2, true);
    const rejoin = log.joined.at(-1);
    assert.equal(rejoin.recovered, true);
    assert.deepEqual(
      log.message.map((m) => m.content),
      ['before', 'away 1', 'away 2', 'away 3', 'away 4', 'sent while away', 'after'],
    );
    const seqs = log.message.map((m) => m.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.equal(new Set(log.message.map((m) => m.id)).size, log.message.length);
    assert.equal(ack.seq, 6);
    assert.equal((await storedWith(hub.base, apiKey, room, 'sent while away')).length, 1);
    assert.deepEqual(alice.pending(), []);
  });

  test('an unacknowledged message is re-sent with its tempId and stored once', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(proxy.url, apiKey, 'alice');
    const log = record(alice, 'message');
    await alice.connect();
    await alice.join(room);
    await alice.send(room, 'first');

    // The hub's answers stop reaching the client: the message is stored, the ack is lost.
    proxy.state.mute = true;
    const p = alice.send(room, 'ack lost');
    await until(async () => (await storedWith(hub.base, apiKey, room, 'ack lost')).length === 1, 3000, 'the hub to store it');
    proxy.state.mute = false;
    proxy.cut();

    const ack = await p;
    assert.equal(ack.seq, 2);
    await until(() => log.message.some((m) => m.content === 'ack lost'), 5000, 'the replayed message');
    await sleep(200);
    assert.deepEqual(log.message.map((m) => m.content), ['first', 'ack lost']);
    const stored = await storedWith(hub.base, apiKey, room, 'ack lost');
    assert.equal(stored.length, 1);
    assert.equal(stored[0].id, ack.id);
  });

  test('recovered:false: the client pages history and emits every missed message once, in order', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    // Pages of 4 so the paging loop runs several times.
    const alice = client(proxy.url, apiKey, 'alice', { historyPageLimit: 4 });
    const bob = client(hub.base, apiKey, 'bob');
    const log = record(alice, 'message', 'joined');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    await bob.join(room);
    await bob.send(room, 'm0');
    await until(() => log.message.length === 1, 3000, 'm0');

    proxy.state.blocked = true;
    proxy.cut();
    await waitFor(alice, 'close', () => true, 3000);
    for (let i = 1; i <= 13; i++) await bob.send(room, `m${i}`);
    proxy.state.blocked = false;
    // Live messages sent while the client pages must come after the paged ones.
    const rejoined = waitFor(alice, 'joined', (f) => f.recovered === false, 5000);
    await rejoined;
    await bob.send(room, 'm14');
    await bob.send(room, 'm15');
    await until(() => log.message.some((m) => m.content === 'm15'), 5000, 'm15');
    await sleep(200);
    assert.deepEqual(
      log.message.map((m) => m.content),
      Array.from({ length: 16 }, (_, i) => `m${i}`),
    );
    assert.equal(alice.lastSeq(room), 16);
  });

  test('typing state is dropped on disconnect; members are refreshed on rejoin', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(proxy.url, apiKey, 'alice');
    const bob = client(hub.base, apiKey, 'bob');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    await bob.join(room);
    await alice.setPresence('busy');
    proxy.state.blocked = true;
    proxy.cut();
    await waitFor(bob, 'user_left', (f) => f.userId === 'alice', 3000);
    proxy.state.blocked = false;
    const back = waitFor(bob, 'presence', (f) => f.userId === 'alice' && f.status === 'busy', 5000);
    await waitFor(alice, 'joined', () => true, 5000);
    assert.deepEqual(alice.members(room).map((m) => m.userId), ['alice', 'bob']);
    // The status set before the drop is restored on the new connection.
    await back;
  });
});

describe('heartbeat and rate limits', () => {
  test('a connection that stops answering is dropped by the heartbeat and reopened', T, async () => {
    const hub = await startHub();
    const proxy = await startProxy(hub.port);
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = track(new RealtimeHub({ url: proxy.url, apiKey, userId: 'alice' }, { ...FAST, heartbeatIntervalMs: 150, heartbeatTimeoutMs: 300 }));
    const log = record(alice, 'close', 'connected', 'message');
    try {
      await alice.connect();
      await alice.join(room);
      // The hub's bytes stop reaching the client, but the TCP connection stays up.
      proxy.state.mute = true;
      const closed = await waitFor(alice, 'close', () => true, 5000);
      assert.equal(closed.code, 4000);
      assert.equal(closed.reason, 'heartbeat timeout');
      proxy.state.mute = false;
      await until(() => log.connected.length >= 2, 5000, 'the reconnect');
      const { seq } = await alice.send(room, 'alive again');
      await until(() => log.message.some((m) => m.seq === seq), 3000, 'the message');
    } finally {
      alice.close();
      await proxy.close();
      await hub.stop();
    }
  });

  test('messages refused rate_limited are re-sent until stored, each once', T, async () => {
    const hub = await startHub({ args: ['--max-events-per-second', '5'] });
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = track(new RealtimeHub({ url: hub.base, apiKey, userId: 'alice' }, { ...FAST, rateLimitRetryMs: 300, heartbeatIntervalMs: 0 }));
    const log = record(alice, 'error', 'close');
    try {
      await alice.connect();
      await alice.join(room);
      const sends = Array.from({ length: 12 }, (_, i) => alice.send(room, `burst ${i}`));
      const acks = await Promise.all(sends);
      assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i + 1));
      assert.ok(log.error.some((e) => e.code === 'rate_limited'), 'the hub did refuse some');
      const { messages } = await rest(hub.base, 'GET', `/api/v1/rooms/${room}/messages?limit=100`, { apiKey });
      assert.equal(messages.length, 12);
      assert.equal(new Set(messages.map((m) => m.content)).size, 12);
    } finally {
      alice.close();
      await hub.stop();
    }
  });
});

describe('hub killed and restarted on the same port and database', () => {
  test('the client reconnects, recovers and its queued send resolves once', { timeout: 30000 }, async () => {
    const first = await startHub();
    let hub = first;
    const { port, db } = hub;
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = track(new RealtimeHub({ url: hub.base, apiKey, userId: 'alice' }, FAST));
    const log = record(alice, 'message', 'reconnecting', 'joined');
    try {
      await alice.connect();
      await alice.join(room);
      await alice.send(room, 'one');
      await hub.stop({ signal: 'SIGKILL', keepDb: true });
      await waitFor(alice, 'reconnecting', () => true, 3000);
      const queued = alice.send(room, 'two');
      // Written by someone else through REST while alice is away (on a fresh hub process).
      hub = await startHub({ port, db });
      await rest(hub.base, 'POST', `/api/v1/rooms/${room}/messages`, { apiKey, body: { userId: 'bob', content: 'from bob' } }).catch(async () => {
        // alice might already be re-sending; order then differs, which the test allows.
      });
      const ack = await queued;
      await until(() => log.message.length >= 3, 8000, 'three messages');
      await sleep(200);
      const contents = log.message.map((m) => m.content);
      assert.equal(contents.length, 3);
      assert.deepEqual(new Set(contents), new Set(['one', 'two', 'from bob']));
      assert.deepEqual(log.message.map((m) => m.seq), [1, 2, 3]);
      assert.equal(log.message.find((m) => m.content === 'two').id, ack.id);
      assert.equal((await storedWith(hub.base, apiKey, room, 'two')).length, 1);
    } finally {
      alice.close();
      await hub.stop();
      first.cleanup();
    }
  });
});

describe('with pages cut short by the hub (large messages)', () => {
  let hub;
  let proxy;
  const clients = [];
  before(async () => {
    // Answers may use half of a 16 KiB queue: a page holds about five 1.5 KB messages,
    // and a replay of more than that is refused (recovered:false).
    hub = await startHub({ args: ['--max-outbound-bytes', '16384'] });
    proxy = await startProxy(hub.port);
  });
  after(async () => {
    for (const c of clients) c.close();
    await proxy.close();
    await hub.stop();
  });

  test('recovery keeps paging past short pages until the announced seq', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = track(new RealtimeHub({ url: proxy.url, apiKey, userId: 'alice' }, FAST));
    const bob = track(new RealtimeHub({ url: hub.base, apiKey, userId: 'bob' }, FAST));
    clients.push(alice, bob);
    const log = record(alice, 'message', 'joined');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    await bob.join(room);
    await bob.send(room, 'm0');
    await until(() => log.message.length === 1, 3000, 'm0');

    proxy.state.blocked = true;
    proxy.cut();
    await waitFor(alice, 'close', () => true, 3000);
    const big = (i) => `m${i} ${'x'.repeat(1500)}`;
    for (let i = 1; i <= 12; i++) await bob.send(room, big(i));
    proxy.state.blocked = false;
    await waitFor(alice, 'joined', (f) => f.recovered === false, 5000);
    await until(() => log.message.length === 13, 5000, 'all 12 missed messages');
    await sleep(200);
    assert.deepEqual(
      log.message.map((m) => m.content.split(' ')[0]),
      Array.from({ length: 13 }, (_, i) => `m${i}`),
    );
    assert.equal(alice.lastSeq(room), 13);
  });
});
