// Test helpers: the real hub as a child process, REST calls, a cuttable TCP proxy, waiting.
// Used by clients/js/test/, clients/socketio-test/ and clients/e2e/.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const HUB_BIN = process.env.REALTIMEHUB_BIN
  ? path.resolve(process.env.REALTIMEHUB_BIN)
  : path.resolve(here, '../../../target/release/realtimehub');

/** Throws unless this Node has a global WebSocket (Node 20/21 need --experimental-websocket). */
export function requireWebSocket() {
  if (typeof globalThis.WebSocket !== 'function') {
    throw new Error('These tests need a global WebSocket: run them with `node --experimental-websocket --test clients/js/test/*.test.js`');
  }
}

/** Everything started by a test file, so cleanupAll() can stop it even after a timed-out test. */
const live = { hubs: new Set(), proxies: new Set(), clients: new Set() };

/** Registers a client (anything with close()) for cleanupAll(). Returns it. */
export function track(client) {
  live.clients.add(client);
  return client;
}

/** Closes every tracked client and proxy and stops every hub still running. */
export async function cleanupAll() {
  for (const c of live.clients) {
    try {
      c.close();
    } catch {
      /* already closed */
    }
  }
  live.clients.clear();
  await Promise.all([...live.proxies].map((p) => p.close()));
  await Promise.all([...live.hubs].map((h) => h.stop()));
}

/**
 * Starts the hub on 127.0.0.1 and resolves once it printed its ready line.
 * `opts.port` (default 0: any free port), `opts.db` (default a fresh temp dir), `opts.args`.
 */
export async function startHub({ port = 0, db, args = [], timeoutMs = 10000 } = {}) {
  let dir = null;
  if (!db) {
    dir = mkdtempSync(path.join(tmpdir(), 'realtimehub-js-'));
    db = path.join(dir, 'hub.db');
  }
  const child = spawn(HUB_BIN, ['--host', '127.0.0.1', '--port', String(port), '--db', db, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 20000) stderr = stderr.slice(-20000);
  });
  const base = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the hub did not print its ready line within ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/[^\s]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${HUB_BIN}: ${err.message} (build it with cargo build --release, or set REALTIMEHUB_BIN)`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the hub exited early (code ${code}, signal ${signal}); stderr:\n${stderr}`));
    });
  });
  child.stdout.resume();
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const handle = {
    base,
    port: Number(new URL(base).port),
    db,
    child,
    exited,
    stderr: () => stderr,
    /** Stops the hub (SIGTERM, then SIGKILL after 3 s); removes the temp dir unless keepDb. */
    async stop({ signal = 'SIGTERM', keepDb = false } = {}) {
      live.hubs.delete(handle);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      if (dir && !keepDb) rmSync(dir, { recursive: true, force: true });
    },
    cleanup() {
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
  live.hubs.add(handle);
  return handle;
}

/** JSON over fetch; throws on a non-2xx answer with the hub's error code. */
export async function rest(base, method, urlPath, { apiKey, body } = {}) {
  const headers = {};
  if (apiKey) headers['X-API-Key'] = apiKey;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(base + urlPath, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const err = new Error(`${method} ${urlPath} -> ${res.status} ${text}`);
    err.status = res.status;
    err.body = json;
    throw err;
  }
  return json;
}

let counter = 0;
/** A new project and a public room in it: {apiKey, room}. */
export async function projectWithRoom(base, room = 'general') {
  const project = await rest(base, 'POST', '/api/v1/projects', { body: { name: `js-test-${++counter}` } });
  await rest(base, 'POST', '/api/v1/rooms', { apiKey: project.apiKey, body: { name: room, type: 'public' } });
  return { apiKey: project.apiKey, room };
}

/** Resolves with the first emitted value of `event` that passes `pred`, or rejects after timeoutMs. */
export function waitFor(hub, event, pred = () => true, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      hub.off(event, fn);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${event}`));
    }, timeoutMs);
    const fn = (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      hub.off(event, fn);
      resolve(v);
    };
    hub.on(event, fn);
  });
}

/** Polls `check` until it returns truthy, or throws after timeoutMs. */
export async function until(check, timeoutMs = 5000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Collects every emitted value of the given events into arrays. */
export function record(hub, ...events) {
  const log = Object.fromEntries(events.map((e) => [e, []]));
  for (const e of events) hub.on(e, (v) => log[e].push(v));
  return log;
}

/**
 * A TCP proxy on 127.0.0.1 to `targetPort` that can cut every connection (`cut()`), refuse
 * new ones while `blocked`, and stop forwarding the hub's bytes to the client (`mute`).
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  const state = { blocked: false, mute: false };
  const server = net.createServer((client) => {
    if (state.blocked) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      if (!state.mute) client.write(d);
    });
    client.on('close', drop);
    upstream.on('close', drop);
    client.on('error', drop);
    upstream.on('error', drop);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  const proxy = {
    port,
    url: `ws://127.0.0.1:${port}/`,
    state,
    get connections() {
      return pairs.size;
    },
    /** Drops every connection at once (the client sees its socket close). */
    cut() {
      for (const p of [...pairs]) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
    },
    close() {
      live.proxies.delete(proxy);
      proxy.cut();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  live.proxies.add(proxy);
  return proxy;
}

// Last resort: a test file still running after this long (something left a handle open) stops
// everything it started and exits non-zero instead of hanging CI. Unref'd: it never keeps a
// finished run alive.
const watchdogMs = Number(process.env.REALTIMEHUB_TEST_WATCHDOG_MS ?? 180000);
setTimeout(() => {
  console.error(`test watchdog: still running after ${watchdogMs} ms; stopping what was started`);
  cleanupAll().finally(() => process.exit(1));
}, watchdogMs).unref();
