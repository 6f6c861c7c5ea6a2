// The client example of the Socket.IO chat server this hub replaces (its README, "Client
// Connection", /work/shared/seeds/chatpulse-socketio-readme.md), run as written against the
// hub: the only changes are the URL (the test hub's port) and `apiKey` added to `auth`.
// Run: node --experimental-websocket --test test/*.test.js (from clients/socketio-test)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { io } from 'socket.io-client';

import { cleanupAll, connect, project, startSioHub, T, track, WAIT_MS } from '../test-support/sio.js';

after(cleanupAll);

let hub;
before(async () => {
  hub = await startSioHub();
});

/** The first `event` on `socket` whose payload passes `pred`, or an error naming what came. */
function next(socket, event, pred = () => true) {
  const seen = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, fn);
      reject(new Error(`the seed's socket got no matching \`${event}\` within ${WAIT_MS} ms; got ${JSON.stringify(seen)}`));
    }, WAIT_MS);
    const fn = (v) => {
      seen.push(v);
      if (!pred(v)) return;
      clearTimeout(timer);
      socket.off(event, fn);
      resolve(v);
    };
    socket.on(event, fn);
  });
}

test("the seed README's client example works unchanged, given an apiKey", T, async () => {
  // Thread 456 exists in the backend: here, room "456" created through REST.
  const { apiKey: KEY } = await project(hub.base, ['456']);
  const observer = await connect(hub.base, { apiKey: KEY, userId: 'observer' });
  await observer.join(456);

  // ---- the seed's example, verbatim but for the port and `apiKey: KEY` ----
  const socket = io(`http://localhost:${hub.port}`, {
    auth: { apiKey: KEY, userId: 123 }
  });

  // Join a thread
  socket.emit('join_thread', { threadId: 456 });

  // Send a message
  socket.emit('message_send', {
    threadId: 456,
    tempId: 'temp_123_1',
    content: 'Hello world!',
    contentType: 'text/plain'
  });

  // Listen for messages
  socket.on('message', (message) => {
    console.log('New message:', message);
  });
  // ---- end of the example ----

  track({ close: () => socket.disconnect() });
  const joined = next(socket, 'thread_joined');
  const mapping = next(socket, 'message_id_mapping');
  const own = next(socket, 'message');
  const connectError = new Promise((_, reject) => socket.once('connect_error', (e) => reject(new Error(`connect_error ${e.message} ${JSON.stringify(e.data)}`))));

  const j = await Promise.race([joined, connectError]);
  assert.equal(j.threadId, '456');
  const m = await mapping;
  assert.deepEqual(m, { threadId: '456', tempId: 'temp_123_1', realId: m.realId, seq: 1 });
  const { message } = await own;
  assert.equal(message.id, m.realId);
  assert.equal(message.threadId, '456');
  assert.equal(message.userId, '123');
  assert.equal(message.content, 'Hello world!');
  assert.equal(message.contentType, 'text/plain');
  const seenByObserver = await observer.wait('message', (e) => e.message?.id === m.realId);
  assert.equal(seenByObserver.message.content, 'Hello world!');
});
