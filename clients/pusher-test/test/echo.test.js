// Laravel Echo (broadcaster 'pusher') on top of pusher-js, as a Laravel front end uses it:
// channel().listen() with a leading '.' (the event name as is) and without (Echo prefixes
// the App\Events namespace, as Laravel broadcasts it), private() (Echo adds `private-` and
// authorizes at authEndpoint with a form body and the bearer token), join() with
// here/joining/leaving (adds `presence-`; once per user, not per tab), whisper /
// listenForWhisper (client events `client-NAME` to the others only), encryptedPrivate(),
// and socketId() for "toOthers" (the SDK's socket_id).
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { barrier, cleanupAll, openEcho, pusherApp, requireWebSocket, rest, sdk, show, startAuthServer, startPusherHub, T } from '../test-support/pusher.js';

requireWebSocket();
after(cleanupAll);

let hub;
before(async () => {
  hub = await startPusherHub();
});

async function setup(rooms = []) {
  const app = await pusherApp(hub, { rooms });
  const auth = await startAuthServer(app);
  return { app, auth };
}

test("channel('general').listen('.message') gets the native room's messages; listen('OrderShipped') gets App\\Events\\OrderShipped", T, async () => {
  const { app } = await setup(['general']);
  const guest = openEcho(app);
  guest.echo.channel('general').listen('.message', guest.on('message')).listen('OrderShipped', guest.on('OrderShipped')).subscribed(guest.on('subscribed'));
  await guest.connected();
  await guest.got('subscribed');

  const posted = await rest(hub.base, 'POST', '/api/v1/rooms/general/messages', { apiKey: app.apiKey, body: { userId: 'system', content: 'hello Echo' } });
  const m = await guest.got('message', (d) => d?.content === 'hello Echo');
  assert.equal(m.id, posted.id);

  // What Laravel's Pusher broadcaster sends for `broadcast(new OrderShipped($order))`.
  await sdk('trigger App\\Events\\OrderShipped', app.sdk.trigger('general', 'App\\Events\\OrderShipped', { order: { id: 5 } }));
  assert.deepEqual(await guest.got('OrderShipped'), { order: { id: 5 } });
});

test("private('orders'): Echo subscribes private-orders, authorized with a form body and the bearer token", T, async () => {
  const { app, auth } = await setup();
  const alice = openEcho(app, { auth, user: 'alice' });
  alice.echo.private('orders').listen('.status-changed', alice.on('status')).subscribed(alice.on('subscribed')).error(alice.on('error'));
  await alice.connected();
  await alice.got('subscribed', () => true, { failOn: (e) => e.kind === 'echo' && e.event === 'error' });
  const [req] = auth.for('private-orders');
  assert.ok(req, `Echo did not ask the auth endpoint for private-orders: ${show(auth.requests)}`);
  assert.match(req.contentType, /application\/x-www-form-urlencoded/);
  assert.equal(req.user, 'alice', 'the bearer token did not reach the auth endpoint');
  assert.equal(req.body.socket_id, alice.echo.socketId());
  await sdk('trigger', app.sdk.trigger('private-orders', 'status-changed', { status: 'shipped' }));
  assert.deepEqual(await alice.got('status'), { status: 'shipped' });
});

test("join('room'): here lists who is there; joining and leaving once per user, not per tab", T, async () => {
  const { app, auth } = await setup();
  const join = (user, label) => {
    const peer = openEcho(app, { auth, user, label });
    peer.echo.join('room').here(peer.on('here')).joining(peer.on('joining')).leaving(peer.on('leaving'));
    return peer;
  };
  const alice = join('alice');
  await alice.connected();
  assert.deepEqual(await alice.got('here'), [{ name: 'User alice' }]);

  const bob1 = join('bob', 'Echo bob tab 1');
  await bob1.connected();
  const here = await bob1.got('here');
  assert.deepEqual([...here].sort((a, b) => a.name.localeCompare(b.name)), [{ name: 'User alice' }, { name: 'User bob' }]);
  assert.deepEqual(await alice.got('joining'), { name: 'User bob' });

  const bob2 = join('bob', 'Echo bob tab 2');
  await bob2.connected();
  await bob2.got('here');
  await barrier(app, 'presence-room', alice);
  assert.equal(alice.calls('joining').length, 1, `a second tab of bob fired joining again: ${show(alice.calls('joining'))}`);

  bob1.echo.leave('room');
  // The unsubscribe and a barrier would come from different connections: first wait until
  // the hub counts alice and bob's other tab only.
  await untilSubscriptions(app, 'presence-room', 2);
  await barrier(app, 'presence-room', alice);
  assert.deepEqual(alice.calls('leaving'), [], 'leaving fired while bob still had a tab in the room');

  bob2.echo.leave('room');
  assert.deepEqual(await alice.got('leaving'), { name: 'User bob' });
  await barrier(app, 'presence-room', alice);
  assert.equal(alice.calls('leaving').length, 1);
});

async function untilSubscriptions(app, channel, n) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const { body } = await sdk('get channel', app.sdk.get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } }));
    if (body.subscription_count === n) return;
    if (Date.now() > deadline) assert.fail(`${channel}: subscription_count ${body.subscription_count}, expected ${n}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const kind of ['private', 'join']) {
  test(`whisper / listenForWhisper on ${kind}(): client-typing to the others only`, T, async () => {
    const { app, auth } = await setup();
    const full = kind === 'private' ? 'private-chat' : 'presence-chat';
    const peers = ['alice', 'bob', 'carol'].map((user) => {
      const peer = openEcho(app, { auth, user });
      peer.echo[kind]('chat').listenForWhisper('typing', peer.on('typing')).subscribed(peer.on('subscribed'));
      return peer;
    });
    for (const p of peers) {
      await p.connected();
      await p.got('subscribed');
    }
    const [alice, bob, carol] = peers;
    bob.echo[kind]('chat').whisper('typing', { name: 'bob' });
    assert.deepEqual(await alice.got('typing'), { name: 'bob' });
    assert.deepEqual(await carol.got('typing'), { name: 'bob' });
    const wire = alice.seenWire('client-typing', { channel: full })[0];
    assert.ok(wire, `the whisper should arrive as client-typing on ${full}`);
    if (kind === 'join') {
      assert.equal(wire.user_id, 'bob', show(wire));
      // pusher-js hands the sender to the callback as metadata.
      assert.deepEqual(alice.callEntries('typing')[0].meta, { user_id: 'bob' });
    }
    await barrier(app, full, bob);
    assert.deepEqual(bob.calls('typing'), [], 'the whisperer heard its own whisper');
  });
}

test('encryptedPrivate(): Echo decrypts what the SDK encrypted', T, async () => {
  const { app, auth } = await setup();
  const alice = openEcho(app, { auth, user: 'alice' });
  alice.echo.encryptedPrivate('vault').listen('.opened', alice.on('opened')).subscribed(alice.on('subscribed'));
  await alice.connected();
  await alice.got('subscribed');
  await sdk('trigger encrypted', app.sdk.trigger('private-encrypted-vault', 'opened', { by: 'alice' }));
  assert.deepEqual(await alice.got('opened'), { by: 'alice' });
});

test("socketId() for toOthers: the SDK's socket_id leaves the sender out", T, async () => {
  const { app } = await setup();
  const [sender, other] = ['sender', 'other'].map((label) => {
    const peer = openEcho(app, { label: `Echo ${label}` });
    peer.echo.channel('feed').listen('.posted', peer.on('posted')).subscribed(peer.on('subscribed'));
    return peer;
  });
  for (const p of [sender, other]) {
    await p.connected();
    await p.got('subscribed');
  }
  // A Laravel backend gets X-Socket-ID from the page and broadcasts ->toOthers().
  await sdk('trigger toOthers', app.sdk.trigger('feed', 'posted', { id: 1 }, { socket_id: sender.echo.socketId() }));
  assert.deepEqual(await other.got('posted'), { id: 1 });
  await barrier(app, 'feed', sender);
  assert.deepEqual(sender.calls('posted'), []);
  assert.equal(sender.echo.connectionStatus(), 'connected');
});
