// Pusher's HTTP API through the real `pusher` server SDK (requests signed as Pusher signs
// them): trigger to one channel and to many, socket_id exclusion, triggerBatch, the channel
// queries (GET /channels with filter_by_prefix and info=user_count, GET /channels/NAME with
// info=subscription_count,user_count, GET /channels/presence-…/users),
// terminateUserConnections (close 4009; pusher-js does not reconnect), and the signature
// checks: wrong secret, tampered body, timestamps outside ±600 s (signed by hand, as the SDK
// always signs with the current time).
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  barrier,
  cleanupAll,
  connectPusher,
  errorCode,
  nothingFor,
  nowS,
  pusherApp,
  requireWebSocket,
  sdk,
  sdkFor,
  sdkRefused,
  show,
  signedRequest,
  startAuthServer,
  startPusherHub,
  T,
} from '../test-support/pusher.js';

requireWebSocket();
after(cleanupAll);

let hub;
before(async () => {
  hub = await startPusherHub();
});

test('trigger to one channel: 200 {} and the event with its data', T, async () => {
  const app = await pusherApp(hub);
  const peer = await connectPusher(app);
  await peer.join('orders');
  const res = await sdk('trigger', app.sdk.trigger('orders', 'order-placed', { id: 1, items: ['a', 'b'] }));
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, {});
  assert.deepEqual(await peer.event('orders', 'order-placed'), { id: 1, items: ['a', 'b'] });
});

test('trigger to many channels: each subscriber once per channel it is on', T, async () => {
  const app = await pusherApp(hub);
  const a = await connectPusher(app, { label: 'on c-1 and c-2' });
  const b = await connectPusher(app, { label: 'on c-3' });
  await a.join('c-1');
  await a.join('c-2');
  await b.join('c-3');
  await sdk('trigger many', app.sdk.trigger(['c-1', 'c-2', 'c-3', 'c-nobody'], 'fan-out', { n: 1 }));
  await b.event('c-3', 'fan-out');
  await barrier(app, 'c-2', a);
  assert.deepEqual(a.seenWire('fan-out').map((e) => e.channel).sort(), ['c-1', 'c-2']);
  assert.equal(b.seenWire('fan-out').length, 1);
});

test('socket_id excludes that connection only (the same user’s other connection still gets it)', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const tab1 = await connectPusher(app, { auth, user: 'alice', label: 'alice tab 1' });
  const tab2 = await connectPusher(app, { auth, user: 'alice', label: 'alice tab 2' });
  for (const p of [tab1, tab2]) await p.join('private-inbox');
  await sdk('trigger with socket_id', app.sdk.trigger('private-inbox', 'saved', { ok: 1 }, { socket_id: tab1.socketId }));
  await tab2.event('private-inbox', 'saved');
  await barrier(app, 'private-inbox', tab1);
  assert.deepEqual(tab1.seen('private-inbox', 'saved'), [], 'the connection named by socket_id got the event');
});

test('triggerBatch: several events, channels and names at once, socket_id per event', T, async () => {
  const app = await pusherApp(hub);
  const a = await connectPusher(app, { label: 'a' });
  const b = await connectPusher(app, { label: 'b' });
  for (const p of [a, b]) {
    await p.join('batch-1');
    await p.join('batch-2');
  }
  const res = await sdk(
    'triggerBatch',
    app.sdk.triggerBatch([
      { channel: 'batch-1', name: 'first', data: { n: 1 } },
      { channel: 'batch-2', name: 'second', data: { n: 2 } },
      { channel: 'batch-1', name: 'third', data: 'text', socket_id: a.socketId },
    ]),
  );
  assert.equal(res.status, 200);
  assert.deepEqual(await b.event('batch-1', 'first'), { n: 1 });
  assert.deepEqual(await b.event('batch-2', 'second'), { n: 2 });
  assert.equal(await b.event('batch-1', 'third'), 'text');
  assert.deepEqual(await a.event('batch-1', 'first'), { n: 1 });
  await a.event('batch-2', 'second');
  await barrier(app, 'batch-1', a);
  assert.deepEqual(a.seen('batch-1', 'third'), [], 'socket_id of a batch event was ignored');
  // In batch order on one channel.
  const order = b.seenEntries((e) => e.kind === 'wire' && e.channel === 'batch-1' && ['first', 'third'].includes(e.event)).map((e) => e.event);
  assert.deepEqual(order, ['first', 'third']);
});

test('GET /channels: occupied channels, filter_by_prefix, info=user_count for presence', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const alice = await connectPusher(app, { auth, user: 'alice' });
  const alice2 = await connectPusher(app, { auth, user: 'alice', label: 'alice tab 2' });
  const bob = await connectPusher(app, { auth, user: 'bob' });
  for (const p of [alice, alice2, bob]) await p.join('presence-team');
  await alice.join('presence-solo');
  await bob.join('private-ops');
  await bob.join('public-news');
  // A channel subscribed once and left again is not occupied.
  await bob.join('left-again');
  bob.pusher.unsubscribe('left-again');

  const all = await sdk('GET /channels', app.sdk.get({ path: '/channels' }));
  assert.equal(all.status, 200);
  await untilListed(app, ['presence-solo', 'presence-team', 'private-ops', 'public-news']);

  const presence = await sdk('GET /channels presence-', app.sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } }));
  assert.deepEqual(presence.body, { channels: { 'presence-solo': { user_count: 1 }, 'presence-team': { user_count: 2 } } });

  const priv = await sdk('GET /channels private-', app.sdk.get({ path: '/channels', params: { filter_by_prefix: 'private-' } }));
  assert.deepEqual(priv.body, { channels: { 'private-ops': {} } });

  // user_count without the presence- prefix is refused, as Pusher does.
  const bad = await sdkRefused('GET /channels info=user_count', app.sdk.get({ path: '/channels', params: { info: 'user_count' } }));
  assert.equal(bad.status, 400, show(bad));
});

/** Waits until GET /channels lists exactly `names` (unsubscribes are asynchronous). */
async function untilListed(app, names) {
  const deadline = Date.now() + 5000;
  let last;
  for (;;) {
    last = await sdk('GET /channels', app.sdk.get({ path: '/channels' }));
    const got = Object.keys(last.body.channels ?? {}).sort();
    if (JSON.stringify(got) === JSON.stringify(names)) return;
    if (Date.now() > deadline) assert.fail(`GET /channels should list ${show(names)}; got ${show(last.body)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('GET /channels/NAME: occupied, subscription_count (connections) and user_count (users)', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const alice = await connectPusher(app, { auth, user: 'alice' });
  const alice2 = await connectPusher(app, { auth, user: 'alice', label: 'alice tab 2' });
  const bob = await connectPusher(app, { auth, user: 'bob' });
  for (const p of [alice, alice2, bob]) await p.join('presence-stats');
  await bob.join('plain');

  const p = await sdk('GET presence channel', app.sdk.get({ path: '/channels/presence-stats', params: { info: 'subscription_count,user_count' } }));
  assert.deepEqual(p.body, { occupied: true, subscription_count: 3, user_count: 2 });
  const plain = await sdk('GET public channel', app.sdk.get({ path: '/channels/plain', params: { info: 'subscription_count' } }));
  assert.deepEqual(plain.body, { occupied: true, subscription_count: 1 });
  const empty = await sdk('GET unknown channel', app.sdk.get({ path: '/channels/nobody-here' }));
  assert.deepEqual(empty.body, { occupied: false });
  const bad = await sdkRefused('GET public channel user_count', app.sdk.get({ path: '/channels/plain', params: { info: 'user_count' } }));
  assert.equal(bad.status, 400, show(bad));
});

test('GET /channels/presence-…/users: one entry per user, not per connection', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const peers = [];
  for (const [user, label] of [['alice', 'alice tab 1'], ['alice', 'alice tab 2'], ['bob', 'bob']]) {
    const p = await connectPusher(app, { auth, user, label });
    await p.join('presence-users');
    peers.push(p);
  }
  const res = await sdk('GET users', app.sdk.get({ path: '/channels/presence-users/users' }));
  assert.deepEqual(
    [...res.body.users].sort((x, y) => x.id.localeCompare(y.id)),
    [{ id: 'alice' }, { id: 'bob' }],
  );
  const bad = await sdkRefused('GET users of a public channel', app.sdk.get({ path: '/channels/not-presence/users' }));
  assert.equal(bad.status, 400, show(bad));
});

test('terminateUserConnections: every connection of that user closed 4009, pusher-js stays disconnected; others are untouched', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const mal1 = await connectPusher(app, { auth, user: 'mallory', label: 'mallory tab 1' });
  const mal2 = await connectPusher(app, { auth, user: 'mallory', label: 'mallory tab 2' });
  const bob = await connectPusher(app, { auth, user: 'bob' });
  for (const p of [bob, mal1, mal2]) await p.join('presence-guarded');
  const from = bob.mark();

  const res = await sdk('terminateUserConnections', app.sdk.terminateUserConnections('mallory'));
  assert.equal(res.status, 200);
  for (const m of [mal1, mal2]) {
    await m.waitState('disconnected', { what: 'the terminated connection to end' });
    assert.ok(m.seenEntries((e) => e.kind === 'error' && errorCode(e.data) === 4009).length > 0, `${m.label}: expected close code 4009: ${show(m.events.slice(-5))}`);
  }
  await bob.event('presence-guarded', 'pusher:member_removed', (x) => x.id === 'mallory', { from });
  // 4000-4099 is "refused" for pusher-js: no reconnect.
  await nothingFor(mal1, 2000, (e) => e.kind === 'state', 'state change (a reconnect) after 4009');
  assert.equal(bob.state, 'connected');
  await sdk('trigger', app.sdk.trigger('presence-guarded', 'after', {}));
  await bob.event('presence-guarded', 'after');
});

test('signatures: a wrong secret, a tampered body and an unknown app id are refused', T, async () => {
  const app = await pusherApp(hub);
  // The hand-made signature is right: accepted.
  const ok = await signedRequest(app, 'POST', '/events', { body: { name: 'e', channels: ['x'], data: '{}' } });
  assert.equal(ok.status, 200, `a request signed as Pusher signs was refused: ${show(ok)}`);

  const wrong = await sdkRefused('trigger with a wrong secret', sdkFor({ ...app, secret: 'rh_not_the_key' }).trigger('x', 'e', {}));
  assert.equal(wrong.status, 401, show(wrong));
  const other = await pusherApp(hub);
  const crossed = await sdkRefused("trigger with another app's key and secret", sdkFor({ appId: app.appId, key: other.key, secret: other.secret, port: app.port }).trigger('x', 'e', {}));
  assert.equal(crossed.status, 401, show(crossed));
  const unknown = await sdkRefused('trigger to an unknown app id', sdkFor({ ...app, appId: '1' }).trigger('x', 'e', {}));
  assert.equal(unknown.status, 404, show(unknown));

  // body_md5 of one body, another body sent.
  const path = `/apps/${app.appId}/events`;
  const qs = app.sdk.createSignedQueryString({ method: 'POST', path, body: JSON.stringify({ name: 'e', channels: ['x'], data: '{}' }) });
  const res = await fetch(`${app.base}${path}?${qs}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name: 'e', channels: ['x'], data: '{"evil":1}' }),
  });
  assert.equal(res.status, 401, `a body that does not match body_md5: ${res.status} ${await res.text()}`);
});

test('timestamps: within ±600 s accepted, outside refused', T, async () => {
  const app = await pusherApp(hub);
  const peer = await connectPusher(app);
  await peer.join('clock');
  const body = (n) => ({ name: 'tick', channels: ['clock'], data: JSON.stringify({ n }) });
  for (const [skew, n] of [[-500, 1], [500, 2]]) {
    const res = await signedRequest(app, 'POST', '/events', { body: body(n), timestamp: nowS() + skew });
    assert.equal(res.status, 200, `timestamp ${skew} s off should be accepted: ${show(res)}`);
    await peer.event('clock', 'tick', (d) => d.n === n);
  }
  for (const [skew, n] of [[-700, 3], [700, 4]]) {
    const res = await signedRequest(app, 'POST', '/events', { body: body(n), timestamp: nowS() + skew });
    assert.equal(res.status, 401, `timestamp ${skew} s off should be refused 401: ${show(res)}`);
  }
  const get = await signedRequest(app, 'GET', '/channels', { timestamp: nowS() - 3600 });
  assert.equal(get.status, 401, `a stale GET: ${show(get)}`);
  await barrier(app, 'clock', peer);
  assert.deepEqual(peer.seen('clock', 'tick').map((d) => d.n), [1, 2]);
});
