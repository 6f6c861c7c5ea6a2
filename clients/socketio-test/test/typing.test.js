// Typing indicators over the real socket.io-client 4.8.1: relayed to the others, cleared by
// the server after --typing-timeout-ms, and on send, leave and disconnect.
// Two hubs: one with a short typing timeout (expiry is quick to observe), one with the
// default 10 s, so that a clear seen within 5 s comes from the send/leave/disconnect rule.
// Run: node --experimental-websocket --test test/*.test.js (from clients/socketio-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { cleanupAll, connect, project, startSioHub, T } from '../test-support/sio.js';

after(cleanupAll);

const QUICK_MS = 400;
let quick;
let slow;
before(async () => {
  quick = await startSioHub({ args: ['--typing-timeout-ms', String(QUICK_MS)] });
  slow = await startSioHub();
});

async function twoInThread(hub) {
  const { apiKey } = await project(hub.base, ['456']);
  const a = await connect(hub.base, { apiKey, userId: 123 });
  const b = await connect(hub.base, { apiKey, userId: 'bob' });
  await a.join(456);
  await b.join(456);
  await a.wait('presence', (p) => p.userId === 'bob' && p.status === 'online', { what: "bob's join" });
  return { a, b };
}

test('typing: the others get {threadId, userId, isTyping: true}; the typer does not', T, async () => {
  const { a, b } = await twoInThread(slow);
  const ack = await a.ack('typing', { threadId: 456, isTyping: true });
  assert.deepEqual(ack, { ok: true });
  assert.deepEqual(await b.wait('typing', (t) => t.isTyping === true), { threadId: '456', userId: '123', isTyping: true });
  // bob's message is a barrier for alice: she would have had her own typing event before it.
  const barrier = await b.ack('message_send', { threadId: 456, tempId: 'tb', content: 'barrier' });
  await a.wait('message', (e) => e.message?.id === barrier.realId);
  assert.deepEqual(a.seen('typing'), []);
});

test('typing: the server sends isTyping: false after --typing-timeout-ms', T, async () => {
  const { a, b } = await twoInThread(quick);
  await a.ack('typing', { threadId: 456, isTyping: true });
  await b.wait('typing', (t) => t.isTyping === true);
  const since = Date.now();
  const cleared = await b.wait('typing', (t) => t.isTyping === false, { what: `the server's clear after ${QUICK_MS} ms` });
  assert.deepEqual(cleared, { threadId: '456', userId: '123', isTyping: false });
  assert.ok(Date.now() - since >= QUICK_MS / 2, `cleared after ${Date.now() - since} ms, before the ${QUICK_MS} ms timeout`);
});

test('typing: isTyping false from the typer is relayed at once', T, async () => {
  const { a, b } = await twoInThread(slow);
  await a.ack('typing', { threadId: 456, isTyping: true });
  await b.wait('typing', (t) => t.isTyping === true);
  await a.ack('typing', { threadId: 456, isTyping: false });
  assert.deepEqual(await b.wait('typing', (t) => t.isTyping === false), { threadId: '456', userId: '123', isTyping: false });
});

test('typing is cleared when the typer sends a message', T, async () => {
  const { a, b } = await twoInThread(slow);
  await a.ack('typing', { threadId: 456, isTyping: true });
  await b.wait('typing', (t) => t.isTyping === true);
  const sent = await a.ack('message_send', { threadId: 456, tempId: 'ts', content: 'done typing' });
  assert.equal(sent.ok, true, JSON.stringify(sent));
  await b.wait('typing', (t) => t.userId === '123' && t.isTyping === false, { what: 'the clear on send (the timeout is 10 s)' });
  await b.wait('message', (e) => e.message?.id === sent.realId);
});

test('typing is cleared when the typer leaves the thread', T, async () => {
  const { a, b } = await twoInThread(slow);
  await a.ack('typing', { threadId: 456, isTyping: true });
  await b.wait('typing', (t) => t.isTyping === true);
  await a.ack('leave_thread', { threadId: 456 });
  await b.wait('typing', (t) => t.userId === '123' && t.isTyping === false, { what: 'the clear on leave (the timeout is 10 s)' });
  await b.wait('presence', (p) => p.userId === '123' && p.status === 'offline');
});

test('typing is cleared when the typer disconnects', T, async () => {
  const { a, b } = await twoInThread(slow);
  await a.ack('typing', { threadId: 456, isTyping: true });
  await b.wait('typing', (t) => t.isTyping === true);
  a.close();
  await b.wait('typing', (t) => t.userId === '123' && t.isTyping === false, { what: 'the clear on disconnect (the timeout is 10 s)' });
  await b.wait('presence', (p) => p.userId === '123' && p.status === 'offline');
});

test('typing in a thread not joined: error not_joined, failed ack', T, async () => {
  const { apiKey } = await project(slow.base, ['456']);
  const a = await connect(slow.base, { apiKey, userId: 'loner' });
  const ack = await a.ack('typing', { threadId: 456, isTyping: true });
  assert.equal(ack.ok, false, JSON.stringify(ack));
  assert.equal(ack.error.code, 'not_joined');
  assert.equal((await a.wait('error', (e) => e.event === 'typing')).code, 'not_joined');
});
