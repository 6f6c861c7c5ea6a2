// RealtimeHub JavaScript client: one dependency-free ES module for browsers and Node.
//
//   import { RealtimeHub } from './realtimehub.js';   // or from 'http://HUB/client.js'
//   const hub = new RealtimeHub({ url: 'ws://127.0.0.1:3009', apiKey, userId: 'alice' });
//   hub.on('message', (m) => console.log(m.userId, m.content));
//   await hub.connect();
//   await hub.join('general');
//   const { id, seq } = await hub.send('general', 'hello');
//
// The wire contract is docs/PROTOCOL.md in the hub's repository; README.md beside this file
// describes the client. Types are in realtimehub.d.ts.

/** Room names the hub accepts. */
const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
/** Statuses a client may set (`offline` is the hub's alone). */
const STATUSES = ['online', 'away', 'busy'];

const DEFAULT_OPTIONS = {
  reconnect: true,
  reconnectBaseMs: 500,
  reconnectMaxMs: 30000,
  maxReconnectAttempts: Infinity,
  typingThrottleMs: 3000,
  typingIdleMs: 5000,
  heartbeatIntervalMs: 25000,
  heartbeatTimeoutMs: 10000,
  historyPageLimit: 1000,
  maxFrameBytes: 65536,
  rateLimitRetryMs: 1000,
  random: Math.random,
  WebSocket: undefined,
  fetch: undefined,
  getToken: undefined,
};

/** An error from the hub (an `error` frame) or from the client itself. */
export class RealtimeHubError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{event?: string|null, tempId?: string, frame?: object, cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'RealtimeHubError';
    this.code = code;
    this.event = details.event ?? null;
    if (details.tempId !== undefined) this.tempId = details.tempId;
    if (details.frame !== undefined) this.frame = details.frame;
  }
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function checkRoom(room, what = 'room') {
  if (typeof room !== 'string' || !ROOM_RE.test(room)) {
    throw new TypeError(`RealtimeHub: ${what} must be 1-64 characters of A-Z a-z 0-9 _ - . : (got ${JSON.stringify(room)})`);
  }
}

function checkUserId(userId, what = 'userId') {
  if (typeof userId !== 'string' || userId.length === 0 || [...userId].length > 128 || /[\u0000-\u001f\u007f]/.test(userId)) {
    throw new TypeError(`RealtimeHub: ${what} must be a string of 1-128 printable characters (got ${JSON.stringify(userId)})`);
  }
}

function checkString(value, what) {
  if (typeof value !== 'string') throw new TypeError(`RealtimeHub: ${what} must be a string (got ${typeof value})`);
}

function checkSeq(value, what) {
  if (value !== undefined && value !== null && !(Number.isSafeInteger(value) && value >= 0)) {
    throw new TypeError(`RealtimeHub: ${what} must be a non-negative integer (got ${JSON.stringify(value)})`);
  }
}

/** 128 random bits as hex, from the platform's CSPRNG when there is one. */
function randomId() {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto && typeof globalThis.crypto.getRandomValues === 'function') {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

function utf8Length(text) {
  if (typeof TextEncoder === 'function') return new TextEncoder().encode(text).length;
  return unescape(encodeURIComponent(text)).length;
}

/** True when a JWT's `exp` claim is in the past (false when it cannot be read). */
function tokenExpired(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now();
  } catch {
    return false;
  }
}

/** Rethrows a listener's exception outside the client's own bookkeeping. */
function reportAsync(err) {
  setTimeout(() => {
    throw err;
  }, 0);
}

/**
 * A RealtimeHub connection: rooms, messages, presence and typing over one WebSocket, with
 * automatic reconnect and recovery of everything missed while away.
 */
export class RealtimeHub {
  /**
   * @param {{url?: string|URL, apiKey?: string, token?: string, userId?: string}} config
   * @param {object} [options] see DEFAULT_OPTIONS and realtimehub.d.ts
   */
  constructor(config, options = {}) {
    if (!isPlainObject(config)) {
      throw new TypeError('RealtimeHub: the first argument must be an object {url, apiKey, userId} or {url, token, userId?}');
    }
    if (!isPlainObject(options)) throw new TypeError('RealtimeHub: options must be an object');
    const { apiKey, token, userId } = config;
    const getToken = options.getToken;
    if (getToken !== undefined && typeof getToken !== 'function') throw new TypeError('RealtimeHub: option getToken must be a function');
    if (apiKey !== undefined && (token !== undefined || getToken !== undefined)) {
      throw new TypeError('RealtimeHub: pass either apiKey or token, not both');
    }
    if (apiKey === undefined && token === undefined && getToken === undefined) {
      throw new TypeError('RealtimeHub: an apiKey (with userId) or a token (or a getToken option) is required');
    }
    if (apiKey !== undefined) {
      if (typeof apiKey !== 'string' || apiKey.length === 0) throw new TypeError('RealtimeHub: apiKey must be a non-empty string');
      checkUserId(userId);
    } else {
      if (token !== undefined && (typeof token !== 'string' || token.length === 0)) throw new TypeError('RealtimeHub: token must be a non-empty string');
      if (userId !== undefined) checkUserId(userId);
    }

    let base = config.url;
    if (base === undefined && globalThis.location && globalThis.location.origin) base = globalThis.location.origin;
    if (base === undefined) throw new TypeError('RealtimeHub: url is required (ws://HOST:PORT, or http://HOST:PORT)');
    let url;
    try {
      url = new URL(String(base), globalThis.location ? globalThis.location.href : undefined);
    } catch {
      throw new TypeError(`RealtimeHub: url is not a valid URL: ${JSON.stringify(String(base))}`);
    }
    if (url.protocol === 'http:') url.protocol = 'ws:';
    else if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
      throw new TypeError(`RealtimeHub: url must use ws:, wss:, http: or https: (got ${url.protocol})`);
    }
    if (url.pathname !== '/' && url.pathname !== '/ws') {
      throw new TypeError(`RealtimeHub: the hub accepts WebSockets on / and /ws only (got ${url.pathname})`);
    }
    url.hash = '';
    if (apiKey !== undefined) url.searchParams.set('apiKey', apiKey);
    if (userId !== undefined) url.searchParams.set('userId', userId);

    const opts = { ...DEFAULT_OPTIONS };
    for (const [k, v] of Object.entries(options)) {
      if (!(k in DEFAULT_OPTIONS)) throw new TypeError(`RealtimeHub: unknown option ${JSON.stringify(k)}`);
      if (v !== undefined) opts[k] = v;
    }
    for (const k of ['reconnectBaseMs', 'reconnectMaxMs', 'typingThrottleMs', 'typingIdleMs', 'heartbeatIntervalMs', 'heartbeatTimeoutMs', 'rateLimitRetryMs', 'maxFrameBytes']) {
      if (typeof opts[k] !== 'number' || !(opts[k] >= 0) || !Number.isFinite(opts[k])) {
        throw new TypeError(`RealtimeHub: option ${k} must be a non-negative number (got ${JSON.stringify(opts[k])})`);
      }
    }
    if (!(opts.maxReconnectAttempts >= 0)) throw new TypeError('RealtimeHub: option maxReconnectAttempts must be >= 0');
    if (!Number.isInteger(opts.historyPageLimit) || opts.historyPageLimit < 1 || opts.historyPageLimit > 1000) {
      throw new TypeError('RealtimeHub: option historyPageLimit must be an integer from 1 to 1000');
    }
    if (typeof opts.random !== 'function') throw new TypeError('RealtimeHub: option random must be a function');
    opts.reconnect = Boolean(opts.reconnect);
    const WS = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError(
        'RealtimeHub: no WebSocket implementation: pass options.WebSocket, or run Node 20 with --experimental-websocket (Node 22+ has one built in)',
      );
    }

    /** @private */ this._WS = WS;
    /** @private */ this._fetch = opts.fetch ?? (typeof globalThis.fetch === 'function' ? globalThis.fetch.bind(globalThis) : null);
    /** @private */ this._opts = opts;
    /** @private */ this._url = url.toString();
    /** @private */ this._httpBase = `${url.protocol === 'wss:' ? 'https:' : 'http:'}//${url.host}`;
    /** @private */ this._apiKey = apiKey;
    /** @private the signed token of the next connection (refreshed by getToken) */ this._token = token;
    /** The user id this client connects as (from the config, or from `connected`). */
    this.userId = userId ?? null;
    /** The hub's id for the current connection, from `connected`. */
    this.connectionId = null;

    /** @private */ this._listeners = new Map();
    /** @private */ this._state = 'idle';
    /** @private */ this._ws = null;
    /** @private */ this._epoch = 0;
    /** @private */ this._attempt = 0;
    /** @private */ this._everConnected = false;
    /** @private */ this._checkedKey = false;
    /** @private */ this._reconnectTimer = null;
    /** @private */ this._heartbeatTimer = null;
    /** @private */ this._heartbeatDeadline = null;
    /** @private */ this._retryTimer = null;
    /** @private */ this._connectWaiters = [];
    /** @private room -> RoomState */ this._rooms = new Map();
    /** @private n -> request, in call order */ this._outstanding = new Map();
    /** @private */ this._n = 0;
    /** @private ping numbers in flight on this connection */ this._pings = [];
    /** @private */ this._barrierScheduled = false;
    /** @private room -> typing state */ this._typing = new Map();
    /** @private */ this._status = 'online';
  }

  // ---------------------------------------------------------------- events

  /** Adds a listener. Returns this. */
  on(event, fn) {
    checkString(event, 'event');
    if (typeof fn !== 'function') throw new TypeError('RealtimeHub: a listener must be a function');
    let list = this._listeners.get(event);
    if (!list) this._listeners.set(event, (list = []));
    list.push(fn);
    return this;
  }

  /** Removes a listener (or every listener of the event when fn is omitted). Returns this. */
  off(event, fn) {
    const list = this._listeners.get(event);
    if (!list) return this;
    if (fn === undefined) {
      this._listeners.delete(event);
      return this;
    }
    const i = list.findIndex((l) => l === fn || l._original === fn);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this._listeners.delete(event);
    return this;
  }

  /** Adds a listener called at most once. Returns this. */
  once(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('RealtimeHub: a listener must be a function');
    const wrapper = (...args) => {
      this.off(event, wrapper);
      return fn.apply(this, args);
    };
    wrapper._original = fn;
    return this.on(event, wrapper);
  }

  /** @private */
  _emit(event, ...args) {
    const list = this._listeners.get(event);
    if (!list) return;
    for (const fn of [...list]) {
      try {
        fn.apply(this, args);
      } catch (err) {
        reportAsync(err);
      }
    }
  }

  // ------------------------------------------------------------ connection

  /** `idle`, `connecting`, `open`, `connected`, `reconnecting` or `closed`. */
  get state() {
    return this._state;
  }

  /** True once the hub's `connected` frame arrived on the current socket. */
  get connected() {
    return this._state === 'connected';
  }

  /**
   * Opens the connection (and keeps it open: reconnects with backoff when it drops).
   * Resolves with the `connected` frame; rejects when close() is called first, when the hub
   * refuses the apiKey, or when reconnecting gives up.
   */
  connect() {
    if (this._state === 'connected') return Promise.resolve(this._connectedFrame);
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._state === 'idle' || this._state === 'closed') {
      this._attempt = 0;
      this._checkedKey = false;
      this._open();
    }
    return p;
  }

  /**
   * Closes the connection for good (no reconnect). Pending promises reject with code
   * `closed`; rooms are forgotten. connect() may be called again afterwards.
   */
  close() {
    if (this._state === 'idle' || this._state === 'closed') return;
    const ws = this._ws;
    const wasOpen = ws !== null;
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
    }
    this._teardownSocket();
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._state = 'closed';
    this._failEverything(new RealtimeHubError('closed', 'the client was closed'));
    if (wasOpen) this._emit('close', { code: 1000, reason: 'client closed', wasClean: true, willReconnect: false });
  }

  /** @private the URL of the next connection: the token, when there is one, goes in the query. */
  _connectUrl() {
    if (this._token === undefined) return this._url;
    const url = new URL(this._url);
    url.searchParams.set('token', this._token);
    return url.toString();
  }

  /** @private */
  _open() {
    this._state = 'connecting';
    const epoch = ++this._epoch;
    if (this._opts.getToken) {
      // A fresh token for every connection (the hub closes a connection 1008 when its token expires).
      Promise.resolve()
        .then(() => this._opts.getToken())
        .then((token) => {
          if (this._epoch !== epoch || this._state !== 'connecting') return;
          if (typeof token !== 'string' || token.length === 0) throw new TypeError('getToken() must return a non-empty string');
          this._token = token;
          this._openSocket(epoch);
        })
        .catch((err) => {
          if (this._epoch !== epoch || this._state !== 'connecting') return;
          this._emit('error', new RealtimeHubError('token_failed', `getToken() failed: ${err && err.message}`, { cause: err }));
          this._afterSocketGone({ code: 1006, reason: 'getToken failed', wasClean: false }, false);
        });
      return;
    }
    this._openSocket(epoch);
  }

  /** @private */
  _openSocket(epoch) {
    let ws;
    try {
      ws = new this._WS(this._connectUrl());
    } catch (err) {
      this._ws = null;
      this._afterSocketGone({ code: 1006, reason: String(err && err.message), wasClean: false }, false);
      return;
    }
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => {
      if (this._epoch !== epoch) return;
      this._opened = true;
      this._state = 'open';
      this._emit('open');
    };
    ws.onmessage = (ev) => {
      if (this._epoch !== epoch) return;
      this._onData(ev.data);
    };
    ws.onerror = () => {
      // Browsers follow an error with a close event; some WebSocket implementations (Node 20's)
      // do not when the handshake fails, so a failed handshake ends the attempt here, and a
      // close that does not follow an error in time is assumed.
      if (this._epoch !== epoch) return;
      if (!this._opened) {
        this._socketGone({ code: 1006, reason: 'connection failed', wasClean: false });
        return;
      }
      setTimeout(() => {
        if (this._epoch === epoch) this._socketGone({ code: 1006, reason: 'connection error', wasClean: false });
      }, 1000);
    };
    ws.onclose = (ev) => {
      if (this._epoch !== epoch) return;
      this._socketGone({ code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
    };
  }

  /** @private detaches the current socket's handlers and forgets per-socket state. */
  _teardownSocket() {
    const ws = this._ws;
    this._epoch++;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      // A socket given up on while still open (an error without a close): release it.
      if (ws.readyState === 1) {
        try {
          ws.close(1000);
        } catch {
          /* ignore */
        }
      }
    }
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._heartbeatDeadline);
    this._heartbeatTimer = this._heartbeatDeadline = null;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._pings = [];
    this.connectionId = null;
    for (const t of this._typing.values()) clearTimeout(t.timer);
    this._typing.clear();
    for (const room of this._rooms.values()) {
      room.joined = false;
      room.recovering = false;
      room.buffer = [];
    }
    for (const [n, req] of this._outstanding) {
      req.held = false; // a rate-limit pause ends with the connection: all is re-sent on the next
      if (!req.sent) continue;
      if (req.resend) {
        req.sent = false;
      } else {
        this._outstanding.delete(n);
        req.reject(
          new RealtimeHubError('disconnected', `the connection dropped before the hub answered this ${req.type}; it may or may not have been applied`, {
            event: req.type,
            tempId: req.frame.tempId,
          }),
        );
      }
    }
  }

  /** @private the socket closed (or was declared dead). */
  _socketGone(info) {
    const opened = this._opened;
    this._teardownSocket();
    this._afterSocketGone(info, opened);
  }

  /** @private */
  _afterSocketGone(info, opened) {
    if (!this._opts.getToken && this._token !== undefined && (tokenExpired(this._token) || (info.code === 1008 && /token/i.test(info.reason || '')))) {
      // Reconnecting with the same expired token would be refused: this is final.
      this._state = 'closed';
      this._emit('close', { ...info, willReconnect: false });
      const err = new RealtimeHubError('token_expired', 'the signed token expired: create the client with a fresh token, or pass a getToken option to refresh it on reconnect');
      this._emit('error', err);
      this._failEverything(err);
      return;
    }
    const willReconnect = this._opts.reconnect && this._attempt < this._opts.maxReconnectAttempts;
    this._state = willReconnect ? 'reconnecting' : 'closed';
    this._emit('close', { ...info, willReconnect });
    const neverOpened = !opened && !this._everConnected;
    if (neverOpened && !this._checkedKey) {
      this._emit(
        'error',
        new RealtimeHubError('connect_failed', `could not open a WebSocket to ${this._httpBase} (close code ${info.code}): the hub is unreachable, or refused the apiKey/token (401) or userId (400)`),
      );
    }
    if (!willReconnect) {
      let err;
      if (!this._opts.reconnect) {
        err = neverOpened
          ? new RealtimeHubError('connect_failed', `could not open a WebSocket to ${this._httpBase} (close code ${info.code}) and reconnect is off`)
          : new RealtimeHubError('disconnected', `the connection closed (code ${info.code}) and reconnect is off`);
      } else {
        err = new RealtimeHubError('reconnect_failed', `gave up after ${this._attempt} reconnect attempts`);
        this._emit('error', err);
      }
      this._failEverything(err);
      return;
    }
    if (!opened && !this._checkedKey) this._checkKey();
    this._scheduleReconnect();
  }

  /** @private full-jitter exponential backoff */
  _scheduleReconnect() {
    this._attempt++;
    const { reconnectBaseMs, reconnectMaxMs, random } = this._opts;
    const ceiling = Math.min(reconnectMaxMs, reconnectBaseMs * 2 ** Math.min(this._attempt - 1, 30));
    const delayMs = Math.floor(random() * ceiling);
    this._emit('reconnecting', { attempt: this._attempt, delayMs });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._state === 'reconnecting') this._open();
    }, delayMs);
  }

  /**
   * @private When a socket fails before opening, ask the REST API (`GET /api/v1/project` with
   * the apiKey) whether the handshake was refused for good (a browser cannot see the status of
   * a refused upgrade): a refused key (401), a project that requires signed tokens, or an
   * Origin outside the project's allow-list (403) is final.
   */
  _checkKey() {
    this._checkedKey = true;
    if (this._apiKey === undefined || !this._fetch) return;
    Promise.resolve()
      .then(() => this._fetch(`${this._httpBase}/api/v1/project`, { headers: { 'X-API-Key': this._apiKey } }))
      .then(async (res) => {
        let err = null;
        if (res.status === 401) {
          err = new RealtimeHubError('unauthorized', 'the hub refused the apiKey (401): check the key of your project');
        } else if (res.status === 200) {
          const project = await res.json().catch(() => null);
          const origin = globalThis.location && globalThis.location.origin;
          if (project && project.requireTokens === true) {
            err = new RealtimeHubError('unauthorized', 'this project requires signed tokens: connect with {token} (or a getToken option) instead of an apiKey');
          } else if (project && Array.isArray(project.allowedOrigins) && project.allowedOrigins.length > 0 && origin && !project.allowedOrigins.includes(origin)) {
            err = new RealtimeHubError('forbidden', `this page's origin ${origin} is not in the project's allowedOrigins`);
          }
        }
        if (!err || this._everConnected) return;
        if (this._state !== 'connecting' && this._state !== 'reconnecting') return;
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
        if (this._ws) this._teardownSocket();
        this._state = 'closed';
        this._emit('error', err);
        this._failEverything(err);
      })
      .catch(() => {
        /* hub unreachable: keep retrying */
      });
  }

  /** @private rejects every promise and forgets rooms and queued requests. */
  _failEverything(err) {
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
    for (const req of this._outstanding.values()) req.reject(err);
    this._outstanding.clear();
    for (const room of this._rooms.values()) for (const w of room.waiters.splice(0)) w.reject(err);
    this._rooms.clear();
    for (const t of this._typing.values()) clearTimeout(t.timer);
    this._typing.clear();
  }

  /** @private */
  _sendRaw(frame) {
    const ws = this._ws;
    if (!ws || this._state !== 'connected') return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      this._emit('error', new RealtimeHubError('send_failed', `could not write to the WebSocket: ${err && err.message}`, { cause: err }));
      return false;
    }
  }

  // -------------------------------------------------------- inbound frames

  /** @private */
  _onData(data) {
    if (typeof data !== 'string') {
      if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) data = new TextDecoder().decode(data);
      else return; // a Blob: the hub sends text frames only
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._emit('error', new RealtimeHubError('bad_frame', `the hub sent a frame that is not JSON: ${data.slice(0, 100)}`));
      return;
    }
    if (!isPlainObject(frame) || typeof frame.type !== 'string') {
      this._emit('error', new RealtimeHubError('bad_frame', 'the hub sent a frame without a type'));
      return;
    }
    const handler = INBOUND[frame.type];
    if (handler) handler.call(this, frame);
    else this._emit(frame.type, frame);
  }

  /** @private */
  _onConnected(frame) {
    this._state = 'connected';
    this._everConnected = true;
    this._attempt = 0;
    this._checkedKey = false;
    this.connectionId = frame.connectionId ?? null;
    if (frame.userId !== undefined) this.userId = frame.userId;
    this._connectedFrame = frame;
    this._startHeartbeat();
    // Rejoin every room (with `since`), then restore presence, then re-send what is pending.
    for (const room of this._rooms.values()) this._sendJoin(room);
    if (this._status !== 'online') this._sendRaw({ type: 'presence', status: this._status });
    this._flushOutstanding();
    this._emit('connected', frame);
    for (const w of this._connectWaiters.splice(0)) w.resolve(frame);
  }

  /** @private sends every request not yet sent on this connection, in call order. */
  _flushOutstanding() {
    if (this._state !== 'connected') return;
    let barrier = false;
    for (const req of this._outstanding.values()) {
      if (req.sent || req.held) continue;
      this._dispatch(req);
      if (req.barrier) barrier = true;
    }
    if (barrier) this._scheduleBarrier();
  }

  /** @private */
  _dispatch(req) {
    if (this._sendRaw(req.frame)) {
      req.sent = true;
      req.epoch = this._epoch;
    }
  }

  /** @private creates a request; sends it now when connected, else when the connection is back. */
  _request(type, frame, extra = {}) {
    const n = ++this._n;
    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const req = { n, type, frame, resolve, reject, sent: false, resend: true, barrier: false, ...extra };
    if (!this._checkFrameSize(frame, reject)) return promise;
    if (this._state === 'idle' || this._state === 'closed') {
      reject(new RealtimeHubError('not_connected', `call connect() before ${type}`, { event: type, tempId: frame.tempId }));
      return promise;
    }
    req.settle = (ok, value) => {
      if (this._outstanding.get(n) === req) this._outstanding.delete(n);
      (ok ? resolve : reject)(value);
    };
    req.resolve = (v) => req.settle(true, v);
    req.reject = (e) => req.settle(false, e);
    this._outstanding.set(n, req);
    if (this._state === 'connected') {
      this._dispatch(req);
      if (req.barrier) this._scheduleBarrier();
    }
    promise.request = req;
    return promise;
  }

  /** @private */
  _checkFrameSize(frame, reject) {
    const bytes = utf8Length(JSON.stringify(frame));
    if (bytes > this._opts.maxFrameBytes) {
      reject(
        new RealtimeHubError('too_large', `this ${frame.type} is ${bytes} bytes; the hub accepts WebSocket messages up to ${this._opts.maxFrameBytes} bytes`, {
          event: frame.type,
          tempId: frame.tempId,
        }),
      );
      return false;
    }
    return true;
  }

  /** @private the oldest request of a type sent on this connection (answers come in order). */
  _oldest(type, match) {
    for (const req of this._outstanding.values()) {
      if (req.type === type && req.sent && req.epoch === this._epoch && (!match || match(req))) return req;
    }
    return null;
  }

  /** @private */
  _byTempId(type, tempId) {
    if (tempId === undefined || tempId === null) return null;
    for (const req of this._outstanding.values()) {
      if (req.type === type && req.frame.tempId === tempId) return req;
    }
    return null;
  }

  /**
   * @private After `read` or `presence` (which the hub does not answer when they succeed),
   * a `ping`: its `pong` proves every earlier frame was handled without an error.
   */
  _scheduleBarrier() {
    if (this._barrierScheduled) return;
    this._barrierScheduled = true;
    queueMicrotask(() => {
      this._barrierScheduled = false;
      this._ping();
    });
  }

  /** @private */
  _ping() {
    if (this._state !== 'connected') return;
    const n = ++this._n;
    if (this._sendRaw({ type: 'ping' })) this._pings.push(n);
  }

  /** @private */
  _onPong(frame) {
    const n = this._pings.shift();
    clearTimeout(this._heartbeatDeadline);
    this._heartbeatDeadline = null;
    if (n !== undefined) {
      for (const req of [...this._outstanding.values()]) {
        if (req.barrier && req.sent && req.epoch === this._epoch && req.n < n) req.resolve(undefined);
      }
    }
    this._emit('pong', frame);
  }

  /** @private */
  _startHeartbeat() {
    const { heartbeatIntervalMs, heartbeatTimeoutMs } = this._opts;
    if (!heartbeatIntervalMs) return;
    this._heartbeatTimer = setInterval(() => {
      if (this._heartbeatDeadline) return;
      this._ping();
      if (!heartbeatTimeoutMs) return;
      this._heartbeatDeadline = setTimeout(() => {
        this._heartbeatDeadline = null;
        // No pong: the connection is dead (a half-open TCP connection, say). Drop it now
        // instead of waiting for a close event that may take minutes.
        const ws = this._ws;
        this._socketGone({ code: 4000, reason: 'heartbeat timeout', wasClean: false });
        try {
          ws && ws.close(4000, 'heartbeat timeout');
        } catch {
          /* ignore */
        }
      }, heartbeatTimeoutMs);
    }, heartbeatIntervalMs);
    if (typeof this._heartbeatTimer === 'object' && this._heartbeatTimer && this._heartbeatTimer.unref) this._heartbeatTimer.unref();
  }

  /** @private */
  _onError(frame) {
    const err = new RealtimeHubError(frame.code ?? 'internal', frame.message ?? 'the hub refused the request', {
      event: frame.event ?? null,
      tempId: frame.tempId,
      frame,
    });
    const event = frame.event;
    if (event === 'join' && frame.code === 'rate_limited' && this._oldest('join')) {
      // Retryable (the hub's read budget for replays was spent): join again a little later.
      const req = this._oldest('join');
      req.sent = false;
      req.held = true;
      this._scheduleRetry();
    } else if (event === 'join') {
      const req = this._oldest('join');
      if (req) {
        this._outstanding.delete(req.n);
        const room = this._rooms.get(req.frame.room);
        if (room && room.joinReq === req) {
          this._rooms.delete(req.frame.room);
          for (const w of room.waiters.splice(0)) w.reject(err);
        }
      }
    } else if ((event === 'message' || event === 'direct') && frame.tempId !== undefined && frame.tempId !== null) {
      const req = this._byTempId(event, frame.tempId);
      if (req && frame.code === 'rate_limited' && event === 'message') {
        // Retryable: the hub deduplicates by tempId, so send it again a little later.
        req.sent = false;
        req.held = true;
        this._scheduleRetry();
      } else if (req) {
        req.reject(err);
      }
    } else if (event === 'ping') {
      this._pings.shift();
    } else if (event && event !== 'typing') {
      const req = this._oldest(event);
      if (req) req.reject(err);
    }
    this._emit('error', err);
  }

  /** @private */
  _scheduleRetry() {
    if (this._retryTimer) return;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      for (const req of this._outstanding.values()) req.held = false;
      this._flushOutstanding();
    }, this._opts.rateLimitRetryMs);
  }

  // ------------------------------------------------------------------ rooms

  /** @private */
  _sendJoin(room) {
    const frame = { type: 'join', room: room.name };
    if (room.lastSeq !== null) frame.since = room.lastSeq;
    if (room.joinReq) this._outstanding.delete(room.joinReq.n);
    const req = { n: ++this._n, type: 'join', frame, sent: false, resend: true, resolve() {}, reject() {} };
    room.joinReq = req;
    room.sinceSent = frame.since ?? null;
    this._outstanding.set(req.n, req);
    this._dispatch(req);
  }

  /** @private */
  _onJoined(frame) {
    const room = this._rooms.get(frame.room);
    const req = this._oldest('join', (r) => r.frame.room === frame.room);
    if (req) this._outstanding.delete(req.n);
    if (room) {
      room.joined = true;
      room.joinedFrame = frame;
      room.members = new Map((frame.members || []).map((m) => [m.userId, m.status]));
      const latest = typeof frame.seq === 'number' ? frame.seq : 0;
      let recover = false;
      if (room.lastSeq === null) {
        room.lastSeq = latest;
      } else if (latest < room.lastSeq) {
        // The hub has fewer messages than we saw (a different or reset database): start over.
        room.lastSeq = latest;
      } else if (frame.recovered === false && latest > room.lastSeq) {
        recover = true;
      }
      this._emit('joined', frame);
      for (const w of room.waiters.splice(0)) w.resolve(frame);
      if (recover) this._recover(room, latest);
    } else {
      this._emit('joined', frame);
    }
  }

  /**
   * @private `joined.recovered` was false: page the missed messages with `history` after the
   * last seq seen, emitting them in order, while live messages wait in a buffer.
   */
  async _recover(room, target) {
    room.recovering = true;
    room.buffer = [];
    const epoch = this._epoch;
    const limit = this._opts.historyPageLimit;
    try {
      for (;;) {
        const after = room.lastSeq;
        let messages;
        try {
          messages = await this._request('history', { type: 'history', room: room.name, after, limit }, { resend: false });
        } catch (err) {
          // The hub's read budget was spent: wait and ask for the same page again.
          if (err.code !== 'rate_limited') throw err;
          await new Promise((resolve) => setTimeout(resolve, this._opts.rateLimitRetryMs));
          if (this._epoch !== epoch || this._rooms.get(room.name) !== room) return;
          continue;
        }
        if (this._epoch !== epoch || this._rooms.get(room.name) !== room) return;
        for (const m of messages) this._deliver(room, { type: 'message', ...m });
        // A page may be short of `limit` (the hub caps a page by bytes): only an empty
        // page or reaching the `seq` that `joined` announced ends the recovery.
        if (messages.length === 0 || room.lastSeq >= target) break;
      }
    } catch (err) {
      if (this._epoch !== epoch || this._rooms.get(room.name) !== room) return;
      this._emit('error', new RealtimeHubError(err.code || 'internal', `could not recover the history of ${room.name}: ${err.message}`, { event: 'history', cause: err }));
    }
    room.recovering = false;
    const buffered = room.buffer.splice(0).sort((a, b) => a.seq - b.seq);
    for (const m of buffered) this._deliver(room, m);
  }

  /** @private emits a message once: seq is gapless per room, so a seen seq is a duplicate. */
  _deliver(room, frame) {
    if (typeof frame.seq === 'number' && room.lastSeq !== null && frame.seq <= room.lastSeq) return;
    if (typeof frame.seq === 'number') room.lastSeq = frame.seq;
    this._emit('message', frame);
  }

  /** @private */
  _onMessage(frame) {
    const room = this._rooms.get(frame.room);
    if (!room) {
      this._emit('message', frame);
      return;
    }
    if (room.recovering) {
      room.buffer.push(frame);
      return;
    }
    this._deliver(room, frame);
  }

  /** @private */
  _onLeft(frame) {
    const req = this._oldest('leave', (r) => r.frame.room === frame.room);
    if (req) {
      // Our own leave(): the room was forgotten then (and may have been joined again since).
      req.resolve(undefined);
    } else {
      // Removed by the hub (a private room's member list changed).
      this._forgetRoom(frame.room, new RealtimeHubError('forbidden', `removed from room ${frame.room}`, { event: 'join' }));
    }
    this._emit('left', frame);
  }

  /** @private */
  _onRoomDeleted(frame) {
    this._forgetRoom(frame.room, new RealtimeHubError('not_found', `room ${frame.room} was deleted`, { event: 'join' }));
    this._emit('room_deleted', frame);
  }

  /** @private */
  _forgetRoom(name, err) {
    const room = this._rooms.get(name);
    if (!room) return;
    this._rooms.delete(name);
    if (room.joinReq) this._outstanding.delete(room.joinReq.n);
    for (const w of room.waiters.splice(0)) w.reject(err);
    this.stopTyping(name);
  }

  /** @private */
  _onUserJoined(frame) {
    const room = this._rooms.get(frame.room);
    if (room) room.members.set(frame.userId, frame.status ?? 'online');
    this._emit('user_joined', frame);
  }

  /** @private */
  _onUserLeft(frame) {
    const room = this._rooms.get(frame.room);
    if (room) room.members.delete(frame.userId);
    this._emit('user_left', frame);
  }

  /** @private */
  _onPresence(frame) {
    for (const room of this._rooms.values()) {
      if (room.members.has(frame.userId)) room.members.set(frame.userId, frame.status);
    }
    this._emit('presence', frame);
  }

  /** @private */
  _onMapping(frame) {
    const req = this._byTempId('message', frame.tempId);
    if (req) req.resolve({ id: frame.realId, seq: frame.seq, room: frame.room, tempId: frame.tempId });
    this._emit('message_id_mapping', frame);
  }

  /** @private */
  _onDirectSent(frame) {
    const req = this._byTempId('direct', frame.tempId);
    if (req) req.resolve({ id: frame.id, to: frame.to, delivered: frame.delivered, tempId: frame.tempId });
    this._emit('direct_sent', frame);
  }

  /** @private */
  _onHistory(frame) {
    const req = this._oldest('history', (r) => r.frame.room === frame.room);
    if (req) req.resolve(Array.isArray(frame.messages) ? frame.messages : []);
    this._emit('history', frame);
  }

  /** @private */
  _onMessageUpdate(frame) {
    const id = frame.message && frame.message.id;
    const type = frame.message && frame.message.deleted ? 'delete' : 'edit';
    const req = this._oldest(type, (r) => r.frame.messageId === id);
    if (req) req.resolve(frame.message);
    this._emit('message_update', frame);
  }

  // ------------------------------------------------------------ public API

  /**
   * Joins a room (and rejoins it after every reconnect, replaying what was missed).
   * Resolves with the `joined` frame; rejects with the hub's error (`not_found`, `forbidden`).
   * `since`: replay every stored message after this seq first (as `message` events).
   */
  join(room, { since } = {}) {
    checkRoom(room);
    checkSeq(since, 'since');
    if (this._state === 'idle' || this._state === 'closed') {
      return Promise.reject(new RealtimeHubError('not_connected', 'call connect() before join()', { event: 'join' }));
    }
    let state = this._rooms.get(room);
    if (state && state.joined && since === undefined) return Promise.resolve(state.joinedFrame);
    if (!state) {
      state = { name: room, lastSeq: null, joined: false, joinedFrame: null, members: new Map(), waiters: [], recovering: false, buffer: [], joinReq: null };
      this._rooms.set(room, state);
    }
    if (since !== undefined && since !== null) state.lastSeq = since;
    const p = new Promise((resolve, reject) => state.waiters.push({ resolve, reject }));
    if (this._state === 'connected' && (!state.joinReq || !state.joinReq.sent || since !== undefined)) this._sendJoin(state);
    return p;
  }

  /** Leaves a room (no rejoin after reconnect). Resolves once the hub confirmed with `left`. */
  leave(room) {
    checkRoom(room);
    const state = this._rooms.get(room);
    if (!state) return Promise.resolve();
    this.stopTyping(room);
    this._forgetRoom(room, new RealtimeHubError('left', `left room ${room} before it was joined`, { event: 'join' }));
    if (this._state !== 'connected') return Promise.resolve();
    return this._request('leave', { type: 'leave', room }, { resend: false }).catch((err) => {
      if (err.code === 'disconnected') return undefined; // the connection is gone, so is the membership
      throw err;
    });
  }

  /**
   * Sends a message. Resolves with `{id, seq, room, tempId}` once the hub stored it
   * (`message_id_mapping`). Survives reconnects: re-sent with the same tempId, which the hub
   * deduplicates. The returned promise has a `tempId` property for optimistic display.
   */
  send(room, content, { contentType, attachments, tempId } = {}) {
    checkRoom(room);
    checkString(content, 'content');
    if (contentType !== undefined) checkString(contentType, 'contentType');
    if (attachments !== undefined && !Array.isArray(attachments)) throw new TypeError('RealtimeHub: attachments must be an array');
    if (tempId === undefined) tempId = randomId();
    else if (typeof tempId !== 'string' || tempId.length < 1 || tempId.length > 128) throw new TypeError('RealtimeHub: tempId must be a string of 1-128 characters');
    const existing = this._byTempId('message', tempId);
    if (existing) return existing.promise;
    this.stopTyping(room);
    const frame = { type: 'message', room, content, tempId };
    if (contentType !== undefined) frame.contentType = contentType;
    if (attachments !== undefined) frame.attachments = attachments;
    const p = this._request('message', frame);
    p.tempId = tempId;
    if (p.request) p.request.promise = p;
    return p;
  }

  /** Edits one of your messages. Resolves with the updated message (`message_update`). */
  edit(room, messageId, content) {
    checkRoom(room);
    checkString(messageId, 'messageId');
    checkString(content, 'content');
    return this._request('edit', { type: 'edit', room, messageId, content });
  }

  /** Deletes one of your messages. Resolves with the tombstone (`message_update`, deleted). */
  delete(room, messageId) {
    checkRoom(room);
    checkString(messageId, 'messageId');
    return this._request('delete', { type: 'delete', room, messageId }, { resend: false });
  }

  /** Marks messages read (one id or an array). Resolves once the hub accepted them. */
  markRead(room, messageIds) {
    checkRoom(room);
    const ids = typeof messageIds === 'string' ? [messageIds] : messageIds;
    if (!Array.isArray(ids) || ids.length === 0 || !ids.every((id) => typeof id === 'string')) {
      throw new TypeError('RealtimeHub: markRead needs a message id or a non-empty array of ids');
    }
    return this._request('read', { type: 'read', room, messageIds: ids }, { barrier: true });
  }

  /** Sets this user's status (`online`, `away` or `busy`); restored after a reconnect. */
  setPresence(status) {
    if (!STATUSES.includes(status)) throw new TypeError(`RealtimeHub: status must be one of ${STATUSES.join(', ')} (got ${JSON.stringify(status)})`);
    this._status = status;
    if (this.userId !== null) {
      for (const room of this._rooms.values()) if (room.members.has(this.userId)) room.members.set(this.userId, status);
    }
    if (this._state === 'idle' || this._state === 'closed') return Promise.resolve();
    return this._request('presence', { type: 'presence', status }, { barrier: true });
  }

  /** The status this client last set (what it restores after reconnecting). */
  get status() {
    return this._status;
  }

  /** Sends a direct (unstored) message to every connection of a user. Resolves with `{id, to, delivered}`. */
  direct(to, content, { tempId } = {}) {
    checkUserId(to, 'to');
    checkString(content, 'content');
    if (tempId === undefined) tempId = randomId();
    return this._request('direct', { type: 'direct', to, content, tempId }, { resend: false });
  }

  /**
   * Stored messages of a room, ascending by seq: with `after`, the oldest `limit` after it;
   * otherwise the newest `limit` (below `before`). `limit` 1-1000, default 50.
   */
  history(room, { before, after, limit } = {}) {
    checkRoom(room);
    checkSeq(before, 'before');
    checkSeq(after, 'after');
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= 1000)) {
      throw new TypeError('RealtimeHub: limit must be an integer from 1 to 1000');
    }
    const frame = { type: 'history', room };
    if (before !== undefined) frame.before = before;
    if (after !== undefined) frame.after = after;
    if (limit !== undefined) frame.limit = limit;
    return this._request('history', frame);
  }

  /**
   * Call on every keystroke: sends `isTyping: true` at most once per typingThrottleMs (3 s),
   * and `isTyping: false` by itself after typingIdleMs (5 s) without a call, on send() and
   * on leave().
   */
  typing(room) {
    checkRoom(room);
    let t = this._typing.get(room);
    if (!t) this._typing.set(room, (t = { active: false, lastSent: 0, timer: null }));
    const now = Date.now();
    if (!t.active || now - t.lastSent >= this._opts.typingThrottleMs) {
      const state = this._rooms.get(room);
      if (state && state.joined && this._sendRaw({ type: 'typing', room, isTyping: true })) {
        t.active = true;
        t.lastSent = now;
      }
    }
    clearTimeout(t.timer);
    t.timer = setTimeout(() => this.stopTyping(room), this._opts.typingIdleMs);
  }

  /** Sends `isTyping: false` now if typing() had announced typing in this room. */
  stopTyping(room) {
    const t = this._typing.get(room);
    if (!t) return;
    clearTimeout(t.timer);
    this._typing.delete(room);
    if (t.active) this._sendRaw({ type: 'typing', room, isTyping: false });
  }

  /** Members of a joined room with their status, sorted by userId. */
  members(room) {
    const state = this._rooms.get(room);
    if (!state) return [];
    return [...state.members].map(([userId, status]) => ({ userId, status })).sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0));
  }

  /** Rooms this client is in (or rejoining), by name. */
  rooms() {
    return [...this._rooms.keys()];
  }

  /** The last message seq seen in a room (what `since` will be on rejoin), or null. */
  lastSeq(room) {
    const state = this._rooms.get(room);
    return state ? state.lastSeq : null;
  }

  /** Messages sent but not yet acknowledged: `[{tempId, room, content}]`. */
  pending() {
    const out = [];
    for (const req of this._outstanding.values()) {
      if (req.type === 'message') out.push({ tempId: req.frame.tempId, room: req.frame.room, content: req.frame.content });
    }
    return out;
  }
}

/** Frame handlers that keep state before (or instead of) emitting. */
const INBOUND = {
  connected: RealtimeHub.prototype._onConnected,
  joined: RealtimeHub.prototype._onJoined,
  left: RealtimeHub.prototype._onLeft,
  message: RealtimeHub.prototype._onMessage,
  message_id_mapping: RealtimeHub.prototype._onMapping,
  message_update: RealtimeHub.prototype._onMessageUpdate,
  user_joined: RealtimeHub.prototype._onUserJoined,
  user_left: RealtimeHub.prototype._onUserLeft,
  presence: RealtimeHub.prototype._onPresence,
  direct_sent: RealtimeHub.prototype._onDirectSent,
  history: RealtimeHub.prototype._onHistory,
  room_deleted: RealtimeHub.prototype._onRoomDeleted,
  pong: RealtimeHub.prototype._onPong,
  error: RealtimeHub.prototype._onError,
};

export default RealtimeHub;
