// Helpers for driving the hub with the real socket.io-client (package-lock.json pins 4.8.1).
// The hub process, REST calls and the clean-up come from the JavaScript client's suite
// (../../js/test-support/helpers.js); this file adds what Socket.IO needs: connecting,
// acknowledgements with a timeout, and a buffer of every received event, so a test can
// await an event that may already have arrived (no sleeping, no race with the ack).
import { createHmac } from 'node:crypto';
import { inspect } from 'node:util';

import { io } from 'socket.io-client';

import { cleanupAll, HUB_BIN, requireWebSocket, rest, startHub, track, until } from '../../js/test-support/helpers.js';

export { cleanupAll, HUB_BIN, requireWebSocket, rest, startHub, track, until };

/**
 * Transports for connect() when a test names none: socket.io-client's default (long-polling,
 * then the upgrade to WebSocket) unless SIO_TRANSPORTS says otherwise, e.g.
 * `SIO_TRANSPORTS=websocket` or `SIO_TRANSPORTS=polling` (then without the upgrade), to tell
 * a transport problem from an event problem.
 */
const envTransports = process.env.SIO_TRANSPORTS ? process.env.SIO_TRANSPORTS.split(',').map((t) => t.trim()) : null;
const transportDefaults = envTransports ? { transports: envTransports, upgrade: envTransports.length > 1 } : {};

/** Where the socket's Engine.IO connection stands, for failure messages. */
export function engineState(socket) {
  const engine = socket.io?.engine;
  if (!engine) return 'no Engine.IO connection';
  return `Engine.IO transport ${engine.transport?.name}${engine.upgrading ? ', upgrade under way' : ''}, ${engine.readyState}`;
}

/** Default wait for any one event or acknowledgement. */
export const WAIT_MS = 5000;

/** Per-test options for node:test: room for several 5 s waits, well under the watchdog. */
export const T = { timeout: 30000 };

/**
 * Starts a hub for one test file. Every test makes its own project, so the per-address
 * project quota (20 an hour without an admin token) is raised.
 */
export function startSioHub({ args = [], ...opts } = {}) {
  return startHub({ args: ['--max-projects-per-ip-per-hour', '100000', ...args], ...opts });
}

let projects = 0;
/**
 * A new project with public rooms: `{ id, apiKey }`. Thread `456` is the room `"456"`, so
 * `rooms` are room names, created through REST as a backend would.
 */
export async function project(base, rooms = []) {
  const p = await rest(base, 'POST', '/api/v1/projects', { body: { name: `socketio-test-${++projects}` } });
  for (const name of rooms) {
    await rest(base, 'POST', '/api/v1/rooms', { apiKey: p.apiKey, body: { name: String(name), type: 'public' } });
  }
  return { id: p.id, apiKey: p.apiKey };
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
/** A signed user token (HS256 JWT signed with the project's API key, PROTOCOL.md §7.3). */
export function signToken(claims, apiKey) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${head}.${createHmac('sha256', apiKey).update(head).digest('base64url')}`;
}
export const nowS = () => Math.floor(Date.now() / 1000);

const show = (v) => inspect(v, { depth: 6, breakLength: Infinity });

/**
 * Resolves with the first value pushed to `buffer` (from index `from`) whose `{name, data}`
 * passes `pred`, or rejects after `timeoutMs` with what was received instead.
 */
function awaitIn(peer, name, pred, { timeoutMs = WAIT_MS, what, from = 0 } = {}) {
  const find = () => peer.events.slice(from).find((e) => e.name === name && pred(e.data));
  const hit = find();
  if (hit) return Promise.resolve(hit.data);
  return new Promise((resolve, reject) => {
    const waiter = () => {
      const h = find();
      if (!h) return;
      clearTimeout(timer);
      peer.waiters.delete(waiter);
      resolve(h.data);
    };
    const timer = setTimeout(() => {
      peer.waiters.delete(waiter);
      const same = peer.events.filter((e) => e.name === name).map((e) => e.data);
      const others = peer.events.filter((e) => e.name !== name).map((e) => e.name);
      reject(
        new Error(
          `${peer.label}: timed out after ${timeoutMs} ms waiting for \`${name}\`${what ? ` (${what})` : ''}; ` +
            `\`${name}\` received: ${same.length ? show(same) : 'none'}; other events: ${others.length ? others.join(', ') : 'none'}` +
            (peer.socket ? ` (${engineState(peer.socket)})` : ''),
        ),
      );
    }, timeoutMs);
    peer.waiters.add(waiter);
  });
}

/** A socket.io-client socket with every received event buffered in order. */
export class SioPeer {
  constructor(socket, label) {
    this.socket = socket;
    this.label = label;
    /** Every event the server emitted, `{name, data, args}`, in arrival order. */
    this.events = [];
    this.waiters = new Set();
    socket.onAny((name, ...args) => {
      this.events.push({ name, data: args[0], args });
      for (const w of [...this.waiters]) w();
    });
    track(this);
  }

  /** The first `name` event (already received or to come) whose payload passes `pred`. */
  wait(name, pred = () => true, opts = {}) {
    return awaitIn(this, name, pred, opts);
  }

  /** The payloads of every `name` event received so far that pass `pred`. */
  seen(name, pred = () => true) {
    return this.events.filter((e) => e.name === name && pred(e.data)).map((e) => e.data);
  }

  /** Emits with an acknowledgement callback; resolves with the ack, rejects after timeoutMs. */
  ack(name, data, timeoutMs = WAIT_MS) {
    return new Promise((resolve, reject) => {
      this.socket.timeout(timeoutMs).emit(name, data, (err, answer) => {
        if (err) reject(new Error(`${this.label}: no acknowledgement of \`${name}\` ${show(data)} within ${timeoutMs} ms (${engineState(this.socket)})`));
        else resolve(answer);
      });
    });
  }

  /** Emits without an acknowledgement. */
  emit(name, data) {
    this.socket.emit(name, data);
  }

  /** join_thread with an ack; throws unless the ack is ok. */
  async join(threadId, extra = {}) {
    const a = await this.ack('join_thread', { threadId, ...extra });
    if (!a || a.ok !== true) throw new Error(`${this.label}: join_thread ${show(threadId)} refused: ${show(a)}`);
    return a;
  }

  close() {
    this.socket.disconnect();
  }
}

/**
 * Connects with the real socket.io-client and resolves with a SioPeer once `connect` fired;
 * rejects with the server's message and `data` on `connect_error`, or after timeoutMs.
 * Reconnection is off: a test that drops a connection says so itself.
 */
export function connect(base, auth, { label, timeoutMs = WAIT_MS, ...opts } = {}) {
  const socket = io(base, { auth, reconnection: false, forceNew: true, ...(opts.transports ? {} : transportDefaults), ...opts });
  const peer = new SioPeer(socket, label ?? `socket.io user ${auth?.userId ?? '(token)'}`);
  // The transport Engine.IO opened with ('polling' by default, before any upgrade).
  socket.io.once('open', () => {
    peer.firstTransport = socket.io.engine?.transport?.name;
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off('connect', ok);
      socket.off('connect_error', bad);
      reject(new Error(`${peer.label}: no \`connect\` within ${timeoutMs} ms`));
    }, timeoutMs);
    const ok = () => {
      clearTimeout(timer);
      socket.off('connect_error', bad);
      resolve(peer);
    };
    const bad = (err) => {
      clearTimeout(timer);
      socket.off('connect', ok);
      const e = new Error(`${peer.label}: connect_error ${show(err.message)} data ${show(err.data)}`);
      e.cause = err;
      reject(e);
    };
    socket.once('connect', ok);
    socket.once('connect_error', bad);
  });
}

/**
 * Opens a socket that is expected to be refused; resolves with the `connect_error` Error
 * (`message`, `data`), rejects if it connects or nothing happens within timeoutMs.
 * Resolves with `{ err, socket }` so a test can try again on the same socket.
 */
export function refused(base, auth, { timeoutMs = WAIT_MS, ...opts } = {}) {
  const socket = io(base, { auth, reconnection: false, forceNew: true, ...(opts.transports ? {} : transportDefaults), ...opts });
  track({ close: () => socket.disconnect() });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off('connect', ok);
      socket.off('connect_error', bad);
      reject(new Error(`no connect_error within ${timeoutMs} ms for auth ${show(auth)}`));
    }, timeoutMs);
    const ok = () => {
      clearTimeout(timer);
      socket.off('connect_error', bad);
      socket.disconnect();
      reject(new Error(`connected although it should have been refused (auth ${show(auth)})`));
    };
    const bad = (err) => {
      clearTimeout(timer);
      socket.off('connect', ok);
      resolve({ err, socket });
    };
    socket.once('connect', ok);
    socket.once('connect_error', bad);
  });
}

/** Resolves on the socket's `event` (a reserved one such as `disconnect` too), or rejects. */
export function once(emitter, event, { timeoutMs = WAIT_MS, what = '' } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, fn);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for \`${event}\`${what ? ` (${what})` : ''}`));
    }, timeoutMs);
    const fn = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    emitter.once(event, fn);
  });
}

/**
 * A native RealtimeHub WebSocket client (JSON frames), with every frame buffered: for the
 * tests where a native user and a Socket.IO user share a room.
 */
export class NativePeer {
  constructor(ws, label) {
    this.ws = ws;
    this.label = label;
    this.events = [];
    this.waiters = new Set();
    ws.addEventListener('message', (ev) => {
      const frame = JSON.parse(ev.data);
      this.events.push({ name: frame.type, data: frame });
      for (const w of [...this.waiters]) w();
    });
    track(this);
  }

  static open(base, { apiKey, userId }, timeoutMs = WAIT_MS) {
    requireWebSocket();
    const url = `${base.replace(/^http/, 'ws')}/?apiKey=${encodeURIComponent(apiKey)}&userId=${encodeURIComponent(userId)}`;
    const peer = new NativePeer(new WebSocket(url), `native user ${userId}`);
    return new Promise((resolve, reject) => {
      peer.ws.addEventListener('error', () => reject(new Error(`${peer.label}: WebSocket ${url} failed`)), { once: true });
      peer.wait('connected', () => true, { timeoutMs }).then(() => resolve(peer), reject);
    });
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  wait(type, pred = () => true, opts = {}) {
    return awaitIn(this, type, pred, opts);
  }

  seen(type, pred = () => true) {
    return this.events.filter((e) => e.name === type && pred(e.data)).map((e) => e.data);
  }

  async join(room) {
    this.send({ type: 'join', room });
    return this.wait('joined', (f) => f.room === room, { what: `join ${room}` });
  }

  close() {
    try {
      this.ws.close();
    } catch {
      /* already closed */
    }
  }
}
