// Subscribing: public channels (no auth, created as a room of the same name on first
// subscribe), private channels authorized by a real auth endpoint (node:http + the pusher
// SDK's authorizeChannel, pusher-js's form-encoded request, or JSON from a customHandler),
// signatures the hub must refuse (forged, made for another socket_id, missing), unsubscribe,
// and private-encrypted- channels relayed as opaque payloads (the SDK encrypts, pusher-js
// decrypts with the shared secret from the auth endpoint; the hub never sees the key).
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  barrier,
  cleanupAll,
  connectPusher,
  pusherApp,
  RawPeer,
  requireWebSocket,
  rest,
  sdk,
  show,
  startAuthServer,
  startPusherHub,
  T,
  until,
} from '../test-support/pusher.js';

requireWebSocket();
after(cleanupAll);

let hub;
before(async () => {
  hub = await startPusherHub();
});

test('a public channel needs no auth, becomes a public room on first subscribe, and gets triggered events', T, async () => {
  const app = await pusherApp(hub);
  const peer = await connectPusher(app);
  await assert.rejects(rest(hub.base, 'GET', '/api/v1/rooms/news', { apiKey: app.apiKey }), (e) => e.status === 404);
  await peer.join('news');
  const room = await rest(hub.base, 'GET', '/api/v1/rooms/news', { apiKey: app.apiKey });
  assert.equal(room.name, 'news');
  assert.equal(room.type, 'public');

  await sdk('trigger', app.sdk.trigger('news', 'breaking', { title: 'Hub speaks Pusher' }));
  assert.deepEqual(await peer.event('news', 'breaking'), { title: 'Hub speaks Pusher' });
});

test('the wire form: subscription_succeeded and triggered events carry channel and data as a string', T, async () => {
  const app = await pusherApp(hub);
  const raw = await RawPeer.connect(app);
  const ok = await raw.join(app, 'wire-form');
  assert.equal(ok.channel, 'wire-form');
  await sdk('trigger', app.sdk.trigger('wire-form', 'evt', { a: 1 }));
  const e = await raw.wire('evt', { channel: 'wire-form' });
  assert.equal(typeof e.rawData, 'string', `Pusher relays data as the string it was given: ${e.text}`);
  assert.deepEqual(JSON.parse(e.rawData), { a: 1 });
  // A string payload stays the same string (no re-encoding).
  await sdk('trigger', app.sdk.trigger('wire-form', 'txt', 'plain text, not JSON'));
  const t = await raw.wire('txt', { channel: 'wire-form' });
  assert.equal(t.rawData, 'plain text, not JSON', t.text);
});

test('a private channel: pusher-js asks the auth endpoint (form body with socket_id, channel_name), the hub checks the signature', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const peer = await connectPusher(app, { auth, user: 'alice' });
  await peer.join('private-orders');
  const [req] = auth.for('private-orders');
  assert.ok(req, `the auth endpoint was not asked: ${show(auth.requests)}`);
  assert.match(req.contentType, /application\/x-www-form-urlencoded/);
  assert.equal(req.body.socket_id, peer.socketId);
  assert.equal(req.status, 200, show(req));
  await sdk('trigger', app.sdk.trigger('private-orders', 'order-shipped', { id: 7 }));
  assert.deepEqual(await peer.event('private-orders', 'order-shipped'), { id: 7 });
});

test('the auth endpoint takes JSON too: a channelAuthorization.customHandler posting JSON with fetch', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const customHandler = ({ socketId, channelName }, callback) => {
    fetch(auth.url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer carol' },
      body: JSON.stringify({ socket_id: socketId, channel_name: channelName }),
    })
      .then(async (r) => (r.ok ? callback(null, await r.json()) : callback(new Error(`auth ${r.status} ${await r.text()}`), null)))
      .catch((err) => callback(err, null));
  };
  const peer = await connectPusher(app, { channelAuthorization: { customHandler }, label: 'pusher-js with a JSON customHandler' });
  const members = await peer.join('presence-json');
  assert.equal(members.me.id, 'carol');
  const [req] = auth.for('presence-json');
  assert.match(req.contentType, /application\/json/);
  assert.equal(req.body.socket_id, peer.socketId);
});

test('the auth endpoint refusing (403): pusher:subscription_error, and the connection stays usable', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const peer = await connectPusher(app, { auth, user: 'mallory' });
  peer.subscribe('private-forbidden-payroll');
  const err = await peer.event('private-forbidden-payroll', 'pusher:subscription_error');
  assert.equal(err.status, 403, show(err));
  await peer.join('after-refusal');
  assert.equal(peer.state, 'connected');
});

/**
 * Sends `pusher:subscribe` with a bad `auth` and expects the hub to refuse it: a pusher:error
 * (as Pusher answers a bad signature) or pusher:subscription_error, no
 * subscription_succeeded, no events of that channel afterwards, and the socket still open.
 */
async function expectRefused(app, raw, channel, extra, why) {
  const from = raw.mark();
  raw.send('pusher:subscribe', { channel, ...extra });
  const refusal = await raw.waitEntry((e) => e.kind === 'wire' && ['pusher:error', 'pusher:subscription_error'].includes(e.event), {
    from,
    what: `the hub to refuse ${channel} (${why})`,
    failOn: (e) => e.kind === 'close' || (e.event === 'pusher_internal:subscription_succeeded' && e.channel === channel),
  });
  assert.ok(refusal.data && (refusal.data.message || refusal.data.error || refusal.data.type), `a refusal should say why: ${refusal.text}`);
  await sdk('trigger', app.sdk.trigger(channel, 'secret', { leaked: true }));
  await raw.join(app, `ok-${channel}`);
  await barrier(app, `ok-${channel}`, raw);
  assert.deepEqual(raw.seenWire('secret', { from }), [], `an event of ${channel} reached a connection whose subscribe was refused`);
  assert.equal(raw.closedWith, null);
}

test('the hub refuses a forged signature, one made for another socket_id, and a missing auth', T, async () => {
  const app = await pusherApp(hub);
  const raw = await RawPeer.connect(app, { label: 'raw attacker' });
  const victim = await RawPeer.connect(app, { label: 'raw victim' });
  await expectRefused(app, raw, 'private-a', { auth: `${app.key}:${'0'.repeat(64)}` }, 'forged signature');
  const forVictim = app.sdk.authorizeChannel(victim.socketId, 'private-b');
  await expectRefused(app, raw, 'private-b', forVictim, "a signature for the victim's socket_id");
  await expectRefused(app, raw, 'private-c', {}, 'no auth');
  const wrongKey = app.sdk.authorizeChannel(raw.socketId, 'private-d').auth.replace(/^[^:]+/, 'p_ffffffffffffffff');
  await expectRefused(app, raw, 'private-d', { auth: wrongKey }, 'another app key before the colon');
  // A presence signature must cover channel_data: the same auth with other channel_data is refused.
  const signed = app.sdk.authorizeChannel(raw.socketId, 'presence-e', { user_id: 'raw', user_info: {} });
  await expectRefused(app, raw, 'presence-e', { auth: signed.auth, channel_data: JSON.stringify({ user_id: 'admin' }) }, 'channel_data changed after signing');
});

test('unsubscribe: no more events on that channel, and it is no longer occupied', T, async () => {
  const app = await pusherApp(hub);
  const peer = await connectPusher(app);
  await peer.join('leaving');
  await peer.join('staying');
  const occupied = async () => (await sdk('get channel', app.sdk.get({ path: '/channels/leaving' }))).body.occupied;
  assert.equal(await occupied(), true);
  peer.pusher.unsubscribe('leaving');
  await until(async () => (await occupied()) === false, 5000, 'GET /channels/leaving to say occupied:false after pusher:unsubscribe');
  const from = peer.mark();
  await sdk('trigger', app.sdk.trigger('leaving', 'late', { n: 1 }));
  await barrier(app, 'staying', peer);
  assert.deepEqual(peer.seenWire('late', { from }), [], 'an event of an unsubscribed channel arrived');
});

test('private-encrypted-: relayed as an opaque payload; pusher-js decrypts what the SDK encrypted', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const peer = await connectPusher(app, { auth, user: 'alice' });
  await peer.join('private-encrypted-vault');
  assert.ok(auth.for('private-encrypted-vault')[0]?.answer?.shared_secret, 'the auth endpoint gave pusher-js a shared_secret');
  const raw = await RawPeer.connect(app, { label: 'raw subscriber (no key)' });
  await raw.join(app, 'private-encrypted-vault');

  await sdk('trigger encrypted', app.sdk.trigger('private-encrypted-vault', 'combination', { code: '12-34-56' }));
  assert.deepEqual(await peer.event('private-encrypted-vault', 'combination'), { code: '12-34-56' });
  const e = await raw.wire('combination', { channel: 'private-encrypted-vault' });
  assert.ok(e.data.ciphertext && e.data.nonce, `the hub should relay {nonce, ciphertext} as is: ${e.text}`);
  assert.ok(!e.text.includes('12-34-56'), 'the plaintext went over the wire');
});

