// pusher-js reconnects by itself: the hub stopped (SIGTERM: a clean shutdown; SIGKILL: the
// sockets just die) and started again on the same port and database. pusher-js goes back to
// `connected` with a new socket_id, subscribes again to its public, private (authorized
// anew for the new socket_id) and presence channels, and events triggered afterwards arrive.
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { cleanupAll, connectPusher, pusherApp, requireWebSocket, sdk, show, startAuthServer, startPusherHub } from '../test-support/pusher.js';

requireWebSocket();
after(cleanupAll);

const CHANNELS = ['news', 'private-orders', 'presence-lobby'];

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`after the hub is stopped (${signal}) and restarted, pusher-js reconnects, resubscribes and gets new events`, { timeout: 90000 }, async () => {
    const first = await startPusherHub();
    let hub = first;
    const { port, db } = first;
    try {
      const app = await pusherApp(hub);
      const auth = await startAuthServer(app);
      const alice = await connectPusher(app, { auth, user: 'alice' });
      for (const c of CHANNELS) await alice.join(c);
      const firstSocket = alice.socketId;
      const from = alice.mark();

      await hub.stop({ signal, keepDb: true });
      await alice.waitEntry((e) => e.kind === 'state' && e.event !== 'connected', { from, what: 'pusher-js to notice that the hub is gone' });
      hub = await startPusherHub({ port, db });

      // pusher-js retries a second after the drop, finds the port closed (the new process
      // takes about a second to start) and then waits out its own strategy (about 15 s)
      // before the attempt that succeeds: that is pusher-js, not the hub.
      await alice.connected({ from, timeoutMs: 40000 });
      for (const c of CHANNELS) await alice.subscribed(c, { from, timeoutMs: 10000 });
      const orderAuths = auth.for('private-orders');
      assert.equal(orderAuths.at(-1).body.socket_id, alice.socketId, `private-orders was not authorized again for the new socket_id: ${show(orderAuths.map((r) => r.body))}`);
      if (alice.socketId === firstSocket) {
        // Not fatal for pusher-js, but a socket_id should not repeat: a signature made for the
        // old connection would be valid for whoever gets the id next.
        console.warn(`note: the restarted hub gave the same socket_id ${firstSocket} again`);
      }
      const members = alice.pusher.channel('presence-lobby').members;
      assert.equal(members.me?.id, 'alice');
      assert.equal(members.count, 1);

      // The same app (project, secret, app id) on the new process: the SDK triggers as before.
      for (const c of CHANNELS) {
        await sdk(`trigger ${c} after the restart`, app.sdk.trigger(c, 'after-restart', { c }));
        assert.deepEqual(await alice.event(c, 'after-restart', () => true, { from }), { c });
      }
    } finally {
      await hub.stop();
      first.cleanup();
    }
  });
}
