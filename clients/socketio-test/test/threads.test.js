// The Chatpulse events over the real socket.io-client 4.8.1: threads, messages and their
// acknowledgements, idempotent tempIds, edit/delete, read receipts, presence, history and
// refused events. Thread 456 is the room "456", created through REST first.
// Run: node --experimental-websocket --test test/*.test.js (from clients/socketio-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { cleanupAll, connect, once, project, rest, startSioHub, T, until } from '../test-support/sio.js';

after(cleanupAll);

let hub;
before(async () => {
  hub = await startSioHub();
});

const RFC3339_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** A project with room "456" and two users joined to thread 456: alice (123) and bob. */
async function twoInThread(rooms = ['456']) {
  const { apiKey } = await project(hub.base, rooms);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  const b = await connect(hub.base, { apiKey, userId: 'bob' });
  await a.join(456);
  await b.join(456);
  await a.wait('presence', (p) => p.userId === 'bob' && p.status === 'online', { what: "bob's join" });
  return { apiKey, a, b };
}

/** Asserts the shape of a message object of the Socket.IO dialect. */
function assertMessage(m, expected) {
  assert.equal(typeof m, 'object', `a message object, got ${JSON.stringify(m)}`);
  assert.match(String(m.id), /./, `message.id in ${JSON.stringify(m)}`);
  assert.equal(typeof m.id, 'string');
  assert.ok(Number.isInteger(m.seq) && m.seq >= 1, `message.seq in ${JSON.stringify(m)}`);
  assert.equal(typeof m.contentType, 'string');
  assert.ok(Array.isArray(m.attachments), `message.attachments in ${JSON.stringify(m)}`);
  assert.match(m.createdAt, RFC3339_MS);
  assert.equal('room' in m, false, `threadId in place of room: ${JSON.stringify(m)}`);
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(m[k], v, `message.${k} in ${JSON.stringify(m)}`);
}

test('join_thread: thread_joined and the ack carry threadId "456", seq and members', T, async () => {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  const ack = await a.ack('join_thread', { threadId: 456 });
  assert.deepEqual(ack, { ok: true, threadId: '456', seq: 0, members: [{ userId: '123', status: 'online' }] });
  const joined = await a.wait('thread_joined', (j) => j.threadId === '456');
  assert.deepEqual(joined, { threadId: '456', seq: 0, members: [{ userId: '123', status: 'online' }] });
  assert.equal('recovered' in joined, false, 'recovered only with since');

  await a.ack('message_send', { threadId: 456, tempId: 'j-1', content: 'one' });
  await a.ack('message_send', { threadId: 456, tempId: 'j-2', content: 'two' });
  // A string threadId names the same thread; members are sorted by userId, each once.
  const b = await connect(hub.base, { apiKey, userId: 'bob' });
  const bAck = await b.ack('join_thread', { threadId: '456' });
  assert.deepEqual(bAck, {
    ok: true,
    threadId: '456',
    seq: 2,
    members: [
      { userId: '123', status: 'online' },
      { userId: 'bob', status: 'online' },
    ],
  });
  await b.wait('thread_joined', (j) => j.threadId === '456' && j.seq === 2);
});

test('join_thread with since replays what was missed, in seq order (recovered: true)', T, async () => {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  await a.join(456);
  for (const c of ['m1', 'm2', 'm3']) await a.ack('message_send', { threadId: 456, tempId: c, content: c });
  const b = await connect(hub.base, { apiKey, userId: 'late' });
  const ack = await b.ack('join_thread', { threadId: 456, since: 1 });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.recovered, true, JSON.stringify(ack));
  assert.equal(ack.seq, 3);
  await b.wait('message', (e) => e.message?.seq === 3, { what: 'the replay of seq 3' });
  assert.deepEqual(
    b.seen('message').map((e) => [e.message.seq, e.message.content]),
    [
      [2, 'm2'],
      [3, 'm3'],
    ],
  );
});

test('leave_thread: thread_left and ack {ok, threadId}; the others see presence offline', T, async () => {
  const { a, b } = await twoInThread();
  const ack = await b.ack('leave_thread', { threadId: 456 });
  assert.deepEqual(ack, { ok: true, threadId: '456' });
  assert.deepEqual(await b.wait('thread_left'), { threadId: '456' });
  assert.deepEqual(await a.wait('presence', (p) => p.userId === 'bob' && p.status === 'offline'), {
    threadId: '456',
    userId: 'bob',
    status: 'offline',
  });
  // No longer joined: sending is refused.
  const refused = await b.ack('message_send', { threadId: 456, tempId: 'after-leave', content: 'x' });
  assert.equal(refused.ok, false);
  assert.equal(refused.error.code, 'not_joined');
});

test('message_send: message_id_mapping to the sender, message to every member, ack with realId and seq', T, async () => {
  const { a, b } = await twoInThread();
  const ack = await a.ack('message_send', { threadId: 456, tempId: 'temp_123_1', content: 'Hello world!', contentType: 'text/plain' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.threadId, '456');
  assert.equal(ack.tempId, 'temp_123_1');
  assert.equal(typeof ack.realId, 'string');
  assert.equal(ack.seq, 1);

  const mapping = await a.wait('message_id_mapping', (m) => m.tempId === 'temp_123_1');
  assert.deepEqual(mapping, { threadId: '456', tempId: 'temp_123_1', realId: ack.realId, seq: 1 });
  assert.equal(b.seen('message_id_mapping').length, 0, 'the mapping goes to the sender only');

  const expected = { id: ack.realId, seq: 1, threadId: '456', userId: '123', content: 'Hello world!', contentType: 'text/plain', attachments: [] };
  for (const peer of [a, b]) {
    const got = await peer.wait('message', (e) => e.message?.id === ack.realId);
    assertMessage(got.message, expected);
  }
  // The mapping comes before the sender's copy of the broadcast.
  const order = a.events.filter((e) => e.name === 'message_id_mapping' || e.name === 'message').map((e) => e.name);
  assert.deepEqual(order, ['message_id_mapping', 'message']);

  const next = await b.ack('message_send', { threadId: 456, tempId: 'b-1', content: 'reply' });
  assert.equal(next.seq, 2, 'seq is per thread and gapless');
});

test('message_send: contentType and attachments come back as sent', T, async () => {
  const { a, b } = await twoInThread();
  const attachments = [{ type: 'image', url: 'https://example.com/cat.png', size: 1234 }];
  const ack = await a.ack('message_send', { threadId: 456, tempId: 'att', content: '**hi**', contentType: 'text/markdown', attachments });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  const got = await b.wait('message', (e) => e.message?.id === ack.realId);
  assertMessage(got.message, { contentType: 'text/markdown', attachments, content: '**hi**' });
});

test('message_send without tempId: ack ok, the message is broadcast', T, async () => {
  const { a, b } = await twoInThread();
  const ack = await a.ack('message_send', { threadId: 456, content: 'no temp id' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  const got = await b.wait('message', (e) => e.message?.content === 'no temp id');
  assertMessage(got.message, { userId: '123', threadId: '456' });
  assert.equal(a.seen('message_id_mapping').length, 0, 'nothing to map without a tempId');
});

test('the same tempId twice is the same message: same realId and seq, stored and broadcast once', T, async () => {
  const { apiKey, a, b } = await twoInThread();
  const first = await a.ack('message_send', { threadId: 456, tempId: 'dup', content: 'once' });
  const again = await a.ack('message_send', { threadId: 456, tempId: 'dup', content: 'once' });
  assert.equal(first.ok, true, JSON.stringify(first));
  assert.equal(again.ok, true, JSON.stringify(again));
  assert.equal(again.realId, first.realId);
  assert.equal(again.seq, first.seq);
  // A later message is a barrier: once bob has it, he would have had a second copy.
  const later = await a.ack('message_send', { threadId: 456, tempId: 'later', content: 'later' });
  assert.equal(later.seq, first.seq + 1, 'the retry took no seq');
  await b.wait('message', (e) => e.message?.id === later.realId);
  assert.deepEqual(
    b.seen('message').map((e) => e.message.content),
    ['once', 'later'],
  );
  const { messages } = await rest(hub.base, 'GET', '/api/v1/rooms/456/messages', { apiKey });
  assert.deepEqual(
    messages.map((m) => m.content),
    ['once', 'later'],
  );
});

test('message_edit / message_delete: message_update to the thread; editedAt, then deleted: true', T, async () => {
  const { a, b } = await twoInThread();
  const sent = await a.ack('message_send', { threadId: 456, tempId: 'e-1', content: 'first' });
  const edited = await a.ack('message_edit', { threadId: 456, messageId: sent.realId, content: 'first (edited)' });
  assert.equal(edited.ok, true, JSON.stringify(edited));
  for (const peer of [a, b]) {
    const u = await peer.wait('message_update', (e) => e.message?.id === sent.realId && e.message.content === 'first (edited)');
    assertMessage(u.message, { id: sent.realId, seq: sent.seq, threadId: '456', userId: '123' });
    assert.match(u.message.editedAt, RFC3339_MS);
    assert.notEqual(u.message.deleted, true);
  }
  const deleted = await a.ack('message_delete', { threadId: 456, messageId: sent.realId });
  assert.equal(deleted.ok, true, JSON.stringify(deleted));
  for (const peer of [a, b]) {
    const u = await peer.wait('message_update', (e) => e.message?.id === sent.realId && e.message.deleted === true);
    assertMessage(u.message, { id: sent.realId, seq: sent.seq, threadId: '456', deleted: true });
  }
});

test("editing or deleting someone else's message: error forbidden and a failed ack", T, async () => {
  const { a, b } = await twoInThread();
  const sent = await a.ack('message_send', { threadId: 456, tempId: 'mine', content: 'mine' });
  const edit = await b.ack('message_edit', { threadId: 456, messageId: sent.realId, content: 'hijacked' });
  assert.equal(edit.ok, false, JSON.stringify(edit));
  assert.equal(edit.error.code, 'forbidden');
  assert.equal(typeof edit.error.message, 'string');
  const err = await b.wait('error', (e) => e.event === 'message_edit');
  assert.equal(err.code, 'forbidden');
  assert.equal(typeof err.message, 'string');

  const del = await b.ack('message_delete', { threadId: 456, messageId: sent.realId });
  assert.equal(del.ok, false, JSON.stringify(del));
  assert.equal(del.error.code, 'forbidden');
  assert.equal((await b.wait('error', (e) => e.event === 'message_delete')).code, 'forbidden');
  assert.equal(b.socket.connected, true);
  // Nothing changed: alice's next message is a barrier, and no update came before it.
  const barrier = await a.ack('message_send', { threadId: 456, tempId: 'barrier', content: 'barrier' });
  await b.wait('message', (e) => e.message?.id === barrier.realId);
  assert.equal(a.seen('message_update').length + b.seen('message_update').length, 0);
});

test('message_read: read_receipt to the thread (reader included), stored for REST', T, async () => {
  const { apiKey, a, b } = await twoInThread();
  const sent = await a.ack('message_send', { threadId: 456, tempId: 'r-1', content: 'read me' });
  const ack = await b.ack('message_read', { threadId: 456, messageIds: [sent.realId] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  for (const peer of [a, b]) {
    const r = await peer.wait('read_receipt', (e) => e.messageId === sent.realId);
    assert.equal(r.threadId, '456');
    assert.equal(r.userId, 'bob');
    assert.match(r.readAt, RFC3339_MS);
  }
  const { receipts } = await rest(hub.base, 'GET', `/api/v1/rooms/456/messages/${sent.realId}/receipts`, { apiKey });
  assert.deepEqual(
    receipts.map((r) => r.userId),
    ['bob'],
  );
});

test('presence: a status change reaches those sharing a thread; joiners see it in members', T, async () => {
  const { apiKey, a, b } = await twoInThread();
  const ack = await a.ack('presence', { status: 'away' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  const p = await b.wait('presence', (e) => e.userId === '123' && e.status === 'away');
  assert.deepEqual(p, { threadId: '456', userId: '123', status: 'away' });
  const c = await connect(hub.base, { apiKey, userId: 'carol' });
  const joined = await c.join(456);
  assert.deepEqual(joined.members, [
    { userId: '123', status: 'away' },
    { userId: 'bob', status: 'online' },
    { userId: 'carol', status: 'online' },
  ]);
  // Not echoed to the user who changed it.
  const barrier = await b.ack('message_send', { threadId: 456, tempId: 'pb', content: 'barrier' });
  await a.wait('message', (e) => e.message?.id === barrier.realId);
  assert.equal(a.seen('presence', (e) => e.userId === '123').length, 0);
});

test('presence: once per shared thread, naming each thread', T, async () => {
  const { apiKey } = await project(hub.base, ['p1', 'p2']);
  const a = await connect(hub.base, { apiKey, userId: 'ann' });
  const b = await connect(hub.base, { apiKey, userId: 'ben' });
  for (const t of ['p1', 'p2']) {
    await a.join(t);
    await b.join(t);
  }
  await a.ack('presence', { status: 'busy' });
  await b.wait('presence', (e) => e.userId === 'ann' && e.status === 'busy' && e.threadId === 'p1');
  await b.wait('presence', (e) => e.userId === 'ann' && e.status === 'busy' && e.threadId === 'p2');
  const barrier = await a.ack('message_send', { threadId: 'p2', tempId: 'b', content: 'barrier' });
  await b.wait('message', (e) => e.message?.id === barrier.realId);
  assert.equal(b.seen('presence', (e) => e.userId === 'ann' && e.status === 'busy').length, 2);
});

test("presence online on a user's first connection only; offline when the last one disconnects", T, async () => {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  await a.join(456);
  const b1 = await connect(hub.base, { apiKey, userId: 'bob' }, { label: 'bob #1' });
  await b1.join(456);
  assert.deepEqual(await a.wait('presence', (e) => e.userId === 'bob' && e.status === 'online'), {
    threadId: '456',
    userId: 'bob',
    status: 'online',
  });
  const b2 = await connect(hub.base, { apiKey, userId: 'bob' }, { label: 'bob #2' });
  await b2.join(456);
  let barrier = await b2.ack('message_send', { threadId: 456, tempId: 'b2-1', content: 'from #2' });
  await a.wait('message', (e) => e.message?.id === barrier.realId);
  assert.equal(a.seen('presence', (e) => e.userId === 'bob' && e.status === 'online').length, 1, 'a second connection is not news');

  b1.close();
  await until(
    async () => {
      const { users } = await rest(hub.base, 'GET', '/api/v1/rooms/456/presence', { apiKey });
      return users.find((u) => u.userId === 'bob')?.connections === 1;
    },
    5000,
    "bob's first connection to be gone (REST presence)",
  );
  barrier = await b2.ack('message_send', { threadId: 456, tempId: 'b2-2', content: 'still here' });
  await a.wait('message', (e) => e.message?.id === barrier.realId);
  assert.equal(a.seen('presence', (e) => e.userId === 'bob' && e.status === 'offline').length, 0, 'bob still has a connection');

  b2.close();
  assert.deepEqual(await a.wait('presence', (e) => e.userId === 'bob' && e.status === 'offline'), {
    threadId: '456',
    userId: 'bob',
    status: 'offline',
  });
});

test('history: the ack carries the messages in ascending seq; limit, before and after page', T, async () => {
  const { a, b } = await twoInThread();
  for (const c of ['h1', 'h2', 'h3']) await a.ack('message_send', { threadId: 456, tempId: c, content: c });
  const all = await b.ack('history', { threadId: 456 });
  assert.equal(all.ok, true, JSON.stringify(all));
  assert.deepEqual(
    all.messages.map((m) => [m.seq, m.content]),
    [
      [1, 'h1'],
      [2, 'h2'],
      [3, 'h3'],
    ],
  );
  for (const m of all.messages) assertMessage(m, { threadId: '456', userId: '123' });
  const newest = await b.ack('history', { threadId: 456, limit: 2 });
  assert.deepEqual(
    newest.messages.map((m) => m.seq),
    [2, 3],
  );
  const before = await b.ack('history', { threadId: 456, before: 3, limit: 1 });
  assert.deepEqual(
    before.messages.map((m) => m.seq),
    [2],
  );
  const afterOne = await b.ack('history', { threadId: 456, after: 1 });
  assert.deepEqual(
    afterOne.messages.map((m) => m.seq),
    [2, 3],
  );
});

test('message_send to a thread not joined: error not_joined with the tempId echoed, failed ack, connection kept', T, async () => {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  const ack = await a.ack('message_send', { threadId: 456, tempId: 't9', content: 'too early' });
  assert.equal(ack.ok, false, JSON.stringify(ack));
  assert.equal(ack.error.code, 'not_joined');
  assert.equal(typeof ack.error.message, 'string');
  const err = await a.wait('error', (e) => e.event === 'message_send');
  assert.equal(err.code, 'not_joined');
  assert.equal(err.tempId, 't9');
  assert.equal(typeof err.message, 'string');
  assert.equal(a.socket.connected, true);
  await a.join(456);
  const ok = await a.ack('message_send', { threadId: 456, tempId: 't9', content: 'now' });
  assert.equal(ok.ok, true, `a refused tempId is not taken: ${JSON.stringify(ok)}`);
});

test('join_thread of an unknown thread: error not_found, failed ack, connection kept', T, async () => {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  const ack = await a.ack('join_thread', { threadId: 404 });
  assert.equal(ack.ok, false, JSON.stringify(ack));
  assert.equal(ack.error.code, 'not_found');
  const err = await a.wait('error', (e) => e.event === 'join_thread');
  assert.equal(err.code, 'not_found');
  assert.equal(a.socket.connected, true);
  await a.join(456);
});

test('an unknown event or a bad payload: error bad_request naming it; events without an ack are refused too', T, async () => {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  const unknown = await a.ack('dance', { threadId: 456 });
  assert.equal(unknown.ok, false, JSON.stringify(unknown));
  assert.equal(unknown.error.code, 'bad_request');
  assert.equal((await a.wait('error', (e) => e.event === 'dance')).code, 'bad_request');

  const bad = await a.ack('join_thread', { threadId: { nested: true } });
  assert.equal(bad.ok, false);
  assert.equal(bad.error.code, 'bad_request');

  a.emit('message_send', { threadId: 456, tempId: 'no-ack', content: 'x' });
  const err = await a.wait('error', (e) => e.event === 'message_send' && e.tempId === 'no-ack');
  assert.equal(err.code, 'not_joined');
  assert.equal(a.socket.connected, true);
  await a.join(456);
});

test('a message posted through REST reaches Socket.IO members as message {message}', T, async () => {
  const { apiKey, a } = await twoInThread();
  const posted = await rest(hub.base, 'POST', '/api/v1/rooms/456/messages', { apiKey, body: { userId: 'backend', content: 'from REST' } });
  const got = await a.wait('message', (e) => e.message?.id === posted.id);
  assertMessage(got.message, { seq: posted.seq, threadId: '456', userId: 'backend', content: 'from REST' });
});

test('a deleted room: thread_deleted to its Socket.IO members', T, async () => {
  const { apiKey, a } = await twoInThread();
  await rest(hub.base, 'DELETE', '/api/v1/rooms/456', { apiKey });
  assert.deepEqual(await a.wait('thread_deleted'), { threadId: '456' });
  assert.equal(a.socket.connected, true);
});

test("a client's disconnect: the others see presence offline", T, async () => {
  const { a, b } = await twoInThread();
  const [reason] = await (async () => {
    const p = once(b.socket, 'disconnect');
    b.socket.disconnect();
    return p;
  })();
  assert.equal(reason, 'io client disconnect');
  assert.deepEqual(await a.wait('presence', (e) => e.userId === 'bob' && e.status === 'offline'), {
    threadId: '456',
    userId: 'bob',
    status: 'offline',
  });
});
