// The Pusher connection (protocol 7 at /app/{key}): pusher:connection_established with a
// socket_id the SDKs accept and activity_timeout, pusher:ping / pusher:pong both ways
// (pusher-js's own pings and the hub's pings of a silent connection, close 4201 when no
// pong comes), and the close codes pusher-js acts on: 4001 unknown app key (pusher-js must
// not reconnect), and a hub at --max-connections refusing the upgrade itself (503 before
// any WebSocket: the cap protects the loop, so it is decided at accept, before the path
// is read) while pusher-js backs off and connects once there is room. 4009 (terminated by
// the backend) is in http-api.test.js.
// Run: node --experimental-websocket --test test/*.test.js (from clients/pusher-test)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  cleanupAll,
  connectPusher,
  errorCode,
  nothingFor,
  openPusher,
  pusherApp,
  RawPeer,
  requireWebSocket,
  sdk,
  show,
  startPusherHub,
  T,
  until,
} from '../test-support/pusher.js';

// The raw-WebSocket tests need Node's global WebSocket (Node 20: --experimental-websocket).
requireWebSocket();
after(cleanupAll);

describe('with the default settings', () => {
  let hub;
  before(async () => {
    hub = await startPusherHub();
  });

  test('the handshake: pusher:connection_established with a socket_id like 123.456 and activity_timeout', T, async () => {
    const app = await pusherApp(hub);
    const raw = RawPeer.open(app);
    const est = await raw.established();
    assert.equal(est.channel, undefined, `connection_established has no channel: ${est.text}`);
    // Pusher sends `data` JSON-encoded as a string; pusher-js takes both, other clients
    // (pusher-websocket-java, -swift, pysher) parse the string.
    assert.equal(typeof est.rawData, 'string', `data should be a JSON-encoded string as Pusher sends it: ${est.text}`);
    assert.match(String(est.data.socket_id), /^\d+\.\d+$/, `the server SDKs refuse any other socket_id form: ${est.text}`);
    assert.ok(Number.isInteger(est.data.activity_timeout) && est.data.activity_timeout > 0, `activity_timeout (seconds) must be a positive integer: ${est.text}`);
    const other = await RawPeer.connect(app);
    assert.notEqual(other.socketId, raw.socketId, 'two connections share a socket_id');
  });

  test('pusher-js connects over ws to /app/{key} and learns its socket_id', T, async () => {
    const app = await pusherApp(hub);
    const peer = await connectPusher(app);
    assert.equal(peer.state, 'connected');
    assert.match(peer.socketId, /^\d+\.\d+$/);
    assert.deepEqual(peer.states(), ['connecting', 'connected']);
  });

  test('pusher:ping from the client is answered with pusher:pong', T, async () => {
    const app = await pusherApp(hub);
    const raw = await RawPeer.connect(app);
    const from = raw.mark();
    raw.send('pusher:ping', {});
    const pong = await raw.wire('pusher:pong', { from });
    assert.equal(pong.channel, undefined);
    const again = raw.mark();
    raw.send('pusher:ping', {});
    await raw.wire('pusher:pong', { from: again, what: 'the second pong' });
  });

  test("pusher-js's own pings (after its activityTimeout) get pusher:pong and it stays connected", T, async () => {
    const app = await pusherApp(hub);
    // pusher-js pings after min(activityTimeout, the hub's activity_timeout) of silence and
    // reconnects when no pong comes within pongTimeout.
    const peer = await connectPusher(app, { activityTimeout: 300, pongTimeout: 1500 });
    await peer.wire('pusher:pong', { what: 'the answer to pusher-js’s first ping' });
    const firstPong = peer.mark();
    await peer.wire('pusher:pong', { from: firstPong, what: 'the answer to a later ping' });
    assert.deepEqual(peer.states(), ['connecting', 'connected'], 'pusher-js dropped the connection although pongs came');
  });

  test('an unknown app key: close 4001, and pusher-js stops instead of reconnecting', T, async () => {
    const app = await pusherApp(hub);
    const unknown = 'p_00000000000000ff';
    const raw = RawPeer.open(app, { key: unknown });
    const close = await raw.closed();
    assert.equal(close.code, 4001, `expected close 4001 for an unknown app key; got ${show(close)} after ${show(raw.events.map((e) => e.text ?? e.event))}`);
    assert.equal(raw.seenWire('pusher:connection_established').length, 0);

    const peer = openPusher(app, { key: unknown, label: 'pusher-js with an unknown key' });
    await peer.waitState('disconnected');
    assert.ok(
      peer.seenEntries((e) => e.kind === 'error' && errorCode(e.data) === 4001).length > 0,
      `pusher-js should have reported error code 4001: ${show(peer.events)}`,
    );
    // pusher-js treats 4000-4099 as "refused": it must not try again.
    await nothingFor(peer, 2500, (e) => e.kind === 'state', 'state change after the refusal (a reconnect)');
    assert.equal(peer.state, 'disconnected');
  });
});

describe('a short idle timeout (--ws-idle-timeout-ms 4000)', () => {
  // Assumption: the Pusher dialect's liveness follows --ws-idle-timeout-ms as the native
  // one does (PROTOCOL.md §10.3): after half of it of silence the hub sends pusher:ping,
  // and after all of it without an answer it closes 4201.
  let hub;
  before(async () => {
    hub = await startPusherHub({ args: ['--ws-idle-timeout-ms', '4000'] });
  });

  test('the hub pings a silent connection with pusher:ping; one that answers stays, one that does not is closed 4201', { timeout: 40000 }, async () => {
    const app = await pusherApp(hub);
    const answering = await RawPeer.connect(app, { label: 'raw socket that answers pings' });
    const silent = await RawPeer.connect(app, { label: 'raw socket that never answers' });
    answering.ws.addEventListener('message', (ev) => {
      if (JSON.parse(ev.data).event === 'pusher:ping') answering.send('pusher:pong', {});
    });
    // Node's WebSocket answers WebSocket-level pings by itself, so only a pusher:ping (what
    // Pusher sends, and what every Pusher client library answers) can go unanswered.
    await silent.wire('pusher:ping', { timeoutMs: 6000, what: 'the hub’s pusher:ping after 2 s of silence' });
    const close = await silent.closed({ timeoutMs: 6000 });
    assert.equal(close.code, 4201, `expected close 4201 (pong not received); got ${show(close)}`);
    assert.ok(answering.seenWire('pusher:ping').length >= 1, `the answering socket was never pinged: ${show(answering.events.map((e) => e.event))}`);
    assert.equal(answering.closedWith, null, `the socket that answered every ping was closed: ${show(answering.closedWith)}`);
  });

  test('a quiet pusher-js client stays connected past the idle timeout and still gets events', { timeout: 40000 }, async () => {
    const app = await pusherApp(hub);
    const peer = await connectPusher(app);
    await peer.join('quiet');
    // Over two idle timeouts without anything from the application.
    await nothingFor(peer, 9000, (e) => e.kind === 'state' || e.kind === 'error', 'state change or error (the hub closed a live pusher-js client)');
    await sdk('trigger', app.sdk.trigger('quiet', 'still-there', { ok: true }));
    assert.deepEqual(await peer.event('quiet', 'still-there'), { ok: true });
  });
});

describe('over capacity (--max-connections 6)', () => {
  let hub;
  before(async () => {
    hub = await startPusherHub({ args: ['--max-connections', '6'] });
  });

  /**
   * Opens raw connections until one is refused: `{ open, refused: {raw, close} }`.
   * --max-connections counts HTTP connections too (REST keep-alives may hold a slot), so
   * this fills up rather than counting.
   */
  async function fill(app) {
    const open = [];
    for (let i = 0; i < 12; i++) {
      const raw = RawPeer.open(app, { label: `raw #${i + 1}` });
      // A refused upgrade (an HTTP answer instead of 101) is an `error` event, then 1006.
      const first = await raw.waitEntry((e) => e.kind === 'close' || e.kind === 'error' || e.event === 'pusher:connection_established', {
        what: 'the handshake or a close',
      });
      if (first.kind === 'close') return { open, refused: { raw, close: first.data } };
      if (first.kind === 'error') return { open, refused: { raw, close: { code: 1006, reason: 'the upgrade was refused (WebSocket error event before open)' } } };
      open.push(raw);
    }
    assert.fail('12 connections were all accepted with --max-connections 6');
  }

  test('a Pusher connection over capacity is refused before the upgrade (503), not accepted', T, async () => {
    const app = await pusherApp(hub);
    const { open, refused } = await fill(app);
    try {
      assert.ok(open.length >= 1, 'not one connection was accepted');
      assert.equal(
        refused.close.code,
        1006,
        `after ${open.length} accepted, expected the upgrade to be refused; got ${show(refused.close)}, frames ${show(refused.raw.events.map((e) => e.text ?? e.event))}`,
      );
      assert.ok(!refused.raw.events.some((e) => e.event === 'pusher:connection_established'), 'no session was opened');
    } finally {
      for (const raw of open) raw.close();
      await until(async () => open.every((r) => r.closedWith), 5000, 'the filler connections to close');
    }
  });

  test('pusher-js started while the hub is full connects by itself once there is room', { timeout: 40000 }, async () => {
    const app = await pusherApp(hub);
    const { open } = await fill(app);
    const peer = openPusher(app, { label: 'pusher-js while full' });
    // pusher-js reports a refused attempt in its timeline only: check that it is not in.
    await nothingFor(peer, 2000, (e) => e.kind === 'state' && e.event === 'connected', '`connected` while the hub is full');
    for (const raw of open) raw.close();
    await peer.connected({ timeoutMs: 30000 });
  });
});
