// Helpers for driving the hub's Pusher dialect with the real client libraries: pusher-js
// (the browser/Node client), the `pusher` server SDK (a user's backend: HTTP API and channel
// authorization) and Laravel Echo on top of pusher-js. package-lock.json pins all three.
// The hub process, REST calls and the clean-up come from the JavaScript client's suite
// (../../js/test-support/helpers.js); this file adds: a Pusher app (a project), an auth
// endpoint (node:http + the SDK, as a backend would run it), pusher-js and raw WebSocket
// peers that buffer everything they receive, so a test awaits an event that may already
// have arrived, and every wait times out with what came instead.
import { createHash, createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import { inspect } from 'node:util';

import Echo from 'laravel-echo';
import PusherServer from 'pusher';
import PusherJs from 'pusher-js';

import { cleanupAll, HUB_BIN, requireWebSocket, rest, sleep, startHub, track, until } from '../../js/test-support/helpers.js';

export { cleanupAll, Echo, HUB_BIN, PusherJs, PusherServer, requireWebSocket, rest, sleep, startHub, track, until };

/** Default wait for any one event. */
export const WAIT_MS = 5000;

/** Per-test options for node:test: room for several 5 s waits, well under the watchdog. */
export const T = { timeout: 30000 };

export const show = (v) => inspect(v, { depth: 6, breakLength: Infinity });
export const nowS = () => Math.floor(Date.now() / 1000);

// pusher-js logs through the static `Pusher.log`: kept here (the last lines go into timeout
// messages), and printed to stderr with PUSHER_LOG=1.
const pusherLog = [];
PusherJs.log = (line) => {
  pusherLog.push(line);
  if (pusherLog.length > 200) pusherLog.shift();
  if (process.env.PUSHER_LOG) console.error(`[pusher-js] ${line}`);
};
const recentLog = (n = 6) => (pusherLog.length ? ` pusher-js log (last ${Math.min(n, pusherLog.length)}): ${pusherLog.slice(-n).join(' | ')}` : '');

/**
 * Starts a hub for one test file. Every test makes its own app (project), so the per-address
 * project quota (20 an hour without an admin token) is raised.
 */
export function startPusherHub({ args = [], ...opts } = {}) {
  return startHub({ args: ['--max-projects-per-ip-per-hour', '100000', ...args], ...opts });
}

let apps = 0;
/**
 * A new project as a Pusher app: `{ key, secret, appId, apiKey, base, port, sdk }`.
 * key = the project id (`p_…`), secret = its API key (`rh_…`), appId = `pusherAppId` from
 * `GET /api/v1/project`. `sdk` is the `pusher` server SDK pointed at the hub, with an
 * encryption master key so `private-encrypted-` channels work end to end. `rooms` are
 * created as public rooms through REST first.
 */
export async function pusherApp(hub, { rooms = [], name } = {}) {
  const p = await rest(hub.base, 'POST', '/api/v1/projects', { body: { name: name ?? `pusher-test-${++apps}` } });
  for (const room of rooms) {
    await rest(hub.base, 'POST', '/api/v1/rooms', { apiKey: p.apiKey, body: { name: room, type: 'public' } });
  }
  const settings = await rest(hub.base, 'GET', '/api/v1/project', { apiKey: p.apiKey });
  const appId = settings.pusherAppId;
  if (typeof appId !== 'string' || !/^[0-9]+$/.test(appId)) {
    throw new Error(`GET /api/v1/project has no decimal-string pusherAppId: ${show(settings)}`);
  }
  const masterKey = randomBytes(32).toString('base64');
  const app = {
    key: p.id,
    secret: p.apiKey,
    apiKey: p.apiKey,
    appId,
    base: hub.base,
    port: hub.port,
    masterKey,
    sdk: sdkFor({ appId, key: p.id, secret: p.apiKey, port: hub.port, masterKey }),
  };
  return app;
}

/** The `pusher` server SDK against the hub on 127.0.0.1:port. */
export function sdkFor({ appId, key, secret, port, masterKey }) {
  return new PusherServer({
    appId,
    key,
    secret,
    host: '127.0.0.1',
    port: String(port),
    useTLS: false,
    timeout: WAIT_MS,
    ...(masterKey ? { encryptionMasterKeyBase64: masterKey } : {}),
  });
}

/**
 * Awaits a call of the server SDK (`trigger`, `get`, …) and resolves with `{ status, body }`
 * (body parsed as JSON when it is JSON). A refusal throws an Error saying what was called,
 * with the hub's status and body (`err.status`, `err.body`).
 */
export async function sdk(what, call) {
  let res;
  try {
    res = await call;
  } catch (err) {
    const e = new Error(`pusher SDK ${what}: ${err.status ? `HTTP ${err.status} ${show(err.body)}` : err.message}${err.error ? ` (${err.error.message})` : ''}`);
    e.status = err.status;
    e.body = err.body;
    e.cause = err;
    throw e;
  }
  const text = await res.text();
  let body = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: keep the text */
  }
  return { status: res.status, body };
}

/** Awaits an SDK call that should be refused; resolves with `{ status, body }` of the refusal. */
export async function sdkRefused(what, call) {
  try {
    const res = await call;
    throw new Error(`pusher SDK ${what}: expected a refusal, got HTTP ${res.status} ${await res.text()}`);
  } catch (err) {
    if (err.status === undefined) throw err;
    return { status: err.status, body: err.body };
  }
}

/**
 * A request to Pusher's HTTP API signed by hand (as the SDKs sign: HMAC-SHA256 of
 * "METHOD\nPATH\nSORTED_QUERY" with the secret), for what the SDK cannot be made to send: a
 * stale timestamp, a wrong secret. Resolves with `{ status, text }`.
 */
export async function signedRequest(app, method, subPath, { body, params = {}, timestamp = nowS(), secret = app.secret, key = app.key } = {}) {
  const path = `/apps/${app.appId}${subPath}`;
  const json = body === undefined ? undefined : JSON.stringify(body);
  const query = { ...params, auth_key: key, auth_timestamp: String(timestamp), auth_version: '1.0' };
  if (json !== undefined) query.body_md5 = createHash('md5').update(json, 'utf8').digest('hex');
  const qs = Object.keys(query)
    .sort()
    .map((k) => `${k}=${query[k]}`)
    .join('&');
  const signature = createHmac('sha256', secret).update(`${method}\n${path}\n${qs}`).digest('hex');
  const res = await fetch(`${app.base}${path}?${qs}&auth_signature=${signature}`, {
    method,
    headers: json === undefined ? {} : { 'Content-Type': 'application/json' },
    body: json,
    signal: AbortSignal.timeout(WAIT_MS),
  });
  return { status: res.status, text: await res.text() };
}

/**
 * The auth endpoint a user's backend runs: `POST /pusher/auth` (also `/broadcasting/auth`,
 * Laravel's path) with `socket_id` and `channel_name`, form-encoded (pusher-js, Echo) or JSON.
 * The user is the bearer token (`Authorization: Bearer alice`, Echo's `bearerToken`) or a
 * `user_id` body field; presence channels get `{user_id, user_info: userInfo(user)}`.
 * Refuses (403) a channel whose name contains "forbidden", and presence without a user.
 * Signs with `app.sdk.authorizeChannel` (so with the app's encryption master key too).
 * `requests` logs every request: `{ path, contentType, body, user, status, answer }`.
 */
export async function startAuthServer(app, { userInfo = (user) => ({ name: `User ${user}` }) } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (raw += d));
    req.on('end', () => {
      const entry = { path: req.url, method: req.method, contentType: req.headers['content-type'] ?? '', raw, body: null, user: null, status: 0, answer: null };
      requests.push(entry);
      const answer = (status, value) => {
        entry.status = status;
        entry.answer = value;
        res.writeHead(status, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' });
        res.end(JSON.stringify(value));
      };
      if (req.method !== 'POST' || !['/pusher/auth', '/broadcasting/auth'].includes(req.url.split('?')[0])) return answer(404, { error: 'not found' });
      let body;
      try {
        body = entry.contentType.includes('application/json') ? JSON.parse(raw) : Object.fromEntries(new URLSearchParams(raw));
      } catch (err) {
        return answer(400, { error: `bad body: ${err.message}` });
      }
      entry.body = body;
      const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      const user = bearer ? bearer[1] : (body.user_id ?? null);
      entry.user = user;
      const socketId = body.socket_id;
      const channel = body.channel_name;
      if (typeof socketId !== 'string' || typeof channel !== 'string') return answer(400, { error: 'socket_id and channel_name are required' });
      if (channel.includes('forbidden')) return answer(403, { error: `${user ?? 'anonymous'} may not subscribe to ${channel}` });
      let presence;
      if (channel.startsWith('presence-')) {
        if (!user) return answer(403, { error: 'presence channels need a signed-in user' });
        presence = { user_id: user, user_info: userInfo(user) };
      }
      try {
        return answer(200, app.sdk.authorizeChannel(socketId, channel, presence));
      } catch (err) {
        // The SDK validates socket_id (/^\d+\.\d+$/) and channel names: say so.
        return answer(400, { error: `pusher SDK authorizeChannel(${show(socketId)}, ${show(channel)}) threw: ${err.message}` });
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  const auth = {
    url: `http://127.0.0.1:${port}/pusher/auth`,
    port,
    requests,
    /** Requests for one channel. */
    for: (channel) => requests.filter((r) => r.body?.channel_name === channel),
    close() {
      server.closeAllConnections?.();
      server.close();
    },
  };
  track(auth);
  return auth;
}

/** One buffered event, for failure messages. */
function summary(e) {
  switch (e.kind) {
    case 'state':
      return `state ${e.data.previous}->${e.data.current}`;
    case 'error':
      return `error ${show(e.data)}`;
    case 'close':
      return `close ${e.data.code} ${show(e.data.reason)}`;
    default:
      return `${e.kind} ${e.channel ? `${e.channel} ` : ''}${e.event} ${show(e.data)}${e.user_id ? ` user_id=${e.user_id}` : ''}`;
  }
}

/**
 * Everything a peer received, in order, and waits on it. Entries are
 * `{ kind, event, channel, data, user_id }`; kinds are peer-specific (see subclasses).
 */
export class Recorder {
  constructor(label) {
    this.label = label;
    this.events = [];
    this.waiters = new Set();
  }

  push(entry) {
    this.events.push(entry);
    for (const w of [...this.waiters]) w();
  }

  /** The index of the next entry: pass it as `from` to wait only for what comes later. */
  mark() {
    return this.events.length;
  }

  /** What the peer looks like right now, for failure messages. */
  status() {
    return '';
  }

  /**
   * Resolves with the first entry (from index `from`) passing `match`, or rejects after
   * timeoutMs (or at once when an entry passes `failOn`) with what was received.
   */
  waitEntry(match, { what = 'an event', timeoutMs = WAIT_MS, from = 0, failOn } = {}) {
    const scan = () => {
      for (const e of this.events.slice(from)) {
        if (failOn && failOn(e)) return { fail: e };
        if (match(e)) return { hit: e };
      }
      return null;
    };
    const describe = (why) => {
      const got = this.events.slice(from);
      const shown = got.slice(-20).map(summary);
      return (
        `${this.label}: ${why} waiting for ${what}; received${got.length > 20 ? ` (last 20 of ${got.length})` : ''}: ` +
        `${shown.length ? shown.join('; ') : 'nothing'}${this.status()}`
      );
    };
    const first = scan();
    if (first?.hit) return Promise.resolve(first.hit);
    if (first?.fail) return Promise.reject(new Error(describe(`got ${summary(first.fail)}`)));
    return new Promise((resolve, reject) => {
      const waiter = () => {
        const r = scan();
        if (!r) return;
        clearTimeout(timer);
        this.waiters.delete(waiter);
        if (r.hit) resolve(r.hit);
        else reject(new Error(describe(`got ${summary(r.fail)}`)));
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(describe(`timed out after ${timeoutMs} ms`)));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  /** Entries (from index `from`) passing `match`. */
  seenEntries(match, from = 0) {
    return this.events.slice(from).filter(match);
  }
}

/** The Pusher error code in a pusher-js `error` event, however it is wrapped. */
export function errorCode(e) {
  return e?.data?.code ?? e?.error?.data?.code ?? e?.error?.code ?? null;
}

/**
 * pusher-js options for the hub, as a user would write them (cluster is required by
 * pusher-js and ignored here). With `auth`, channel authorization goes to that auth server
 * over pusher-js's own ajax transport (in Node pusher-js bundles an XMLHttpRequest), as
 * `user` (a bearer token the auth server reads as the user id).
 */
export function pusherOptions(app, { auth, user, ...extra } = {}) {
  return {
    wsHost: '127.0.0.1',
    wsPort: app.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    // pusher-js 8 sends no stats unless enableStats (disableStats is deprecated): said anyway,
    // as nothing may leave 127.0.0.1.
    enableStats: false,
    ...(auth
      ? { channelAuthorization: { endpoint: auth.url, transport: 'ajax', headers: user ? { Authorization: `Bearer ${user}` } : {} } }
      : {}),
    ...extra,
  };
}

/**
 * A pusher-js client with everything buffered: `wire` entries (every message from the hub
 * as pusher-js decoded it, with `channel` and `user_id`, including pusher_internal:* and
 * pusher:error/ping/pong; not the handshake), `channel` entries (what pusher-js emitted on a
 * subscribed channel: pusher:subscription_succeeded with its members, pusher:member_added,
 * decrypted events, …), `state` entries (state_change) and `error` entries.
 */
export class PusherPeer extends Recorder {
  constructor(pusher, label) {
    super(label);
    this.pusher = pusher;
    this.boundChannels = new Map();
    // pusher-js starts connecting in its constructor, before anyone can bind: record where
    // it already is.
    if (pusher.connection.state !== 'initialized') {
      this.events.push({ kind: 'state', event: pusher.connection.state, data: { previous: 'initialized', current: pusher.connection.state } });
    }
    pusher.connection.bind('message', (m) => this.push({ kind: 'wire', event: m.event, channel: m.channel, data: m.data, user_id: m.user_id }));
    pusher.connection.bind('state_change', (s) => this.push({ kind: 'state', event: s.current, data: s }));
    pusher.connection.bind('error', (e) => this.push({ kind: 'error', event: 'error', data: e }));
    track(this);
  }

  status() {
    return ` (pusher-js state ${this.pusher.connection.state}, socket_id ${this.pusher.connection.socket_id ?? 'none'})${recentLog()}`;
  }

  get socketId() {
    return this.pusher.connection.socket_id;
  }

  get state() {
    return this.pusher.connection.state;
  }

  /** Resolves once pusher-js is `connected` (from index `from`); fails early on failed/disconnected. */
  connected({ from = 0, timeoutMs = WAIT_MS } = {}) {
    if (from === 0 && this.state === 'connected') return Promise.resolve();
    return this.waitEntry((e) => e.kind === 'state' && e.event === 'connected', {
      what: 'state `connected`',
      from,
      timeoutMs,
      failOn: (e) => e.kind === 'state' && ['failed', 'disconnected'].includes(e.event),
    });
  }

  /** Resolves with the first state_change to `state` from index `from`. */
  waitState(state, { from = 0, timeoutMs = WAIT_MS } = {}) {
    return this.waitEntry((e) => e.kind === 'state' && e.event === state, { what: `state \`${state}\``, from, timeoutMs });
  }

  /** Subscribes (pusher-js authorizes private/presence channels itself) and records the channel's events. */
  subscribe(name) {
    this.pusher.subscribe(name);
    return this.watch(name);
  }

  /**
   * Records the events of a channel something else subscribed (Laravel Echo): call it in the
   * same tick as the subscribe, before any answer can arrive.
   */
  watch(name) {
    const channel = this.pusher.channel(name);
    if (!channel) throw new Error(`${this.label}: no channel ${name} to watch (not subscribed)`);
    if (this.boundChannels.get(name) !== channel) {
      this.boundChannels.set(name, channel);
      channel.bind_global((event, data) => this.push({ kind: 'channel', channel: name, event, data }));
    }
    return channel;
  }

  /**
   * Subscribes and resolves with the data of `pusher:subscription_succeeded` (for presence,
   * pusher-js's Members object); rejects on `pusher:subscription_error` with its data.
   */
  async join(name, { from = this.mark(), timeoutMs = WAIT_MS } = {}) {
    this.subscribe(name);
    return this.subscribed(name, { from, timeoutMs });
  }

  /** Waits for the channel's (next, from `from`) `pusher:subscription_succeeded`. */
  async subscribed(name, { from = 0, timeoutMs = WAIT_MS } = {}) {
    const e = await this.waitEntry((x) => x.kind === 'channel' && x.channel === name && x.event === 'pusher:subscription_succeeded', {
      what: `pusher:subscription_succeeded on ${name}`,
      from,
      timeoutMs,
      failOn: (x) =>
        (x.kind === 'channel' && x.channel === name && x.event === 'pusher:subscription_error') ||
        (x.kind === 'wire' && x.event === 'pusher:error'),
    });
    return e.data;
  }

  /** The data of the first `event` pusher-js emitted on `channel` passing `pred`. */
  async event(channel, event, pred = () => true, opts = {}) {
    const e = await this.waitEntry((x) => x.kind === 'channel' && x.channel === channel && x.event === event && pred(x.data), {
      what: `\`${event}\` on ${channel}${opts.what ? ` (${opts.what})` : ''}`,
      ...opts,
    });
    return e.data;
  }

  /** The first wire message `event` (optionally on `channel`) passing `pred`: `{event, channel, data, user_id}`. */
  wire(event, { channel, pred = () => true, ...opts } = {}) {
    return this.waitEntry((x) => x.kind === 'wire' && x.event === event && (channel === undefined || x.channel === channel) && pred(x), {
      what: `wire \`${event}\`${channel ? ` on ${channel}` : ''}${opts.what ? ` (${opts.what})` : ''}`,
      ...opts,
    });
  }

  /** The first `error` event whose Pusher code is `code`. */
  error(code, opts = {}) {
    return this.waitEntry((x) => x.kind === 'error' && errorCode(x.data) === code, { what: `a pusher-js error with code ${code}`, ...opts });
  }

  /** Data of channel events seen so far. */
  seen(channel, event, pred = () => true, from = 0) {
    return this.seenEntries((x) => x.kind === 'channel' && x.channel === channel && x.event === event && pred(x.data), from).map((x) => x.data);
  }

  /** Wire messages seen so far. */
  seenWire(event, { channel, pred = () => true, from = 0 } = {}) {
    return this.seenEntries((x) => x.kind === 'wire' && x.event === event && (channel === undefined || x.channel === channel) && pred(x), from);
  }

  /** States seen so far, in order. */
  states(from = 0) {
    return this.seenEntries((x) => x.kind === 'state', from).map((x) => x.event);
  }

  /** A client event through pusher-js; throws when pusher-js refuses to send it. */
  trigger(channel, event, data) {
    const ch = this.pusher.channel(channel);
    if (!ch) throw new Error(`${this.label}: not subscribed to ${channel}`);
    if (!ch.trigger(event, data)) throw new Error(`${this.label}: pusher-js did not send ${event} on ${channel} (state ${this.state})`);
  }

  close() {
    this.pusher.disconnect();
  }
}

let peers = 0;
/** A pusher-js client (not yet awaited). `key` defaults to the app's; other options go to pusher-js. */
export function openPusher(app, { label, key = app.key, auth, user, ...options } = {}) {
  const pusher = new PusherJs(key, pusherOptions(app, { auth, user, ...options }));
  return new PusherPeer(pusher, label ?? `pusher-js ${user ? `user ${user}` : `#${++peers}`}`);
}

/** A pusher-js client, resolved once it is connected. */
export async function connectPusher(app, opts = {}) {
  const peer = openPusher(app, opts);
  await peer.connected({ timeoutMs: opts.timeoutMs ?? WAIT_MS });
  return peer;
}

/**
 * Laravel Echo on top of pusher-js, configured as a Laravel app's bootstrap.js would be
 * (`broadcaster: 'pusher'`, the pusher-js constructor passed as `Pusher` since Node has no
 * `window.Pusher`), with everything pusher-js receives buffered as in PusherPeer. With
 * `auth`, Echo authorizes at `authEndpoint` (pusher-js's form POST) with `bearerToken: user`.
 * `on(name)` makes an Echo callback that records its arguments; `got(name)` awaits one.
 */
export class EchoPeer extends PusherPeer {
  constructor(echo, label) {
    super(echo.connector.pusher, label);
    this.echo = echo;
  }

  /**
   * A callback for Echo (listen, here, joining, …) recording its argument as an `echo` entry
   * `name` (pusher-js passes event callbacks a second argument, the metadata with
   * `user_id`: kept as `meta`).
   */
  on(name) {
    return (data, meta) => this.push({ kind: 'echo', event: name, data, meta });
  }

  /** The argument of the first call (from index `from`) of the callback `name` passing `pred`. */
  async got(name, pred = () => true, opts = {}) {
    const e = await this.waitEntry((x) => x.kind === 'echo' && x.event === name && pred(x.data), { what: `Echo callback \`${name}\``, ...opts });
    return e.data;
  }

  /** The entries (`{data, meta}`) of every call of the callback `name` so far. */
  callEntries(name, from = 0) {
    return this.seenEntries((x) => x.kind === 'echo' && x.event === name, from);
  }

  /** Arguments of every call of the callback `name` so far. */
  calls(name, from = 0) {
    return this.seenEntries((x) => x.kind === 'echo' && x.event === name, from).map((x) => x.data);
  }

  close() {
    this.echo.disconnect();
  }
}

/** A Laravel Echo client (not yet awaited: `await peer.connected()`). */
export function openEcho(app, { auth, user, label, ...options } = {}) {
  const echo = new Echo({
    broadcaster: 'pusher',
    Pusher: PusherJs,
    key: app.key,
    wsHost: '127.0.0.1',
    wsPort: app.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    enableStats: false,
    // Echo's default `auth` object is shared by every Echo instance (a static default that
    // bearerToken writes into): each instance gets its own.
    auth: { headers: {} },
    ...(auth ? { authEndpoint: auth.url } : {}),
    ...(user ? { bearerToken: user } : {}),
    ...options,
  });
  return new EchoPeer(echo, label ?? `Echo ${user ?? 'guest'}`);
}

/**
 * A raw WebSocket on `/app/{key}?protocol=7…` (Node's global WebSocket), for what pusher-js
 * hides: the wire form of frames, close codes, the handshake, not answering pings. Entries:
 * `wire` `{event, channel, data (parsed when it is a JSON string), rawData, user_id, text}`,
 * and one `close` `{code, reason}`.
 */
export class RawPeer extends Recorder {
  constructor(ws, label, url) {
    super(label);
    this.ws = ws;
    this.url = url;
    this.closedWith = null;
    ws.addEventListener('message', (ev) => {
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        this.push({ kind: 'wire', event: '(not JSON)', data: ev.data, text: ev.data });
        return;
      }
      let data = frame.data;
      if (typeof data === 'string') {
        try {
          data = JSON.parse(data);
        } catch {
          /* a plain string */
        }
      }
      this.push({ kind: 'wire', event: frame.event, channel: frame.channel, data, rawData: frame.data, user_id: frame.user_id, text: ev.data });
    });
    ws.addEventListener('close', (ev) => {
      this.closedWith = { code: ev.code, reason: ev.reason };
      this.push({ kind: 'close', event: 'close', data: this.closedWith });
    });
    ws.addEventListener('error', () => this.push({ kind: 'error', event: 'error', data: 'WebSocket error event' }));
    track(this);
  }

  status() {
    return ` (WebSocket readyState ${this.ws.readyState}, ${this.url})`;
  }

  static open(app, { key = app.key, query = 'protocol=7&client=js&version=8.6.0&flash=false', label } = {}) {
    requireWebSocket();
    const url = `ws://127.0.0.1:${app.port}/app/${encodeURIComponent(key)}?${query}`;
    return new RawPeer(new WebSocket(url), label ?? `raw WebSocket #${++peers}`, url);
  }

  /** Opens and resolves with the peer once `pusher:connection_established` arrived. */
  static async connect(app, opts = {}) {
    const peer = RawPeer.open(app, opts);
    await peer.established();
    return peer;
  }

  /** The `pusher:connection_established` entry (data parsed: `{socket_id, activity_timeout}`). */
  established(opts = {}) {
    return this.wire('pusher:connection_established', { failOn: (e) => e.kind === 'close', ...opts });
  }

  get socketId() {
    const e = this.events.find((x) => x.event === 'pusher:connection_established');
    return e?.data?.socket_id;
  }

  send(event, data, channel) {
    this.ws.send(JSON.stringify(channel === undefined ? { event, data } : { event, data, channel }));
  }

  wire(event, { channel, pred = () => true, ...opts } = {}) {
    return this.waitEntry((x) => x.kind === 'wire' && x.event === event && (channel === undefined || x.channel === channel) && pred(x), {
      what: `\`${event}\`${channel ? ` on ${channel}` : ''}${opts.what ? ` (${opts.what})` : ''}`,
      ...opts,
    });
  }

  seenWire(event, { channel, pred = () => true, from = 0 } = {}) {
    return this.seenEntries((x) => x.kind === 'wire' && x.event === event && (channel === undefined || x.channel === channel) && pred(x), from);
  }

  /** Resolves with `{code, reason}` once the WebSocket closed. */
  async closed(opts = {}) {
    const e = await this.waitEntry((x) => x.kind === 'close', { what: 'the WebSocket to close', ...opts });
    return e.data;
  }

  /**
   * Subscribes; private and presence channels are signed with the app's SDK (as the auth
   * endpoint would), presence as `user`. Resolves with the subscription_succeeded entry.
   */
  async join(app, channel, { user, userInfo, timeoutMs = WAIT_MS } = {}) {
    const from = this.mark();
    let extra = {};
    if (channel.startsWith('private-') || channel.startsWith('presence-')) {
      const presence = channel.startsWith('presence-') ? { user_id: user, ...(userInfo ? { user_info: userInfo } : {}) } : undefined;
      extra = app.sdk.authorizeChannel(this.socketId, channel, presence);
    }
    this.send('pusher:subscribe', { channel, ...extra });
    return this.wire('pusher_internal:subscription_succeeded', {
      channel,
      from,
      timeoutMs,
      failOn: (e) => e.kind === 'close' || (e.kind === 'wire' && ['pusher:error', 'pusher:subscription_error'].includes(e.event)),
    });
  }

  close() {
    try {
      this.ws.close();
    } catch {
      /* already closed */
    }
  }
}

/**
 * Asserts that nothing matching `match` arrives at `peer` for `ms` (a bounded negative check:
 * the only kind of wait here that is not for an event). Throws naming what arrived.
 */
export async function nothingFor(peer, ms, match, what) {
  const from = peer.mark();
  await sleep(ms);
  const got = peer.seenEntries(match, from);
  if (got.length) throw new Error(`${peer.label}: expected no ${what} within ${ms} ms, got: ${got.map(summary).join('; ')}`);
}

/**
 * A barrier: triggers `rh-barrier` through the HTTP API on `channel` and waits until every
 * peer got it. What the hub sent those peers before the barrier has arrived by then (one
 * connection's frames are in order), so a test can then assert that something did NOT come.
 */
let barriers = 0;
export async function barrier(app, channel, ...peerList) {
  const id = ++barriers;
  const marks = peerList.map((p) => p.mark());
  await sdk(`trigger barrier on ${channel}`, app.sdk.trigger(channel, 'rh-barrier', { id }));
  await Promise.all(peerList.map((p, i) => p.wire('rh-barrier', { channel, pred: (e) => e.data?.id === id, from: marks[i], what: `barrier ${id}` })));
}
