// Compile-only use of the JavaScript client's TypeScript declarations (clients/js/realtimehub.d.ts),
// checked with `tsc --noEmit --strict` by clients/e2e/typecheck.sh (part of scripts/test). Nothing
// here runs. The @ts-expect-error lines must stay errors: they prove the declarations are not `any`.
import RealtimeHubDefault, {
  RealtimeHub,
  RealtimeHubError,
  type CloseInfo,
  type ConnectedFrame,
  type JoinedFrame,
  type Member,
  type Message,
  type MessageFrame,
  type RealtimeHubOptions,
  type ReconnectingInfo,
  type SendResult,
  type ServerFrame,
  type WebSocketConstructor,
} from '../../js/realtimehub.js';

const options: RealtimeHubOptions = {
  reconnectBaseMs: 250,
  reconnectMaxMs: 10_000,
  maxReconnectAttempts: Infinity,
  heartbeatIntervalMs: 0,
  random: () => 0.5,
};
const hub = new RealtimeHub({ url: 'ws://127.0.0.1:3009', apiKey: 'rh_key', userId: 'alice' }, options);
const viaToken = new RealtimeHubDefault({ url: new URL('https://hub.example'), token: 'a.b.c' }, { getToken: async () => 'a.b.c' });
const fromGetToken = new RealtimeHub({}, { getToken: () => 'a.b.c' });

async function chat(): Promise<void> {
  const connected: ConnectedFrame = await hub.connect();
  const userId: string = connected.userId;
  const joined: JoinedFrame = await hub.join('general', { since: 10 });
  const recovered: boolean | undefined = joined.recovered;
  const members: Member[] = joined.members;

  const pending = hub.send('general', 'hello', { contentType: 'text/plain', attachments: [] });
  const tempId: string = pending.tempId;
  const sent: SendResult = await pending;
  const seq: number = sent.seq;

  const edited: Message = await hub.edit('general', sent.id, 'hello, all');
  const editedAt: string | undefined = edited.editedAt;
  const tombstone: Message = await hub.delete('general', sent.id);
  await hub.markRead('general', [sent.id]);
  await hub.markRead('general', sent.id);
  await hub.setPresence('away');
  const { delivered } = await hub.direct('bob', 'psst');
  const page: Message[] = await hub.history('general', { before: seq, limit: 50 });
  hub.typing('general');
  hub.stopTyping('general');
  await hub.leave('general');
  const last: number | null = hub.lastSeq('general');
  const rooms: string[] = hub.rooms();
  const queued: Array<{ tempId: string; room: string; content: string }> = hub.pending();
  hub.close();
  void [userId, recovered, members, tempId, editedAt, tombstone, delivered, page, last, rooms, queued];
}

// Listeners get the argument of their event.
hub
  .on('message', (m: MessageFrame) => console.log(m.seq, m.userId, m.content))
  .on('reconnecting', ({ attempt, delayMs }: ReconnectingInfo) => console.log(attempt, delayMs))
  .on('close', (info: CloseInfo) => console.log(info.code, info.willReconnect))
  .on('presence', (p) => {
    const status: 'online' | 'away' | 'busy' | 'offline' = p.status;
    void status;
  })
  .on('error', (err) => {
    const e: RealtimeHubError = err;
    console.log(e.code, e.event, e.tempId);
  })
  .once('typing', (t) => console.log(t.isTyping))
  .on('some-future-event', (anything) => console.log(anything));
hub.off('message').off('typing', () => {});

function describeFrame(frame: ServerFrame): string {
  switch (frame.type) {
    case 'message':
      return frame.content;
    case 'read_receipt':
      return frame.messageId;
    case 'error':
      return frame.code;
    default:
      return frame.type;
  }
}

const state: 'idle' | 'connecting' | 'open' | 'connected' | 'reconnecting' | 'closed' = hub.state;
const err = new RealtimeHubError('closed', 'the client was closed', { event: 'join' });

class NoopWS {
  readyState = 0;
  onopen: ((ev: any) => any) | null = null;
  onmessage: ((ev: { data: any }) => any) | null = null;
  onerror: ((ev: any) => any) | null = null;
  onclose: ((ev: { code: number; reason: string; wasClean: boolean }) => any) | null = null;
  constructor(readonly url: string) {}
  send(_data: string): void {}
  close(_code?: number, _reason?: string): void {}
}
const WS: WebSocketConstructor = NoopWS;
const custom = new RealtimeHub({ apiKey: 'k', userId: 'u' }, { WebSocket: WS, fetch: globalThis.fetch });

// What the declarations must refuse.
// @ts-expect-error an apiKey needs a userId
new RealtimeHub({ apiKey: 'k' });
// @ts-expect-error apiKey and token are exclusive
new RealtimeHub({ apiKey: 'k', userId: 'u', token: 't' });
// @ts-expect-error no such option
new RealtimeHub({ apiKey: 'k', userId: 'u' }, { reconectBaseMs: 1 });
// @ts-expect-error random returns a number
new RealtimeHub({ apiKey: 'k', userId: 'u' }, { random: () => 'x' });
// @ts-expect-error offline is the hub's alone
hub.setPresence('offline');
// @ts-expect-error a message frame has no isTyping
hub.on('message', (m) => m.isTyping);
// @ts-expect-error send resolves with a SendResult, not a string
const wrong: Promise<string> = hub.send('general', 'hi');

void [viaToken, fromGetToken, chat, describeFrame, state, err, custom, wrong];
