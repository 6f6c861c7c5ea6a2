// Client events (`client-…`, sent by pusher-js's channel.trigger): on private and presence
// channels they reach the other subscribers only (never echoed to the sender), carry the
// sender's user_id on presence channels, are never stored, and are rate-limited with Pusher
// error 4301 (the connection stays). On a public channel, or from a connection that is not
// subscribed, they are refused with pusher:error and reach nobody.
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  barrier,
  cleanupAll,
  connectPusher,
  pusherApp,
  RawPeer,
  requireWebSocket,
  rest,
  show,
  startAuthServer,
  startPusherHub,
  T,
} from '../test-support/pusher.js';

requireWebSocket();
after(cleanupAll);

/** Three pusher-js users of one app on `channel`. */
async function trio(hub, channel) {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const [alice, bob, carol] = await Promise.all(['alice', 'bob', 'carol'].map((user) => connectPusher(app, { auth, user })));
  for (const p of [alice, bob, carol]) await p.join(channel);
  return { app, auth, alice, bob, carol };
}

describe('with the default settings', () => {
  let hub;
  before(async () => {
    hub = await startPusherHub();
  });

  test('on a private channel: to the other subscribers only, not back to the sender', T, async () => {
    const { app, alice, bob, carol } = await trio(hub, 'private-chat');
    alice.trigger('private-chat', 'client-typing', { typing: true });
    assert.deepEqual(await bob.event('private-chat', 'client-typing'), { typing: true });
    assert.deepEqual(await carol.event('private-chat', 'client-typing'), { typing: true });
    // Bob got it, so the hub handled it: an echo to alice would come before this barrier.
    await barrier(app, 'private-chat', alice);
    assert.deepEqual(alice.seen('private-chat', 'client-typing'), [], 'the sender got its own client event back');
    const wire = bob.seenWire('client-typing')[0];
    assert.equal(wire.channel, 'private-chat');
    assert.equal(wire.user_id, undefined, `user_id is for presence channels: ${show(wire)}`);
  });

  test('on a presence channel: they carry the sender’s user_id', T, async () => {
    const { app, alice, bob } = await trio(hub, 'presence-room');
    bob.trigger('presence-room', 'client-wave', { emoji: '👋' });
    const got = await alice.wire('client-wave', { channel: 'presence-room' });
    assert.equal(got.user_id, 'bob', `client events on presence channels carry user_id: ${show(got)}`);
    assert.deepEqual(got.data, { emoji: '👋' });
    await barrier(app, 'presence-room', bob);
    assert.deepEqual(bob.seenWire('client-wave'), []);
  });

  test('they are never stored', T, async () => {
    const { app, alice, bob } = await trio(hub, 'private-ephemeral');
    for (let i = 0; i < 3; i++) alice.trigger('private-ephemeral', 'client-note', { i });
    await bob.event('private-ephemeral', 'client-note', (d) => d.i === 2);
    const { messages } = await rest(hub.base, 'GET', '/api/v1/rooms/private-ephemeral/messages', { apiKey: app.apiKey });
    assert.deepEqual(messages, [], 'client events showed up in the room history');
  });

  test('on a public channel: refused with pusher:error, reaches nobody, the sender stays connected', T, async () => {
    const app = await pusherApp(hub);
    const [alice, bob] = await Promise.all(['alice', 'bob'].map((label) => connectPusher(app, { label })));
    await alice.join('lobby');
    await bob.join('lobby');
    const from = alice.mark();
    alice.trigger('lobby', 'client-shout', { loud: true });
    const err = await alice.wire('pusher:error', { from, what: 'the refusal of a client event on a public channel' });
    assert.ok(err.data?.message, `pusher:error should say why: ${show(err)}`);
    await barrier(app, 'lobby', bob);
    assert.deepEqual(bob.seen('lobby', 'client-shout'), [], 'a client event on a public channel was relayed');
    assert.equal(alice.state, 'connected');
  });

  test('from a connection not subscribed to the channel: refused, reaches nobody', T, async () => {
    const { app, bob } = await trio(hub, 'private-members');
    const outsider = await RawPeer.connect(app, { label: 'raw outsider' });
    outsider.send('client-spoof', { spoofed: true }, 'private-members');
    await outsider.wire('pusher:error', { what: 'the refusal of a client event on a channel it has not subscribed' });
    await barrier(app, 'private-members', bob);
    assert.deepEqual(bob.seenWire('client-spoof'), [], 'a client event from a non-subscriber was relayed');
  });

  test('an event name without the client- prefix from a client is not relayed', T, async () => {
    const { app, bob } = await trio(hub, 'private-prefix');
    const raw = await RawPeer.connect(app, { label: 'raw subscriber' });
    await raw.join(app, 'private-prefix');
    raw.send('order-shipped', { fake: true }, 'private-prefix');
    await barrier(app, 'private-prefix', bob, raw);
    assert.deepEqual(bob.seenWire('order-shipped'), [], 'a client posed as the server with a non-client- event');
  });
});

describe('rate limit (--pusher-client-events-per-second 5)', () => {
  let hub;
  before(async () => {
    hub = await startPusherHub({ args: ['--pusher-client-events-per-second', '5'] });
  });

  test('a burst over the budget is refused with pusher:error 4301; the connection stays and sends again later', T, async () => {
    const { app, alice, bob } = await trio(hub, 'private-burst');
    const from = alice.mark();
    // 15 at once against 5 a second: the first pass, the rest get 4301.
    for (let i = 0; i < 15; i++) alice.trigger('private-burst', 'client-spam', { i });
    const err = await alice.wire('pusher:error', { from, pred: (e) => e.data?.code === 4301, what: 'error code 4301' });
    assert.ok(err.data.message, show(err));
    await barrier(app, 'private-burst', bob);
    const got = bob.seen('private-burst', 'client-spam').length;
    assert.ok(got >= 1 && got < 15, `bob got ${got} of 15: some should pass, the rest be refused`);
    assert.equal(alice.state, 'connected');
    // After a second the budget is back.
    await new Promise((r) => setTimeout(r, 1200));
    alice.trigger('private-burst', 'client-later', { ok: true });
    assert.deepEqual(await bob.event('private-burst', 'client-later'), { ok: true });
    assert.equal(alice.state, 'connected');
  });
});
