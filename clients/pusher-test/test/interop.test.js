// One hub, two dialects: a pusher-js subscriber of channel `general` gets the native room
// `general`'s traffic as events `message`, `message_update`, `typing` and `read_receipt`
// whose data is the native frame (from REST and from the native JavaScript client,
// clients/js/realtimehub.js); events triggered through the Pusher HTTP API reach Pusher
// subscribers and are not stored; presence in a presence- channel is the hub's presence
// (GET /api/v1/rooms/{room}/presence lists the Pusher member once per user).
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { RealtimeHub } from '../../js/realtimehub.js';
import {
  barrier,
  cleanupAll,
  connectPusher,
  pusherApp,
  requireWebSocket,
  rest,
  sdk,
  show,
  startAuthServer,
  startPusherHub,
  T,
  track,
  until,
} from '../test-support/pusher.js';

requireWebSocket();
after(cleanupAll);

let hub;
before(async () => {
  hub = await startPusherHub();
});

/** The native client (the project's own JavaScript client) as `userId`, joined to `room`. */
async function native(app, userId, room) {
  const c = track(new RealtimeHub({ url: hub.base, apiKey: app.apiKey, userId }, { reconnect: false }));
  await c.connect();
  await c.join(room);
  return c;
}

test('a message posted through REST reaches the Pusher subscriber as event `message` with the native frame', T, async () => {
  const app = await pusherApp(hub, { rooms: ['general'] });
  const peer = await connectPusher(app);
  await peer.join('general');
  const posted = await rest(hub.base, 'POST', '/api/v1/rooms/general/messages', { apiKey: app.apiKey, body: { userId: 'system', content: 'Welcome!' } });
  const m = await peer.event('general', 'message', (d) => d?.content === 'Welcome!');
  assert.equal(m.id, posted.id);
  assert.equal(m.seq, posted.seq);
  assert.equal(m.room, 'general');
  assert.equal(m.userId, 'system');
  assert.equal(m.contentType, 'text/plain');
  assert.equal(typeof m.createdAt, 'string');
});

test('a native client’s message, typing, edit and read receipt reach the Pusher subscriber', T, async () => {
  const app = await pusherApp(hub, { rooms: ['general'] });
  const peer = await connectPusher(app);
  await peer.join('general');
  const nat = await native(app, 'nat', 'general');
  const reader = await native(app, 'reader', 'general');

  nat.typing('general');
  const t = await peer.event('general', 'typing', (d) => d?.userId === 'nat');
  assert.equal(t.isTyping, true, show(t));
  assert.equal(t.room, 'general');

  const sent = await nat.send('general', 'hello from native');
  const m = await peer.event('general', 'message', (d) => d?.id === sent.id);
  assert.equal(m.content, 'hello from native');
  assert.equal(m.userId, 'nat');

  await nat.edit('general', sent.id, 'hello (edited)');
  const u = await peer.event('general', 'message_update', (d) => d?.message?.id === sent.id);
  assert.equal(u.message.content, 'hello (edited)');
  assert.equal(typeof u.message.editedAt, 'string');

  await reader.markRead('general', [sent.id]);
  const r = await peer.event('general', 'read_receipt', (d) => d?.messageId === sent.id);
  assert.equal(r.userId, 'reader');
  assert.equal(r.room, 'general');
});

test('an event triggered through the HTTP API reaches Pusher subscribers and is not stored', T, async () => {
  const app = await pusherApp(hub, { rooms: ['general'] });
  const peer = await connectPusher(app);
  await peer.join('general');
  await rest(hub.base, 'POST', '/api/v1/rooms/general/messages', { apiKey: app.apiKey, body: { userId: 'system', content: 'stored one' } });
  const before = (await rest(hub.base, 'GET', '/api/v1/rooms/general/messages', { apiKey: app.apiKey })).messages;
  await sdk('trigger', app.sdk.trigger('general', 'announcement', { text: 'not stored' }));
  assert.deepEqual(await peer.event('general', 'announcement'), { text: 'not stored' });
  const afterwards = (await rest(hub.base, 'GET', '/api/v1/rooms/general/messages', { apiKey: app.apiKey })).messages;
  assert.deepEqual(afterwards.map((x) => x.id), before.map((x) => x.id), `a triggered event was stored: ${show(afterwards)}`);
  // Nor does it take a seq: the next stored message follows the last one.
  const next = await rest(hub.base, 'POST', '/api/v1/rooms/general/messages', { apiKey: app.apiKey, body: { userId: 'system', content: 'stored two' } });
  assert.equal(next.seq, before.at(-1).seq + 1);
});

test('an event triggered to a native room does not disturb its native clients', T, async () => {
  const app = await pusherApp(hub, { rooms: ['general'] });
  const nat = await native(app, 'nat', 'general');
  const peer = await connectPusher(app);
  await peer.join('general');
  const errors = [];
  nat.on('error', (e) => errors.push(e));
  await sdk('trigger', app.sdk.trigger('general', 'pusher-only', { x: 1 }));
  await peer.event('general', 'pusher-only');
  // The native client keeps working: a message round-trips.
  const sent = await nat.send('general', 'still fine');
  await peer.event('general', 'message', (d) => d?.id === sent.id);
  assert.deepEqual(errors, [], `the native client got errors: ${show(errors)}`);
});

test('presence: the Pusher member is in the hub’s presence once per user, and leaves it with the last tab', T, async () => {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app);
  const tab1 = await connectPusher(app, { auth, user: 'alice', label: 'alice tab 1' });
  const tab2 = await connectPusher(app, { auth, user: 'alice', label: 'alice tab 2' });
  const bob = await connectPusher(app, { auth, user: 'bob' });
  for (const p of [tab1, tab2, bob]) await p.join('presence-x');

  const presence = await rest(hub.base, 'GET', '/api/v1/rooms/presence-x/presence', { apiKey: app.apiKey });
  assert.equal(presence.room, 'presence-x');
  assert.deepEqual(
    presence.users.map((u) => [u.userId, u.connections]),
    [
      ['alice', 2],
      ['bob', 1],
    ],
    show(presence),
  );
  assert.ok(presence.users.every((u) => u.status === 'online'), show(presence));

  tab1.close();
  tab2.close();
  await until(
    async () => {
      const p = await rest(hub.base, 'GET', '/api/v1/rooms/presence-x/presence', { apiKey: app.apiKey });
      return JSON.stringify(p.users.map((u) => u.userId)) === '["bob"]';
    },
    5000,
    'alice to leave the hub’s presence of presence-x after both tabs closed',
  );
  await bob.event('presence-x', 'pusher:member_removed', (m) => m.id === 'alice');
  await barrier(app, 'presence-x', bob);
  assert.equal(bob.seenWire('pusher_internal:member_removed').length, 1);
});
