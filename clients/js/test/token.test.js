// Signed user tokens (HS256 JWT signed with the project's API key) against the real hub.
// Run: node --experimental-websocket --test clients/js/test/*.test.js
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';

import { RealtimeHub } from '../realtimehub.js';
import { cleanupAll, track, record, requireWebSocket, rest, startHub, until, waitFor } from '../test-support/helpers.js';

requireWebSocket();
// Stops every hub, proxy and client left behind, also after a timed-out test.
after(cleanupAll);

const T = { timeout: 20000 };
let hub;
let project;
const clients = [];

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function sign(claims, secret) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}
const nowS = () => Math.floor(Date.now() / 1000);

before(async () => {
  hub = await startHub();
  project = await rest(hub.base, 'POST', '/api/v1/projects', { body: { name: 'tokens' } });
  for (const name of ['general', 'secret']) {
    await rest(hub.base, 'POST', '/api/v1/rooms', { apiKey: project.apiKey, body: { name, type: 'public' } });
  }
});

after(async () => {
  for (const c of clients) c.close();
  await hub.stop();
});

test('connects with a token; the user comes from its sub; its rooms claim is enforced', T, async () => {
  const token = sign({ iss: project.id, sub: 'tina', exp: nowS() + 600, rooms: ['general'] }, project.apiKey);
  const c = track(new RealtimeHub({ url: hub.base, token }));
  clients.push(c);
  const connected = await c.connect();
  assert.equal(connected.userId, 'tina');
  assert.equal(c.userId, 'tina');
  await c.join('general');
  const { seq } = await c.send('general', 'hi with a token');
  assert.equal(seq, 1);
  await assert.rejects(c.join('secret'), { code: 'forbidden', event: 'join' });
});

test('an expired token is final without getToken: token_expired', T, async () => {
  const token = sign({ iss: project.id, sub: 'tom', exp: nowS() + 2 }, project.apiKey);
  const c = track(new RealtimeHub({ url: hub.base, token }, { reconnectBaseMs: 50 }));
  clients.push(c);
  const log = record(c, 'error', 'reconnecting', 'close');
  await c.connect();
  await c.join('general');
  // The hub closes the connection 1008 "token expired" when exp passes.
  const err = await waitFor(c, 'error', (e) => e.code === 'token_expired', 5000);
  assert.match(err.message, /getToken/);
  assert.equal(c.state, 'closed');
  assert.equal(log.reconnecting.length, 0);
  assert.equal(log.close.at(-1).willReconnect, false);
});

test('getToken refreshes the token on every (re)connect', T, async () => {
  let calls = 0;
  const getToken = async () => {
    calls++;
    // The first token lives 1-2 s; the next ones 10 minutes.
    return sign({ iss: project.id, sub: 'gina', exp: nowS() + (calls === 1 ? 2 : 600) }, project.apiKey);
  };
  const c = track(new RealtimeHub({ url: hub.base }, { getToken, reconnectBaseMs: 50, reconnectMaxMs: 100 }));
  clients.push(c);
  const log = record(c, 'close', 'connected', 'message');
  await c.connect();
  await c.join('general');
  const closed = await waitFor(c, 'close', () => true, 5000);
  assert.equal(closed.code, 1008);
  assert.equal(closed.willReconnect, true);
  await until(() => log.connected.length === 2, 5000, 'the reconnect');
  assert.equal(calls, 2);
  const { seq } = await c.send('general', 'after refresh');
  await until(() => log.message.some((m) => m.seq === seq), 3000, 'the message');
});

test('a token and an apiKey together are refused', () => {
  assert.throws(() => new RealtimeHub({ url: hub.base, apiKey: 'k', token: 't', userId: 'a' }), TypeError);
  assert.throws(() => new RealtimeHub({ url: hub.base, apiKey: 'k', userId: 'a' }, { getToken: () => 't' }), TypeError);
  assert.throws(() => new RealtimeHub({ url: hub.base }, { getToken: 'nope' }), TypeError);
});

test('an apiKey on a project that requires tokens is refused for good: unauthorized', T, async () => {
  const p = await rest(hub.base, 'POST', '/api/v1/projects', { body: { name: 'strict' } });
  await rest(hub.base, 'PATCH', '/api/v1/project', { apiKey: p.apiKey, body: { requireTokens: true } });
  const c = track(new RealtimeHub({ url: hub.base, apiKey: p.apiKey, userId: 'al' }, { reconnectBaseMs: 50 }));
  await assert.rejects(c.connect(), (e) => e.code === 'unauthorized' && /requires signed tokens/.test(e.message));
  assert.equal(c.state, 'closed');
});
