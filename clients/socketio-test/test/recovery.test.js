// Connection-state recovery with the real socket.io-client 4.8.1: after a network drop (a TCP
// proxy that cuts every connection and refuses new ones until told) and after the hub is
// killed with SIGKILL and restarted on the same port and database, `socket.recovered` is true,
// the threads are joined again without a join_thread, and every message missed arrives once,
// in seq order. Past the recovery window, past the replay cap, or after the client itself
// disconnected, `recovered` is false and the threads must be joined again.
// Run: node --experimental-websocket --test test/recovery.test.js (from clients/socketio-test)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { startProxy } from '../../js/test-support/helpers.js';
import { cleanupAll, connect, once, project, startSioHub, T } from '../test-support/sio.js';

after(cleanupAll);

/** Reconnects fast: the tests wait for the reconnect, not for backoff. */
const RECONNECT = { reconnection: true, reconnectionDelay: 50, reconnectionDelayMax: 100, randomizationFactor: 0 };

/** `message` payloads received by `peer` (from event index `from`), as `{threadId, seq, content, id}`. */
function messages(peer, from = 0) {
  return peer.events
    .slice(from)
    .filter((e) => e.name === 'message')
    .map((e) => ({ threadId: e.data.message.threadId, seq: e.data.message.seq, content: e.data.message.content, id: e.data.message.id, offset: e.args[1] }));
}

/** Resolves once `peer` holds `n` messages from event index `from`. */
async function waitMessages(peer, n, from = 0, what = `${n} messages`) {
  await peer.wait('message', () => messages(peer, from).length >= n, { what });
  return messages(peer, from);
}

/** Cuts every connection through `proxy` and keeps it refusing; resolves when `peer` saw the drop. */
async function drop(proxy, peer) {
  const gone = once(peer.socket, 'disconnect', { what: 'the drop' });
  proxy.state.blocked = true;
  proxy.cut();
  await gone;
}

/** Lets `peer` back through `proxy`; resolves on its next `connect`. */
async function reconnect(proxy, peer) {
  const back = once(peer.socket, 'connect', { timeoutMs: 8000, what: 'the reconnect' });
  proxy.state.blocked = false;
  await back;
}

test('a network drop: recovered, both threads back, every missed message once, in order', T, async () => {
  const hub = await startSioHub();
  const proxy = await startProxy(hub.port);
  const { apiKey } = await project(hub.base, ['456', '789']);
  const alice = await connect(`http://127.0.0.1:${proxy.port}`, { apiKey, userId: 123 }, RECONNECT);
  const bob = await connect(hub.base, { apiKey, userId: 'bob' });
  await alice.join(456);
  await alice.join(789);
  await bob.join(456);
  await bob.join(789);
  await bob.ack('message_send', { threadId: 456, content: 'before' });
  const [live] = await waitMessages(alice, 1);
  assert.equal(live.content, 'before');
  assert.equal(live.offset, live.id, 'a live message carries its id as the recovery offset');

  await drop(proxy, alice);
  const mark = alice.events.length;
  const sent = [];
  for (const [thread, content] of [[456, 'a1'], [789, 'b1'], [456, 'a2'], [789, 'b2'], [456, 'a3']]) {
    const ack = await bob.ack('message_send', { threadId: thread, content });
    assert.equal(ack.ok, true);
    sent.push(content);
  }
  await reconnect(proxy, alice);
  assert.equal(alice.socket.recovered, true, 'socket.recovered after a drop within the window');
  const got = await waitMessages(alice, 5, mark, 'the five missed messages');
  assert.deepEqual(got.map((m) => m.content), sent, 'missed messages in the order they were sent');
  assert.deepEqual(got.filter((m) => m.threadId === '456').map((m) => m.seq), [2, 3, 4]);
  assert.deepEqual(got.filter((m) => m.threadId === '789').map((m) => m.seq), [1, 2]);
  assert.equal(alice.seen('thread_joined').length, 2, 'recovery joins without thread_joined');

  // Still in both threads: a new message arrives live, nothing is repeated.
  await bob.ack('message_send', { threadId: 789, content: 'after' });
  const all = await waitMessages(alice, 7, 0, 'the message after the recovery');
  assert.deepEqual(all.map((m) => m.content), ['before', ...sent, 'after']);
  assert.equal(new Set(all.map((m) => m.id)).size, 7, 'no message twice');

  // A second drop resumes from the new offset: only what was missed since.
  await drop(proxy, alice);
  await bob.ack('message_send', { threadId: 456, content: 'again' });
  await reconnect(proxy, alice);
  assert.equal(alice.socket.recovered, true);
  const final = await waitMessages(alice, 8, 0, 'the message missed in the second drop');
  assert.deepEqual(final.map((m) => m.content).slice(7), ['again']);
  await alice.ack('message_send', { threadId: 456, content: 'alice is back' });
  await bob.wait('message', (d) => d.message.content === 'alice is back');
  assert.equal(messages(alice).length, 9);
  alice.close();
  bob.close();
});

test('the hub killed with SIGKILL and restarted: recovered, with what was sent meanwhile', T, async () => {
  const first = await startSioHub();
  let hub = first;
  const { port, db } = hub;
  const proxy = await startProxy(port);
  const { apiKey } = await project(hub.base, ['456']);
  const alice = await connect(`http://127.0.0.1:${proxy.port}`, { apiKey, userId: 123 }, { ...RECONNECT, transports: ['websocket'] });
  let bob = await connect(hub.base, { apiKey, userId: 'bob' });
  try {
    await alice.join(456);
    await bob.join(456);
    await bob.ack('message_send', { threadId: 456, content: 'one' });
    await waitMessages(alice, 1);

    proxy.state.blocked = true;
    const gone = once(alice.socket, 'disconnect', { what: 'the crash' });
    await hub.stop({ signal: 'SIGKILL', keepDb: true });
    await gone;
    bob.close();
    hub = await startSioHub({ port, db });
    bob = await connect(hub.base, { apiKey, userId: 'bob' });
    await bob.join(456);
    await bob.ack('message_send', { threadId: 456, content: 'two' });
    await bob.ack('message_send', { threadId: 456, content: 'three' });

    await reconnect(proxy, alice);
    assert.equal(alice.socket.recovered, true, 'recovered across a crash of the hub');
    const got = await waitMessages(alice, 3, 0, 'the messages sent while the hub was restarted');
    assert.deepEqual(got.map((m) => [m.content, m.seq]), [['one', 1], ['two', 2], ['three', 3]]);
    await bob.ack('message_send', { threadId: 456, content: 'four' });
    const all = await waitMessages(alice, 4, 0, 'a live message after the recovery');
    assert.deepEqual(all.map((m) => m.content), ['one', 'two', 'three', 'four']);
  } finally {
    alice.close();
    bob.close();
    await hub.stop();
    first.cleanup();
  }
});

test('past the recovery window: not recovered, the thread must be joined again', T, async () => {
  const hub = await startSioHub({ args: ['--socketio-recovery-window-ms', '200'] });
  const proxy = await startProxy(hub.port);
  const { apiKey } = await project(hub.base, ['456']);
  const alice = await connect(`http://127.0.0.1:${proxy.port}`, { apiKey, userId: 123 }, RECONNECT);
  await alice.join(456);
  await drop(proxy, alice);
  // The window is a duration: it has to pass before the client comes back.
  await new Promise((resolve) => setTimeout(resolve, 400));
  await reconnect(proxy, alice);
  assert.equal(alice.socket.recovered, false);
  const ack = await alice.ack('message_send', { threadId: 456, content: 'x' });
  assert.equal(ack.ok, false);
  assert.equal(ack.error.code, 'not_joined');
  await alice.join(456);
  alice.close();
});

test('more missed than the replay cap: not recovered; history pages what was missed', T, async () => {
  const hub = await startSioHub({ args: ['--replay-cap', '2'] });
  const proxy = await startProxy(hub.port);
  const { apiKey } = await project(hub.base, ['456']);
  const alice = await connect(`http://127.0.0.1:${proxy.port}`, { apiKey, userId: 123 }, RECONNECT);
  const bob = await connect(hub.base, { apiKey, userId: 'bob' });
  await alice.join(456);
  await bob.join(456);
  await drop(proxy, alice);
  for (const content of ['m1', 'm2', 'm3']) await bob.ack('message_send', { threadId: 456, content });
  await reconnect(proxy, alice);
  assert.equal(alice.socket.recovered, false);
  assert.equal(messages(alice).length, 0, 'nothing replayed');
  await alice.join(456);
  const page = await alice.ack('history', { threadId: 456 });
  assert.deepEqual(page.messages.map((m) => m.content), ['m1', 'm2', 'm3']);
  alice.close();
  bob.close();
});

test('a client that disconnected itself is not recovered', T, async () => {
  const hub = await startSioHub();
  const { apiKey } = await project(hub.base, ['456']);
  const alice = await connect(hub.base, { apiKey, userId: 123 });
  await alice.join(456);
  alice.socket.disconnect();
  const back = once(alice.socket, 'connect');
  alice.socket.connect();
  await back;
  assert.equal(alice.socket.recovered, false);
  const ack = await alice.ack('message_send', { threadId: 456, content: 'x' });
  assert.equal(ack.error?.code, 'not_joined');
  alice.close();
});

test('another user cannot take over a session by its id', T, async () => {
  const hub = await startSioHub();
  const proxy = await startProxy(hub.port);
  const { apiKey } = await project(hub.base, ['456']);
  const alice = await connect(`http://127.0.0.1:${proxy.port}`, { apiKey, userId: 123 }, RECONNECT);
  await alice.join(456);
  await drop(proxy, alice);
  // Mallory presents alice's session id (and offset) with her own credentials.
  const mallory = await connect(hub.base, { apiKey, userId: 'mallory', pid: alice.socket._pid, offset: alice.socket._lastOffset });
  assert.equal(mallory.socket.recovered, false);
  const ack = await mallory.ack('message_send', { threadId: 456, content: 'x' });
  assert.equal(ack.error?.code, 'not_joined');
  // Alice herself still recovers.
  await reconnect(proxy, alice);
  assert.equal(alice.socket.recovered, true);
  mallory.close();
  alice.close();
});
