#!/usr/bin/env node
// Benchmark peer for the load generator's `--dialect socketio` (issue 10):
// the Socket.IO events benches/loadgen.rs uses, on the official Node
// `socket.io` server (4.8.x, pinned exactly in package.json / package-lock.json).
//
//   (cd benches/peers/node-socketio && npm ci)
//   taskset -c 0 node benches/peers/node-socketio/server.js --host 127.0.0.1 --port 0 &
//   # prints `listening on http://127.0.0.1:PORT` when ready, like the hub
//   taskset -c 1 target/release/deps/loadgen-* fanout --dialect socketio \
//     --members 1000 --publishers 4 --size 64 --rate 0 --duration 10 \
//     --addr 127.0.0.1:PORT --pid $! --label node-socketio
//
// (the loadgen executable is the one `cargo bench --bench loadgen --no-run`
// prints; scripts/bench-compare starts the node-ws peer the same way: pinned
// to core 0, the generator to core 1, a fresh server per run.)
//
// - POST /api/v1/projects and POST /api/v1/rooms answer fixed JSON (201);
//   nothing is checked or stored. GET /health answers 200. Anything else: 404.
// - Socket.IO at /socket.io/ (Engine.IO v4, both transports, socket.io's
//   defaults: pingInterval 25 s, pingTimeout 20 s, no compression). CONNECT
//   to `/` is accepted with any auth (`userId` is kept for the messages).
// - `join_thread {threadId}` → socket.join(threadId), then `thread_joined
//   {threadId, seq}` to the socket (no members list, no presence events).
// - `message_send {threadId, tempId, content}` → `message_id_mapping
//   {threadId, tempId, realId, seq}` to the sender, then
//   `io.to(threadId).emit('message', {message})` to the room, sender included
//   (socket.io encodes the packet once for the whole room). A socket not in
//   the thread gets `error {event, code: 'not_joined', message, tempId}`.
// Unlike the hub there is no storage, presence, rate limit, ack or
// slow-consumer limit: it is the floor the official server's fan-out costs.
'use strict';

const http = require('http');
const { Server } = require('socket.io');

function flag(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = flag('--host', process.env.HOST || '127.0.0.1');
const port = Number(flag('--port', process.env.PORT || '0'));

/** thread id -> last seq */
const seqs = new Map();
let nextMessage = 0;

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
      return json(res, 201, { id: 'r_' + String(body.name), name: body.name, type: body.type || 'public', createdAt: now });
    }
    if (req.method === 'GET' && path === '/health') {
      return json(res, 200, { status: 'ok', uptimeSeconds: Math.floor(process.uptime()), version: 'peer' });
    }
    return json(res, 404, { error: { code: 'not_found', message: 'no such endpoint' } });
  });
});

// Attached after the request handler: engine.io takes /socket.io/ and hands
// every other request to it.
const io = new Server(server, { serveClient: false, maxHttpBufferSize: 64 * 1024 });

io.on('connection', (socket) => {
  const auth = socket.handshake.auth || {};
  const userId = String(auth.userId ?? socket.handshake.query.userId ?? socket.id);

  socket.on('join_thread', (data) => {
    const threadId = String(data && data.threadId);
    socket.join(threadId);
    socket.emit('thread_joined', { threadId, seq: seqs.get(threadId) || 0 });
  });

  socket.on('message_send', (data) => {
    const threadId = String(data && data.threadId);
    const tempId = data && data.tempId;
    if (!socket.rooms.has(threadId)) {
      socket.emit('error', { event: 'message_send', code: 'not_joined', message: 'join the thread first', tempId });
      return;
    }
    const seq = (seqs.get(threadId) || 0) + 1;
    seqs.set(threadId, seq);
    const id = 'm_' + (++nextMessage);
    if (tempId !== undefined) {
      socket.emit('message_id_mapping', { threadId, tempId, realId: id, seq });
    }
    io.to(threadId).emit('message', {
      message: {
        id, seq, threadId, userId, content: data.content, contentType: data.contentType || 'text/plain',
        attachments: [], createdAt: new Date().toISOString(),
      },
    });
  });
});

server.listen(port, host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
