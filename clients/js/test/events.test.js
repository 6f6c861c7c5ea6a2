// The event emitter (on, once, off), without a hub: a scripted WebSocket delivers frames and
// the listeners are observed through the public API only.
// Run: node --test clients/js/test/events.test.js (or with the others: see README.md)
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';

import { RealtimeHub } from '../realtimehub.js';

/** A WebSocket that opens at once; the test sends frames "from the hub" with deliver(). */
class ScriptedWS {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    ScriptedWS.last = this;
    setImmediate(() => {
      this.readyState = 1;
      this.onopen?.({});
    });
  }
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
}

const clients = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

/** A connected client (heartbeat off, so no timers are left behind). */
async function connected() {
  const hub = new RealtimeHub({ url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'alice' }, { WebSocket: ScriptedWS, heartbeatIntervalMs: 0 });
  clients.push(hub);
  const opened = new Promise((resolve) => hub.once('open', resolve));
  const done = hub.connect();
  await opened;
  ScriptedWS.last.deliver({ type: 'connected', connectionId: 'c1', userId: 'alice' });
  await done;
  return { hub, ws: ScriptedWS.last };
}

const typing = (userId, isTyping = true) => ({ type: 'typing', room: 'general', userId, isTyping });

describe('events', () => {
  test('on: listeners get the frame, in the order they were added; on() chains', async () => {
    const { hub, ws } = await connected();
    const calls = [];
    const result = hub.on('typing', (t) => calls.push(['first', t])).on('typing', (t) => calls.push(['second', t]));
    assert.equal(result, hub);
    ws.deliver(typing('bob'));
    assert.deepEqual(calls, [
      ['first', typing('bob')],
      ['second', typing('bob')],
    ]);
  });

  test('open and connected are events too; connected carries the frame', async () => {
    const hub = new RealtimeHub({ url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'alice' }, { WebSocket: ScriptedWS, heartbeatIntervalMs: 0 });
    clients.push(hub);
    const seen = [];
    hub.on('open', () => seen.push('open'));
    hub.on('connected', (frame) => seen.push(frame));
    const done = hub.connect();
    await new Promise((resolve) => hub.once('open', resolve));
    ScriptedWS.last.deliver({ type: 'connected', connectionId: 'c1', userId: 'alice' });
    assert.deepEqual(await done, { type: 'connected', connectionId: 'c1', userId: 'alice' });
    assert.deepEqual(seen, ['open', { type: 'connected', connectionId: 'c1', userId: 'alice' }]);
  });

  test('once: called for the first event only', async () => {
    const { hub, ws } = await connected();
    const calls = [];
    assert.equal(
      hub.once('typing', (t) => calls.push(t.userId)),
      hub,
    );
    ws.deliver(typing('bob'));
    ws.deliver(typing('carol'));
    assert.deepEqual(calls, ['bob']);
  });

  test('off(event, fn) removes that listener only; off(event) removes them all', async () => {
    const { hub, ws } = await connected();
    const calls = [];
    const a = (t) => calls.push(`a:${t.userId}`);
    const b = (t) => calls.push(`b:${t.userId}`);
    hub.on('typing', a).on('typing', b);
    assert.equal(hub.off('typing', a), hub);
    ws.deliver(typing('bob'));
    assert.deepEqual(calls, ['b:bob']);
    hub.on('typing', a);
    hub.off('typing');
    ws.deliver(typing('carol'));
    assert.deepEqual(calls, ['b:bob']);
    // Removing what is not there is harmless.
    assert.equal(hub.off('typing', a), hub);
    assert.equal(hub.off('never-added'), hub);
  });

  test('off(event, fn) also removes a listener added with once, before it fired', async () => {
    const { hub, ws } = await connected();
    const calls = [];
    const fn = (t) => calls.push(t.userId);
    hub.once('typing', fn);
    hub.off('typing', fn);
    ws.deliver(typing('bob'));
    assert.deepEqual(calls, []);
  });

  test('a listener removing itself does not stop the others of the same event', async () => {
    const { hub, ws } = await connected();
    const calls = [];
    const self = () => {
      calls.push('self');
      hub.off('typing', self);
    };
    hub.on('typing', self).on('typing', () => calls.push('other'));
    ws.deliver(typing('bob'));
    ws.deliver(typing('bob'));
    assert.deepEqual(calls, ['self', 'other', 'other']);
  });

  test('events are separate: a listener hears only its own event', async () => {
    const { hub, ws } = await connected();
    const calls = [];
    hub.on('typing', () => calls.push('typing'));
    hub.on('presence', (p) => calls.push(`presence:${p.userId}:${p.status}`));
    ws.deliver({ type: 'presence', userId: 'bob', status: 'away' });
    assert.deepEqual(calls, ['presence:bob:away']);
  });

  test('listeners are called with the client as this', async () => {
    const { hub, ws } = await connected();
    let self = null;
    hub.on('typing', function () {
      self = this;
    });
    ws.deliver(typing('bob'));
    assert.equal(self, hub);
  });

  test('on and once refuse a listener that is not a function', () => {
    const hub = new RealtimeHub({ url: 'ws://127.0.0.1:9', apiKey: 'k', userId: 'alice' }, { WebSocket: ScriptedWS });
    assert.throws(() => hub.on('typing', 'nope'), TypeError);
    assert.throws(() => hub.once('typing', null), TypeError);
    assert.throws(() => hub.on(42, () => {}), TypeError);
  });
});
