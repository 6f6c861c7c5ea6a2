// The client against the real hub: connect, rooms, messages, typing, presence, errors.
// Run: node --experimental-websocket --test clients/js/test/*.test.js
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { RealtimeHub, RealtimeHubError } from '../realtimehub.js';
import { cleanupAll, track, projectWithRoom, requireWebSocket, record, rest, sleep, startHub, until, waitFor } from '../test-support/helpers.js';

requireWebSocket();
// Stops every hub, proxy and client left behind, also after a timed-out test.
after(cleanupAll);

const T = { timeout: 15000 };

let hub;
const clients = [];

/** A client that the suite closes in after(). */
function client(apiKey, userId, options = {}) {
  const c = track(new RealtimeHub({ url: hub.base, apiKey, userId }, { reconnectBaseMs: 50, reconnectMaxMs: 500, ...options }));
  clients.push(c);
  return c;
}

before(async () => {
  // A long server-side typing timeout, so a typing:false seen below comes from the client.
  hub = await startHub({ args: ['--typing-timeout-ms', '20000'] });
});

after(async () => {
  for (const c of clients) c.close();
  await hub.stop();
});

describe('constructor', () => {
  test('validates its arguments with TypeErrors', () => {
    const url = 'ws://127.0.0.1:1';
    assert.throws(() => new RealtimeHub(), TypeError);
    assert.throws(() => new RealtimeHub({ url, userId: 'a' }), /apiKey .*or a token/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k' }), /userId/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k', token: 't', userId: 'a' }), /either apiKey or token/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k', userId: 'x'.repeat(129) }), /userId/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k', userId: 'a\nb' }), /printable/);
    assert.throws(() => new RealtimeHub({ url: 'ftp://x', apiKey: 'k', userId: 'a' }), /ws:, wss:/);
    assert.throws(() => new RealtimeHub({ url: 'ws://x/elsewhere', apiKey: 'k', userId: 'a' }), /on \/ and \/ws/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k', userId: 'a' }, { reconectBaseMs: 1 }), /unknown option/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k', userId: 'a' }, { WebSocket: null, historyPageLimit: 0 }), /historyPageLimit/);
    assert.throws(() => new RealtimeHub({ url, apiKey: 'k', userId: 'a' }, { WebSocket: 42 }), /no WebSocket implementation/);
    for (const e of [() => new RealtimeHub(null)]) assert.throws(e, TypeError);
  });

  test('builds the WebSocket URL from http or ws URLs, with apiKey or token', () => {
    const seen = [];
    class FakeWS {
      constructor(u) {
        seen.push(u);
      }
      close() {}
    }
    const a = new RealtimeHub({ url: 'http://127.0.0.1:9/', apiKey: 'k+1', userId: 'John Doe' }, { WebSocket: FakeWS });
    a.connect().catch(() => {});
    a.close();
    const b = new RealtimeHub({ url: 'wss://hub.example/ws', token: 'tok' }, { WebSocket: FakeWS });
    b.connect().catch(() => {});
    b.close();
    assert.equal(seen[0], 'ws://127.0.0.1:9/?apiKey=k%2B1&userId=John+Doe');
    assert.equal(seen[1], 'wss://hub.example/ws?token=tok');
  });

  test('method arguments are checked synchronously', () => {
    const c = new RealtimeHub({ url: 'ws://127.0.0.1:1', apiKey: 'k', userId: 'a' });
    assert.throws(() => c.join('bad room'), /room must be/);
    assert.throws(() => c.send('r', 42), /content must be a string/);
    assert.throws(() => c.setPresence('offline'), /status must be one of/);
    assert.throws(() => c.history('r', { limit: 5000 }), /limit/);
    assert.throws(() => c.markRead('r', []), /markRead/);
  });
});

describe('against the hub', () => {
  test('connect, join, send resolves {id, seq} and the message comes back once', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice');
    const log = record(alice, 'open', 'connected', 'message');
    const connected = await alice.connect();
    assert.equal(connected.userId, 'alice');
    assert.equal(alice.connected, true);
    assert.ok(alice.connectionId);
    const joined = await alice.join(room);
    assert.equal(joined.room, room);
    assert.equal(joined.seq, 0);
    assert.deepEqual(joined.members, [{ userId: 'alice', status: 'online' }]);
    const p = alice.send(room, 'hello');
    assert.match(p.tempId, /^[0-9a-f]{32}$/);
    const ack = await p;
    assert.equal(typeof ack.id, 'string');
    assert.equal(ack.seq, 1);
    assert.equal(ack.tempId, p.tempId);
    await until(() => log.message.length === 1, 3000, 'the broadcast');
    assert.equal(log.message[0].id, ack.id);
    assert.equal(log.message[0].content, 'hello');
    assert.equal(alice.lastSeq(room), 1);
    assert.equal(log.open.length, 1);
    assert.deepEqual(alice.pending(), []);
    // join() of a joined room answers from memory.
    assert.equal((await alice.join(room)).room, room);
  });

  test('two clients chat: messages, edit, delete, read receipts, direct, history', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice');
    const bob = client(apiKey, 'bob');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    const bobJoined = waitFor(alice, 'user_joined', (f) => f.userId === 'bob');
    await bob.join(room);
    await bobJoined;
    assert.deepEqual(alice.members(room), [
      { userId: 'alice', status: 'online' },
      { userId: 'bob', status: 'online' },
    ]);

    const bobGets = waitFor(bob, 'message', (m) => m.content === 'hi bob');
    const sent = await alice.send(room, 'hi bob', { contentType: 'text/markdown', attachments: [{ url: 'https://x/y.png' }] });
    const m = await bobGets;
    assert.equal(m.id, sent.id);
    assert.equal(m.userId, 'alice');
    assert.equal(m.contentType, 'text/markdown');
    assert.deepEqual(m.attachments, [{ url: 'https://x/y.png' }]);

    const reply = await bob.send(room, 'hi alice');
    assert.equal(reply.seq, sent.seq + 1);

    const aliceSeesEdit = waitFor(alice, 'message_update', (f) => f.message.id === reply.id);
    const edited = await bob.edit(room, reply.id, 'hi alice!');
    assert.equal(edited.content, 'hi alice!');
    assert.ok(edited.editedAt);
    assert.equal((await aliceSeesEdit).message.content, 'hi alice!');

    const receipt = waitFor(alice, 'read_receipt', (f) => f.messageId === sent.id);
    await bob.markRead(room, [sent.id]);
    const r = await receipt;
    assert.equal(r.userId, 'bob');
    assert.ok(r.readAt);
    const receipts = await rest(hub.base, 'GET', `/api/v1/rooms/${room}/messages/${sent.id}/receipts`, { apiKey });
    assert.deepEqual(receipts.receipts.map((x) => x.userId), ['bob']);

    const bobDirect = waitFor(bob, 'direct');
    const d = await alice.direct('bob', 'psst');
    assert.equal(d.delivered, 1);
    const got = await bobDirect;
    assert.equal(got.from, 'alice');
    assert.equal(got.content, 'psst');

    const tomb = await bob.delete(room, reply.id);
    assert.equal(tomb.deleted, true);

    const hist = await alice.history(room, { limit: 10 });
    assert.deepEqual(hist.map((x) => x.seq), [1, 2]);
    assert.equal(hist[1].deleted, true);
    assert.deepEqual((await alice.history(room, { after: 1 })).map((x) => x.seq), [2]);
    assert.deepEqual((await alice.history(room, { before: 2 })).map((x) => x.seq), [1]);

    const left = waitFor(alice, 'user_left', (f) => f.userId === 'bob');
    await bob.leave(room);
    await left;
    assert.deepEqual(bob.rooms(), []);
    assert.deepEqual(alice.members(room), [{ userId: 'alice', status: 'online' }]);

    // Leave and join again at once: the late `left` does not undo the new join.
    bob.leave(room);
    await bob.join(room);
    await sleep(100);
    assert.deepEqual(bob.rooms(), [room]);
    const back = waitFor(bob, 'message', (x) => x.content === 'still here?');
    await alice.send(room, 'still here?');
    await back;
  });

  test('a private room: forbidden to non-members, and removal by REST is a `left`', T, async () => {
    const { apiKey } = await projectWithRoom(hub.base);
    await rest(hub.base, 'POST', '/api/v1/rooms', { apiKey, body: { name: 'staff', type: 'private', members: ['alice'] } });
    const alice = client(apiKey, 'alice');
    const mallory = client(apiKey, 'mallory');
    await Promise.all([alice.connect(), mallory.connect()]);
    await assert.rejects(mallory.join('staff'), { code: 'forbidden', event: 'join' });
    await alice.join('staff');
    const left = waitFor(alice, 'left', (f) => f.room === 'staff');
    await rest(hub.base, 'DELETE', '/api/v1/rooms/staff/members/alice', { apiKey });
    await left;
    assert.deepEqual(alice.rooms(), []);
  });

  test('room_deleted forgets the room', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice');
    await alice.connect();
    await alice.join(room);
    const gone = waitFor(alice, 'room_deleted', (f) => f.room === room);
    await rest(hub.base, 'DELETE', `/api/v1/rooms/${room}`, { apiKey });
    await gone;
    assert.deepEqual(alice.rooms(), []);
  });

  test('typing helper throttles and stops by itself', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice', { typingThrottleMs: 300, typingIdleMs: 500 });
    const bob = client(apiKey, 'bob');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    await bob.join(room);
    const seen = [];
    bob.on('typing', (f) => seen.push({ ...f, at: Date.now() }));

    // A keystroke every 50 ms for 1 s: 20 calls, at most one true per 300 ms.
    const start = Date.now();
    while (Date.now() - start < 1000) {
      alice.typing(room);
      await sleep(50);
    }
    const lastCall = Date.now();
    const stopped = await waitFor(bob, 'typing', (f) => f.isTyping === false, 3000);
    const trues = seen.filter((f) => f.isTyping);
    assert.ok(trues.length >= 3 && trues.length <= 5, `expected 3-5 typing:true, got ${trues.length}`);
    assert.ok(trues.every((f) => f.userId === 'alice' && f.room === room));
    const quiet = Date.now() - lastCall;
    assert.ok(quiet >= 350 && quiet < 2000, `typing:false came ${quiet} ms after the last keystroke (idle 500 ms)`);
    assert.equal(stopped.userId, 'alice');
    await sleep(700);
    assert.equal(seen.filter((f) => !f.isTyping).length, 1, 'one typing:false only');

    // send() stops typing: bob sees false before the message.
    seen.length = 0;
    alice.typing(room);
    await waitFor(bob, 'typing', (f) => f.isTyping, 2000);
    const order = [];
    bob.on('typing', (f) => order.push(`typing:${f.isTyping}`));
    bob.on('message', (m) => order.push(`message:${m.content}`));
    await alice.send(room, 'done typing');
    await until(() => order.includes('message:done typing'), 3000, 'the message');
    assert.deepEqual(order, ['typing:false', 'message:done typing']);
    await sleep(700);
    assert.deepEqual(order, ['typing:false', 'message:done typing'], 'no further typing:false after send');
  });

  test('presence: status changes, restore after reconnect, offline on close', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice');
    const bob = client(apiKey, 'bob');
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join(room);
    await bob.join(room);
    const away = waitFor(alice, 'presence', (f) => f.userId === 'bob' && f.status === 'away');
    await bob.setPresence('away');
    assert.equal(bob.status, 'away');
    await away;
    assert.deepEqual(alice.members(room).find((m) => m.userId === 'bob'), { userId: 'bob', status: 'away' });
    assert.deepEqual(bob.members(room).find((m) => m.userId === 'bob'), { userId: 'bob', status: 'away' });

    const busy = waitFor(alice, 'presence', (f) => f.userId === 'bob' && f.status === 'busy');
    await bob.setPresence('busy');
    await busy;
    const roomPresence = await rest(hub.base, 'GET', `/api/v1/rooms/${room}/presence`, { apiKey });
    assert.equal(roomPresence.users.find((u) => u.userId === 'bob').status, 'busy');

    const offline = waitFor(alice, 'presence', (f) => f.userId === 'bob' && f.status === 'offline');
    const left = waitFor(alice, 'user_left', (f) => f.userId === 'bob');
    bob.close();
    await offline;
    await left;
    assert.deepEqual(alice.members(room), [{ userId: 'alice', status: 'online' }]);
  });

  test('errors reject with code and event, and are emitted', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice');
    const bob = client(apiKey, 'bob');
    const errors = record(alice, 'error').error;
    await Promise.all([alice.connect(), bob.connect()]);

    await assert.rejects(alice.join('no-such-room'), (e) => e instanceof RealtimeHubError && e.code === 'not_found' && e.event === 'join');
    assert.deepEqual(alice.rooms(), []);

    const notJoined = alice.send(room, 'not yet');
    await assert.rejects(notJoined, (e) => e.code === 'not_joined' && e.event === 'message' && e.tempId === notJoined.tempId);

    await alice.join(room);
    await bob.join(room);
    const mine = await alice.send(room, 'mine');
    await assert.rejects(bob.edit(room, mine.id, 'hijack'), { code: 'forbidden', event: 'edit' });
    await assert.rejects(bob.delete(room, mine.id), { code: 'forbidden', event: 'delete' });
    await assert.rejects(alice.markRead(room, ['m_nope']), { code: 'not_found', event: 'read' });
    await assert.rejects(alice.send(room, ''), { code: 'bad_request', event: 'message' });
    await assert.rejects(alice.history('no-such-room'), { code: 'not_found', event: 'history' });
    // Later requests still work and match their answers.
    const [a, b] = await Promise.all([alice.send(room, 'one'), alice.send(room, 'two')]);
    assert.equal(b.seq, a.seq + 1);
    assert.equal(errors.length, 5);
    assert.ok(errors.every((e) => e instanceof RealtimeHubError && e.code && e.message));

    // Too large for one WebSocket frame: refused by the client before sending.
    await assert.rejects(alice.send(room, 'x'.repeat(70000)), { code: 'too_large' });
    // Not connected yet.
    const idle = track(new RealtimeHub({ url: hub.base, apiKey, userId: 'carol' }));
    await assert.rejects(idle.send(room, 'x'), { code: 'not_connected' });
  });

  test('a refused apiKey rejects connect() with unauthorized and stops retrying', T, async () => {
    const c = client('not-a-key', 'alice');
    const events = record(c, 'error', 'reconnecting');
    await assert.rejects(c.connect(), (e) => e.code === 'unauthorized' && /apiKey/.test(e.message));
    assert.equal(c.state, 'closed');
    const attempts = events.reconnecting.length;
    await sleep(300);
    assert.equal(events.reconnecting.length, attempts, 'no reconnect after unauthorized');
    assert.ok(events.error.some((e) => e.code === 'connect_failed'));
  });

  test('without reconnect, an unreachable hub rejects connect()', T, async () => {
    const c = track(new RealtimeHub({ url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'a' }, { reconnect: false }));
    await assert.rejects(c.connect(), { code: 'connect_failed' });
    assert.equal(c.state, 'closed');
  });

  test('close() rejects pending work and does not reconnect', T, async () => {
    const { apiKey, room } = await projectWithRoom(hub.base);
    const alice = client(apiKey, 'alice');
    const events = record(alice, 'close', 'reconnecting');
    await alice.connect();
    const joining = alice.join(room);
    alice.close();
    await assert.rejects(joining, { code: 'closed' });
    await sleep(200);
    assert.equal(events.reconnecting.length, 0);
    assert.equal(events.close.length, 1);
    assert.equal(events.close[0].willReconnect, false);
    // It can be opened again.
    await alice.connect();
    await alice.join(room);
    alice.close();
  });

  test('on/off/once', () => {
    const c = new RealtimeHub({ url: 'ws://127.0.0.1:1', apiKey: 'k', userId: 'a' });
    const got = [];
    const f = (v) => got.push(`f${v}`);
    const g = (v) => got.push(`g${v}`);
    c.on('x', f).once('x', g);
    c._emit('x', 1);
    c._emit('x', 2);
    c.off('x', f);
    c._emit('x', 3);
    assert.deepEqual(got, ['f1', 'g1', 'f2']);
    c.once('y', g).off('y', g);
    c._emit('y', 4);
    assert.deepEqual(got, ['f1', 'g1', 'f2']);
  });
});
