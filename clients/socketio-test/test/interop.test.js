// One room, two dialects: a native WebSocket client (JSON frames) and the real
// socket.io-client 4.8.1 in the same room see each other's messages, typing, presence and
// receipts, with one seq and one history.
// Run: node --experimental-websocket --test test/*.test.js (from clients/socketio-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { cleanupAll, connect, NativePeer, project, requireWebSocket, rest, startSioHub, T } from '../test-support/sio.js';

// Node 22+ has a global WebSocket; Node 20 needs --experimental-websocket.
requireWebSocket();
after(cleanupAll);

let hub;
before(async () => {
  hub = await startSioHub();
});

/** Socket.IO user 123 and native user "nat", both in room/thread "456". */
async function mixed() {
  const { apiKey } = await project(hub.base, ['456']);
  const sio = await connect(hub.base, { apiKey, userId: 123 });
  await sio.join(456);
  const nat = await NativePeer.open(hub.base, { apiKey, userId: 'nat' });
  const joined = await nat.join('456');
  return { apiKey, sio, nat, joined };
}

test('each sees the other join: Socket.IO presence online, native user_joined; members list both', T, async () => {
  const { apiKey, sio, nat, joined } = await mixed();
  assert.deepEqual(joined.members, [
    { userId: '123', status: 'online' },
    { userId: 'nat', status: 'online' },
  ]);
  assert.deepEqual(await sio.wait('presence', (p) => p.userId === 'nat'), { threadId: '456', userId: 'nat', status: 'online' });
  // A Socket.IO user joining is a native user_joined.
  const late = await connect(hub.base, { apiKey, userId: 'late' });
  await late.join(456);
  assert.deepEqual(await nat.wait('user_joined', (f) => f.userId === 'late'), { type: 'user_joined', room: '456', userId: 'late', status: 'online' });
});

test("the native user's message reaches the Socket.IO user as message {message}", T, async () => {
  const { sio, nat } = await mixed();
  nat.send({ type: 'message', room: '456', content: 'hi from native', tempId: 'n-1' });
  const mapping = await nat.wait('message_id_mapping', (f) => f.tempId === 'n-1');
  const got = await sio.wait('message', (e) => e.message?.content === 'hi from native');
  assert.equal(got.message.id, mapping.realId);
  assert.equal(got.message.seq, mapping.seq);
  assert.equal(got.message.userId, 'nat');
  assert.equal(got.message.threadId, '456');
});

test("the Socket.IO user's message reaches the native user as a native message frame", T, async () => {
  const { sio, nat } = await mixed();
  const ack = await sio.ack('message_send', { threadId: 456, tempId: 's-1', content: 'hi from socket.io' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  const m = await nat.wait('message', (f) => f.content === 'hi from socket.io');
  assert.equal(m.id, ack.realId);
  assert.equal(m.seq, ack.seq);
  assert.equal(m.room, '456');
  assert.equal(m.userId, '123');
});

test('one seq and one history across dialects and REST', T, async () => {
  const { apiKey, sio, nat } = await mixed();
  const a1 = await sio.ack('message_send', { threadId: 456, tempId: 'h-1', content: 'sio 1' });
  await nat.wait('message', (f) => f.id === a1.realId);
  nat.send({ type: 'message', room: '456', content: 'native 2', tempId: 'h-2' });
  const m2 = await nat.wait('message_id_mapping', (f) => f.tempId === 'h-2');
  await sio.wait('message', (e) => e.message?.id === m2.realId);
  const a3 = await sio.ack('message_send', { threadId: 456, tempId: 'h-3', content: 'sio 3' });
  assert.deepEqual([a1.seq, m2.seq, a3.seq], [1, 2, 3]);

  const viaSio = await sio.ack('history', { threadId: 456 });
  const { messages: viaRest } = await rest(hub.base, 'GET', '/api/v1/rooms/456/messages', { apiKey });
  nat.send({ type: 'history', room: '456' });
  const viaNative = await nat.wait('history');
  const ids = (list) => list.map((m) => [m.seq, m.id, m.content]);
  assert.deepEqual(ids(viaSio.messages), ids(viaRest));
  assert.deepEqual(ids(viaNative.messages), ids(viaRest));
  assert.deepEqual(
    viaRest.map((m) => m.content),
    ['sio 1', 'native 2', 'sio 3'],
  );
});

test('typing, presence and read receipts cross dialects', T, async () => {
  const { sio, nat } = await mixed();
  nat.send({ type: 'typing', room: '456', isTyping: true });
  assert.deepEqual(await sio.wait('typing', (t) => t.userId === 'nat'), { threadId: '456', userId: 'nat', isTyping: true });
  await sio.ack('typing', { threadId: 456, isTyping: true });
  assert.deepEqual(await nat.wait('typing', (f) => f.userId === '123'), { type: 'typing', room: '456', userId: '123', isTyping: true });

  await sio.ack('presence', { status: 'busy' });
  assert.deepEqual(await nat.wait('presence', (f) => f.userId === '123'), { type: 'presence', userId: '123', status: 'busy' });
  nat.send({ type: 'presence', status: 'away' });
  assert.deepEqual(await sio.wait('presence', (p) => p.userId === 'nat' && p.status === 'away'), { threadId: '456', userId: 'nat', status: 'away' });

  const ack = await sio.ack('message_send', { threadId: 456, tempId: 'rr', content: 'read me' });
  nat.send({ type: 'read', room: '456', messageIds: [ack.realId] });
  const r = await sio.wait('read_receipt', (e) => e.messageId === ack.realId);
  assert.equal(r.userId, 'nat');
  assert.equal(r.threadId, '456');
  await sio.ack('message_read', { threadId: 456, messageIds: [ack.realId] });
  const nr = await nat.wait('read_receipt', (f) => f.messageId === ack.realId && f.userId === '123');
  assert.equal(nr.room, '456');
});

test('edits cross dialects; the native user may not edit the Socket.IO user\'s message', T, async () => {
  const { sio, nat } = await mixed();
  const ack = await sio.ack('message_send', { threadId: 456, tempId: 'ed', content: 'draft' });
  await sio.ack('message_edit', { threadId: 456, messageId: ack.realId, content: 'final' });
  const u = await nat.wait('message_update', (f) => f.message?.id === ack.realId);
  assert.equal(u.room, '456');
  assert.equal(u.message.content, 'final');
  nat.send({ type: 'edit', room: '456', messageId: ack.realId, content: 'nope' });
  const e = await nat.wait('error', (f) => f.event === 'edit');
  assert.equal(e.code, 'forbidden');
});

test("the Socket.IO user's disconnect: the native user gets presence offline and user_left", T, async () => {
  const { sio, nat } = await mixed();
  sio.close();
  assert.deepEqual(await nat.wait('presence', (f) => f.userId === '123' && f.status === 'offline'), { type: 'presence', userId: '123', status: 'offline' });
  assert.deepEqual(await nat.wait('user_left', (f) => f.userId === '123'), { type: 'user_left', room: '456', userId: '123' });
});
