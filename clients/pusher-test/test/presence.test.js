// Presence channels: the members hash in pusher_internal:subscription_succeeded (ids, hash of
// user_info, count), pusher-js's Members built from it, member_added / member_removed once
// per user and not per tab (a second tab of a present user adds nobody; member_removed comes
// when the user's last tab leaves), and a user's disconnect counted as leaving.
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  barrier,
  cleanupAll,
  connectPusher,
  pusherApp,
  requireWebSocket,
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

/** subscription_count of a channel through the HTTP API. */
async function subscriptions(app, channel) {
  const { body } = await sdk('get channel', app.sdk.get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } }));
  return body.subscription_count;
}

async function setup() {
  const app = await pusherApp(hub);
  const auth = await startAuthServer(app, { userInfo: (user) => ({ name: user[0].toUpperCase() + user.slice(1), role: user === 'bob' ? 'admin' : 'member' }) });
  const as = (user, label) => connectPusher(app, { auth, user, label: label ?? `pusher-js ${user}` });
  return { app, auth, as };
}

test('subscription_succeeded carries the members hash: ids, user_info by id, count', T, async () => {
  const { as } = await setup();
  const bob = await as('bob');
  await bob.join('presence-lobby');
  const alice = await as('alice');
  const members = await alice.join('presence-lobby');

  const wire = alice.seenWire('pusher_internal:subscription_succeeded', { channel: 'presence-lobby' })[0];
  const presence = wire?.data?.presence;
  assert.ok(presence, `subscription_succeeded of a presence channel needs data.presence: ${show(wire)}`);
  assert.deepEqual([...presence.ids].sort(), ['alice', 'bob']);
  assert.deepEqual(presence.hash, { alice: { name: 'Alice', role: 'member' }, bob: { name: 'Bob', role: 'admin' } });
  assert.equal(presence.count, 2);

  // What an application sees through pusher-js.
  assert.equal(members.count, 2);
  assert.deepEqual(members.me, { id: 'alice', info: { name: 'Alice', role: 'member' } });
  assert.deepEqual(members.get('bob'), { id: 'bob', info: { name: 'Bob', role: 'admin' } });

  // Bob learns of Alice with her user_info.
  assert.deepEqual(await bob.event('presence-lobby', 'pusher:member_added', (m) => m.id === 'alice'), { id: 'alice', info: { name: 'Alice', role: 'member' } });
  const added = await bob.wire('pusher_internal:member_added', { channel: 'presence-lobby' });
  assert.deepEqual(added.data, { user_id: 'alice', user_info: { name: 'Alice', role: 'member' } }, `member_added wire form: ${show(added)}`);
});

test('member_added once per user, not per tab; member_removed only when the last tab leaves', T, async () => {
  const { app, as } = await setup();
  const bob = await as('bob');
  await bob.join('presence-tabs');
  const tab1 = await as('alice', 'alice tab 1');
  await tab1.join('presence-tabs');
  await bob.event('presence-tabs', 'pusher:member_added', (m) => m.id === 'alice');

  const tab2 = await as('alice', 'alice tab 2');
  const members2 = await tab2.join('presence-tabs');
  assert.equal(members2.count, 2, 'the second tab sees two users, not three members');
  assert.deepEqual(Object.keys(members2.members).sort(), ['alice', 'bob']);
  await barrier(app, 'presence-tabs', bob, tab1);
  assert.equal(bob.seenWire('pusher_internal:member_added', { pred: (e) => e.data.user_id === 'alice' }).length, 1, 'a second tab of alice sent member_added again');
  assert.equal(tab1.seenWire('pusher_internal:member_added').length, 0, "alice's first tab was told that alice joined");

  // Closing one tab of two: alice is still present.
  tab1.close();
  // The hub has handled the close once the channel counts two connections (bob, tab 2).
  await until(async () => (await subscriptions(app, 'presence-tabs')) === 2, 5000, 'subscription_count 2 after tab 1 closed');
  await barrier(app, 'presence-tabs', bob, tab2);
  assert.equal(bob.seenWire('pusher_internal:member_removed').length, 0, 'member_removed came while alice still had a tab open');
  assert.equal(bob.pusher.channel('presence-tabs').members.count, 2);

  // The last tab leaves (unsubscribe, not a disconnect): now she is removed, once.
  const from = bob.mark();
  tab2.pusher.unsubscribe('presence-tabs');
  const removed = await bob.wire('pusher_internal:member_removed', { channel: 'presence-tabs', from });
  assert.deepEqual(removed.data, { user_id: 'alice' });
  await barrier(app, 'presence-tabs', bob);
  assert.equal(bob.seenWire('pusher_internal:member_removed', { from }).length, 1);
  assert.equal(bob.pusher.channel('presence-tabs').members.count, 1);
});

test("a user's disconnect removes them; coming back adds them again", T, async () => {
  const { as } = await setup();
  const bob = await as('bob');
  await bob.join('presence-door');
  const carol = await as('carol');
  await carol.join('presence-door');
  await bob.event('presence-door', 'pusher:member_added', (m) => m.id === 'carol');
  const from = bob.mark();
  carol.close();
  assert.deepEqual(await bob.event('presence-door', 'pusher:member_removed', (m) => m.id === 'carol', { from }), { id: 'carol', info: { name: 'Carol', role: 'member' } });
  const again = await as('carol', 'carol again');
  await again.join('presence-door');
  await bob.event('presence-door', 'pusher:member_added', (m) => m.id === 'carol', { from });
  assert.equal(bob.seen('presence-door', 'pusher:member_added', (m) => m.id === 'carol', from).length, 1);
});

test('members of one presence channel are not members of another', T, async () => {
  const { app, as } = await setup();
  const bob = await as('bob');
  await bob.join('presence-one');
  await bob.join('presence-two');
  const dave = await as('dave');
  const one = await dave.join('presence-one');
  assert.equal(one.count, 2);
  await barrier(app, 'presence-two', bob);
  assert.equal(bob.seenWire('pusher_internal:member_added', { channel: 'presence-two' }).length, 0, 'member_added went to a channel dave did not join');
  assert.equal(bob.pusher.channel('presence-two').members.count, 1);
});
