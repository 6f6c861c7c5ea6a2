#!/usr/bin/env node
// Benchmark peer for scripts/bench-compare: the part of the RealtimeHub
// protocol the load generator uses, on Node.js and the `ws` package.
//
//   node server.js [--host 127.0.0.1] [--port 0]
//
// Prints `listening on http://HOST:PORT` when ready, like the hub.
// - POST /api/v1/projects and POST /api/v1/rooms answer fixed JSON (201);
//   nothing is checked or stored.
// - WebSocket at / or /ws: `?apiKey=` is accepted without checking, `userId`
//   is required. First frame `connected`; `join` → `joined`; `message` →
//   `message_id_mapping` to the sender (with a tempId), then the `message`
//   frame to every joined connection, sender included, serialised once;
//   `ping` → `pong`.
// Unlike the hub there is no storage, presence, rate limit or slow-consumer
// limit: it is the floor a plain Node WebSocket fan-out costs.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

function flag(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = flag('--host', process.env.HOST || '127.0.0.1');
const port = Number(flag('--port', process.env.PORT || '0'));

/** room name -> { seq, conns: Set<WebSocket> } */
const rooms = new Map();
let nextConn = 0;
let nextMessage = 0;

function room(name) {
  let r = rooms.get(name);
  if (!r) {
    r = { seq: 0, conns: new Set() };
    rooms.set(name, r);
  }
  return r;
}

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = {};
    try {
      body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : {};
    } catch (e) {
      return json(res, 400, { error: { code: 'bad_request', message: 'body is not JSON' } });
    }
    const now = new Date().toISOString();
    const path = req.url.split('?')[0];
    if (req.method === 'POST' && path === '/api/v1/projects') {
      return json(res, 201, { id: 'p_peer', name: body.name || 'bench', apiKey: 'peer-key', createdAt: now });
    }
    if (req.method === 'POST' && path === '/api/v1/rooms') {
      room(String(body.name));
      return json(res, 201, { id: 'r_' + String(body.name), name: body.name, type: body.type || 'public', createdAt: now });
    }
    if (req.method === 'GET' && path === '/health') {
      return json(res, 200, { status: 'ok', uptimeSeconds: Math.floor(process.uptime()), version: 'peer' });
    }
    return json(res, 404, { error: { code: 'not_found', message: 'no such endpoint' } });
  });
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://peer');
  const userId = url.searchParams.get('userId');
  if ((url.pathname !== '/' && url.pathname !== '/ws') || !userId) {
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onOpen(ws, userId));
});

function sendError(ws, event, code, message, tempId) {
  const frame = { type: 'error', event, code, message };
  if (tempId !== undefined) frame.tempId = tempId;
  ws.send(JSON.stringify(frame));
}

function onOpen(ws, userId) {
  const id = String(++nextConn);
  ws.userId = userId;
  ws.joined = new Set();
  ws.send(JSON.stringify({ type: 'connected', connectionId: id, userId }));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return sendError(ws, null, 'bad_request', 'binary frames are not supported');
    let ev;
    try {
      ev = JSON.parse(data.toString());
    } catch (e) {
      return sendError(ws, null, 'bad_request', 'not a JSON event');
    }
    switch (ev.type) {
      case 'join': {
        if (typeof ev.room !== 'string') return sendError(ws, 'join', 'bad_request', 'missing field `room`');
        const r = room(ev.room);
        r.conns.add(ws);
        ws.joined.add(ev.room);
        const users = new Set();
        for (const c of r.conns) users.add(c.userId);
        const members = [...users].sort().map((u) => ({ userId: u, status: 'online' }));
        return ws.send(JSON.stringify({ type: 'joined', room: ev.room, seq: r.seq, members }));
      }
      case 'message': {
        if (!ws.joined.has(ev.room)) return sendError(ws, 'message', 'not_joined', 'join the room first', ev.tempId);
        if (typeof ev.content !== 'string') return sendError(ws, 'message', 'bad_request', 'missing field `content`', ev.tempId);
        const r = room(ev.room);
        const seq = ++r.seq;
        const id = 'm_' + (++nextMessage);
        if (ev.tempId !== undefined) {
          ws.send(JSON.stringify({ type: 'message_id_mapping', room: ev.room, tempId: ev.tempId, realId: id, seq }));
        }
        const frame = Buffer.from(JSON.stringify({
          type: 'message', id, seq, room: ev.room, userId: ws.userId, content: ev.content,
          contentType: ev.contentType || 'text/plain', attachments: [], createdAt: new Date().toISOString(),
        }));
        for (const c of r.conns) c.send(frame, { binary: false });
        return undefined;
      }
      case 'ping':
        return ws.send('{"type":"pong"}');
      default:
        return sendError(ws, ev.type ?? null, 'bad_request', 'unknown event type');
    }
  });
  ws.on('close', () => {
    for (const name of ws.joined) {
      const r = rooms.get(name);
      if (r) r.conns.delete(ws);
    }
  });
  ws.on('error', () => {});
}

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));

server.listen(port, host, () => {
  process.stdout.write(`listening on http://${host}:${server.address().port}\n`);
});
