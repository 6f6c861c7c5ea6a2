// A complete RealtimeHub backend in one file (Node 18+, no packages): it verifies the
// X-RealtimeHub-Signature of every request, answers the access hook, and handles
// webhook events once each (deliveries are at least once: repeats carry the same id).
//
//   REALTIMEHUB_API_KEY=rh_... node examples/backend.mjs 8080
//   curl -X PATCH http://localhost:3009/api/v1/project -H "X-API-Key: $REALTIMEHUB_API_KEY" \
//     -H 'Content-Type: application/json' \
//     -d '{"accessHookUrl":"http://127.0.0.1:8080/access","webhookUrl":"http://127.0.0.1:8080/events"}'
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';

const apiKey = process.env.REALTIMEHUB_API_KEY;
if (!apiKey) throw new Error('set REALTIMEHUB_API_KEY to the project API key');
const port = Number(process.argv[2] ?? 8080);
const handled = new Set();

/** `t=UNIX_SECONDS,v1=HEX`: HMAC-SHA256 of `t.body` with the API key, at most 5 minutes old. */
function verified(header = '', body, maxAgeSeconds = 300) {
  const { t, v1 } = Object.fromEntries(header.split(',').map((kv) => kv.split('=')));
  if (!t || !v1 || Math.abs(Date.now() / 1000 - Number(t)) > maxAgeSeconds) return false;
  const expected = createHmac('sha256', apiKey).update(`${t}.`).update(body).digest('hex');
  return v1.length === expected.length && timingSafeEqual(Buffer.from(v1), Buffer.from(expected));
}

createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (!verified(req.headers['x-realtimehub-signature'], body)) return res.writeHead(401).end();
    const request = JSON.parse(body);
    if (request.type === 'access') {
      // Your rule here: rooms named staff-* are for users named staff-*.
      const allow = !request.room.startsWith('staff-') || request.userId.startsWith('staff-');
      const answer = allow ? { allow: true, cacheSeconds: 60 } : { allow: false, reason: 'staff only' };
      return res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(answer));
    }
    for (const event of request.events ?? []) {
      if (handled.has(event.id)) continue;
      handled.add(event.id);
      console.log(JSON.stringify(event)); // your handling here: store it, notify someone...
    }
    res.writeHead(204).end();
  });
}).listen(port, '127.0.0.1', () => console.log(`backend listening on http://127.0.0.1:${port}`));
