// The example backend of README.md and docs/PROTOCOL.md §14 (examples/backend.mjs), run as
// written against the real hub: it verifies signatures, decides joins through the access
// hook, and prints the webhook events it receives.
// Run: node --experimental-websocket --test clients/js/test/*.test.js
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

import { cleanupAll, requireWebSocket, rest, startHub, track } from '../test-support/helpers.js';

requireWebSocket();
after(cleanupAll);

const example = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/backend.mjs');

/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts the example; resolves with `{ lines, waitLine }` once it listens. */
async function startExample(apiKey, port) {
  const child = spawn(process.execPath, [example, String(port)], {
    env: { ...process.env, REALTIMEHUB_API_KEY: apiKey },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  track({ close: () => child.kill() });
  const lines = [];
  const waiters = new Set();
  let buffered = '';
  child.stdout.on('data', (d) => {
    buffered += d;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      lines.push(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
      for (const w of [...waiters]) w();
    }
  });
  const waitLine = (pred, what, timeoutMs = 8000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const hit = lines.find(pred);
        if (hit === undefined) return false;
        waiters.delete(check);
        clearTimeout(timer);
        resolve(hit);
        return true;
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`the example printed no ${what}; it printed: ${lines.join(' | ')}`));
      }, timeoutMs);
      if (!check()) waiters.add(check);
    });
  await waitLine((l) => l.startsWith('backend listening'), 'ready line');
  return { lines, waitLine };
}

/** A raw native WebSocket with its frames buffered; `next(type)` resolves with the next frame of that type. */
function open(base, apiKey, userId) {
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/?apiKey=${encodeURIComponent(apiKey)}&userId=${userId}`);
  track({ close: () => ws.close() });
  const frames = [];
  ws.addEventListener('message', (ev) => frames.push(JSON.parse(ev.data)));
  const next = (pred, what) =>
    new Promise((resolve, reject) => {
      const started = Date.now();
      const poll = () => {
        const i = frames.findIndex(pred);
        if (i >= 0) return resolve(frames.splice(i, 1)[0]);
        if (Date.now() - started > 5000) return reject(new Error(`no ${what}; frames: ${JSON.stringify(frames)}`));
        setTimeout(poll, 10);
      };
      poll();
    });
  return { ws, next, send: (f) => ws.send(JSON.stringify(f)) };
}

test('the example backend decides joins and receives signed webhook events', { timeout: 30000 }, async () => {
  const hub = await startHub();
  const project = await rest(hub.base, 'POST', '/api/v1/projects', { body: { name: 'example backend' } });
  for (const name of ['general', 'staff-room']) {
    await rest(hub.base, 'POST', '/api/v1/rooms', { apiKey: project.apiKey, body: { name } });
  }
  const port = await freePort();
  const backend = await startExample(project.apiKey, port);
  await rest(hub.base, 'PATCH', '/api/v1/project', {
    apiKey: project.apiKey,
    body: { accessHookUrl: `http://127.0.0.1:${port}/access`, webhookUrl: `http://127.0.0.1:${port}/events` },
  });

  const bob = open(hub.base, project.apiKey, 'bob');
  await bob.next((f) => f.type === 'connected', 'connected');
  bob.send({ type: 'join', room: 'staff-room' });
  const refused = await bob.next((f) => f.type === 'error', 'the refusal');
  assert.deepEqual([refused.event, refused.code, refused.message], ['join', 'forbidden', 'staff only']);
  bob.send({ type: 'join', room: 'general' });
  await bob.next((f) => f.type === 'joined' && f.room === 'general', 'joined general');
  bob.send({ type: 'message', room: 'general', content: 'hello backend' });
  await bob.next((f) => f.type === 'message', 'the message');

  const line = await backend.waitLine((l) => l.includes('"message.created"'), 'message.created event');
  const event = JSON.parse(line);
  assert.equal(event.data.message.content, 'hello backend');
  assert.equal(event.data.room, 'general');
  for (const type of ['user.online', 'member.joined']) {
    await backend.waitLine((l) => l.includes(`"${type}"`), `${type} event`);
  }
  await hub.stop();
});
