// TypeScript declarations for realtimehub.js, the RealtimeHub JavaScript client.
// The wire contract is docs/PROTOCOL.md in the hub's repository.

/** A user's status. `offline` is set by the hub when a user's last connection closes. */
export type Status = 'online' | 'away' | 'busy' | 'offline';
/** Statuses a client may set. */
export type SettableStatus = 'online' | 'away' | 'busy';

/** Error codes the hub sends in `error` frames. */
export type HubErrorCode = 'bad_request' | 'not_found' | 'forbidden' | 'not_joined' | 'too_large' | 'rate_limited' | 'internal';
/** Error codes the client itself produces. */
export type ClientErrorCode =
  /** close() was called while the request was pending. */
  | 'closed'
  /** The connection dropped before the hub answered a request that is not safe to repeat (delete, direct). */
  | 'disconnected'
  /** A WebSocket could not be opened (hub unreachable, refused apiKey/token or userId). */
  | 'connect_failed'
  /** The hub refused the apiKey (checked through REST after a failed handshake); final. */
  | 'unauthorized'
  /** maxReconnectAttempts reached; final. */
  | 'reconnect_failed'
  /** The request was made before connect() (or after close()). */
  | 'not_connected'
  /** The hub sent something that is not a JSON frame with a type. */
  | 'bad_frame'
  /** The WebSocket refused a write. */
  | 'send_failed'
  /** The room was left before its join completed. */
  | 'left'
  /** The signed token expired and there is no getToken option to refresh it; final. */
  | 'token_expired'
  /** The getToken option threw or returned something other than a non-empty string. */
  | 'token_failed';

/** The `event` of an error: the client frame type that failed, or null. */
export type ClientFrameType = 'join' | 'leave' | 'message' | 'presence' | 'typing' | 'read' | 'edit' | 'delete' | 'direct' | 'history' | 'ping';

export declare class RealtimeHubError extends Error {
  constructor(code: string, message: string, details?: { event?: string | null; tempId?: string; frame?: ErrorFrame; cause?: unknown });
  readonly name: 'RealtimeHubError';
  /** A hub code (`not_found`, `forbidden`, …) or a client code (`closed`, `unauthorized`, …). */
  readonly code: HubErrorCode | ClientErrorCode | (string & {});
  /** The client frame type the error is about, or null. */
  readonly event: ClientFrameType | (string & {}) | null;
  /** For a refused `message` or `direct`: its tempId. */
  readonly tempId?: string;
  /** The hub's `error` frame, when the error came from the hub. */
  readonly frame?: ErrorFrame;
}

// ------------------------------------------------------------------- frames

export interface Member {
  userId: string;
  status: Status;
}

/** A stored message as history and `message_update` carry it. */
export interface Message {
  id: string;
  /** Per room, from 1, gapless, in the order the hub accepted messages. */
  seq: number;
  room: string;
  userId: string;
  content: string;
  contentType: string;
  attachments: unknown[];
  /** RFC 3339 UTC with milliseconds. */
  createdAt: string;
  /** Present once edited. */
  editedAt?: string;
  /** Present (true) once deleted; content is then "" and attachments []. */
  deleted?: true;
}

export interface ConnectedFrame {
  type: 'connected';
  connectionId: string;
  userId: string;
}
export interface JoinedFrame {
  type: 'joined';
  room: string;
  /** The room's latest seq. */
  seq: number;
  members: Member[];
  /** Only when the join had `since`: false when too much was missed (the client pages history itself). */
  recovered?: boolean;
}
export interface LeftFrame {
  type: 'left';
  room: string;
}
/** A message in a joined room. Recovered (paged) messages may carry `editedAt` / `deleted`. */
export interface MessageFrame extends Message {
  type: 'message';
}
export interface MessageIdMappingFrame {
  type: 'message_id_mapping';
  room: string;
  tempId: string;
  realId: string;
  seq: number;
}
export interface MessageUpdateFrame {
  type: 'message_update';
  room: string;
  message: Message;
}
export interface UserJoinedFrame {
  type: 'user_joined';
  room: string;
  userId: string;
  status: Status;
}
export interface UserLeftFrame {
  type: 'user_left';
  room: string;
  userId: string;
}
export interface PresenceFrame {
  type: 'presence';
  userId: string;
  status: Status;
}
export interface TypingFrame {
  type: 'typing';
  room: string;
  userId: string;
  isTyping: boolean;
}
export interface ReadReceiptFrame {
  type: 'read_receipt';
  room: string;
  messageId: string;
  userId: string;
  readAt: string;
}
export interface DirectFrame {
  type: 'direct';
  id: string;
  from: string | null;
  to: string;
  content: string;
  createdAt: string;
}
export interface DirectSentFrame {
  type: 'direct_sent';
  id: string;
  to: string;
  tempId?: string;
  delivered: number;
}
export interface HistoryFrame {
  type: 'history';
  room: string;
  messages: Message[];
}
export interface RoomDeletedFrame {
  type: 'room_deleted';
  room: string;
}
export interface PongFrame {
  type: 'pong';
}
export interface ErrorFrame {
  type: 'error';
  event: string | null;
  code: HubErrorCode | (string & {});
  message: string;
  tempId?: string;
}

export type ServerFrame =
  | ConnectedFrame
  | JoinedFrame
  | LeftFrame
  | MessageFrame
  | MessageIdMappingFrame
  | MessageUpdateFrame
  | UserJoinedFrame
  | UserLeftFrame
  | PresenceFrame
  | TypingFrame
  | ReadReceiptFrame
  | DirectFrame
  | DirectSentFrame
  | HistoryFrame
  | RoomDeletedFrame
  | PongFrame
  | ErrorFrame;

export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** False after close(), with reconnect off, or when giving up. */
  willReconnect: boolean;
}
export interface ReconnectingInfo {
  /** 1 for the first retry after a drop. */
  attempt: number;
  /** Delay before this attempt: random in [0, min(reconnectMaxMs, reconnectBaseMs * 2^(attempt-1))). */
  delayMs: number;
}

/** Listener argument of each event. Every server frame type is an event; `error` gets a RealtimeHubError. */
export interface RealtimeHubEvents {
  open: void;
  close: CloseInfo;
  reconnecting: ReconnectingInfo;
  error: RealtimeHubError;
  connected: ConnectedFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  message: MessageFrame;
  message_id_mapping: MessageIdMappingFrame;
  message_update: MessageUpdateFrame;
  user_joined: UserJoinedFrame;
  user_left: UserLeftFrame;
  presence: PresenceFrame;
  typing: TypingFrame;
  read_receipt: ReadReceiptFrame;
  direct: DirectFrame;
  direct_sent: DirectSentFrame;
  history: HistoryFrame;
  room_deleted: RoomDeletedFrame;
  pong: PongFrame;
}
export type RealtimeHubEvent = keyof RealtimeHubEvents;

// ------------------------------------------------------------------- client

export type RealtimeHubConfig =
  | { url?: string | URL; apiKey: string; userId: string; token?: never }
  /**
   * A signed user token (HS256 JWT signed with the project's API key; docs/PROTOCOL.md §7.3),
   * sent as `?token=`. `userId`, if given, must equal the token's `sub`. `token` may be left
   * out when the `getToken` option provides one.
   */
  | { url?: string | URL; token?: string; userId?: string; apiKey?: never };

/** A WebSocket constructor as browsers, Node 22+ (or Node 20 with --experimental-websocket) and the `ws` package provide. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onerror: ((ev: any) => any) | null;
  onclose: ((ev: { code: number; reason: string; wasClean: boolean }) => any) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface RealtimeHubOptions {
  /** Reconnect when the connection drops (default true). */
  reconnect?: boolean;
  /** Backoff base in ms (default 500). */
  reconnectBaseMs?: number;
  /** Backoff cap in ms (default 30000). */
  reconnectMaxMs?: number;
  /** Give up after this many attempts in a row (default Infinity). */
  maxReconnectAttempts?: number;
  /** typing() sends `isTyping: true` at most this often (default 3000). */
  typingThrottleMs?: number;
  /** typing() sends `isTyping: false` after this long without a call (default 5000). */
  typingIdleMs?: number;
  /** Application ping interval in ms; 0 turns the heartbeat off (default 25000). */
  heartbeatIntervalMs?: number;
  /** A missing pong after this long drops and reconnects (default 10000). */
  heartbeatTimeoutMs?: number;
  /** Page size of history recovery after `recovered: false`, 1-1000 (default 1000). */
  historyPageLimit?: number;
  /** Frames larger than this are refused before sending, `too_large` (default 65536, the hub's default). */
  maxFrameBytes?: number;
  /** A message refused `rate_limited` is re-sent after this long (default 1000). */
  rateLimitRetryMs?: number;
  /** Random source in [0, 1) for the backoff jitter (default Math.random). */
  random?: () => number;
  /** WebSocket implementation (default globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** fetch implementation, used to tell a refused apiKey from an unreachable hub (default globalThis.fetch). */
  fetch?: typeof fetch;
  /**
   * Token mode: returns a fresh signed token; called before every connection attempt, so a
   * connection the hub closed for an expired token (1008) comes back with a new one.
   */
  getToken?: () => string | Promise<string>;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'connected' | 'reconnecting' | 'closed';

export interface SendResult {
  id: string;
  seq: number;
  room: string;
  tempId: string;
}
export interface SendPromise extends Promise<SendResult> {
  /** The tempId this message was sent with (for optimistic display). */
  readonly tempId: string;
}
export interface SendOptions {
  contentType?: string;
  attachments?: unknown[];
  /** Idempotency key, 1-128 characters (default: 128 random bits in hex). */
  tempId?: string;
}
export interface HistoryOptions {
  before?: number;
  after?: number;
  /** 1-1000, default 50. */
  limit?: number;
}
export interface DirectResult {
  id: string;
  to: string;
  delivered: number;
  tempId: string;
}

export declare class RealtimeHub {
  /**
   * @throws TypeError on a bad config or option, or when there is no WebSocket implementation.
   */
  constructor(config: RealtimeHubConfig, options?: RealtimeHubOptions);

  /** The user this client connects as (from the config, or from `connected`). */
  userId: string | null;
  /** The hub's id for the current connection. */
  connectionId: string | null;
  readonly state: ConnectionState;
  /** True once the hub's `connected` frame arrived on the current socket. */
  readonly connected: boolean;
  /** The status last set with setPresence (restored after a reconnect). */
  readonly status: SettableStatus;

  on<E extends RealtimeHubEvent>(event: E, listener: (arg: RealtimeHubEvents[E]) => void): this;
  on(event: string, listener: (arg: any) => void): this;
  off<E extends RealtimeHubEvent>(event: E, listener?: (arg: RealtimeHubEvents[E]) => void): this;
  off(event: string, listener?: (arg: any) => void): this;
  once<E extends RealtimeHubEvent>(event: E, listener: (arg: RealtimeHubEvents[E]) => void): this;
  once(event: string, listener: (arg: any) => void): this;

  /** Opens the connection and keeps it open. Resolves with `connected`. */
  connect(): Promise<ConnectedFrame>;
  /** Closes for good: no reconnect; pending promises reject with `closed`. */
  close(): void;

  /** Joins a room; rejoined with `since` after every reconnect. */
  join(room: string, options?: { since?: number }): Promise<JoinedFrame>;
  /** Leaves a room. */
  leave(room: string): Promise<void>;
  /** Sends a message; resolves once stored. Re-sent with the same tempId after a reconnect. */
  send(room: string, content: string, options?: SendOptions): SendPromise;
  /** Edits one of your messages; resolves with the updated message. */
  edit(room: string, messageId: string, content: string): Promise<Message>;
  /** Deletes one of your messages; resolves with the tombstone. */
  delete(room: string, messageId: string): Promise<Message>;
  /** Marks messages read; resolves once the hub accepted them. */
  markRead(room: string, messageIds: string | string[]): Promise<void>;
  /** Sets this user's status. */
  setPresence(status: SettableStatus): Promise<void>;
  /** Unicast to every connection of a user (not stored). */
  direct(to: string, content: string, options?: { tempId?: string }): Promise<DirectResult>;
  /** Stored messages, ascending by seq. */
  history(room: string, options?: HistoryOptions): Promise<Message[]>;
  /** Call on each keystroke: throttled `isTyping: true`, and `false` after typingIdleMs of quiet. */
  typing(room: string): void;
  /** Sends `isTyping: false` now if typing was announced. */
  stopTyping(room: string): void;

  /** Members of a joined room, sorted by userId, kept current from presence events. */
  members(room: string): Member[];
  /** Rooms joined (or being rejoined). */
  rooms(): string[];
  /** Last seq seen in a room, or null. */
  lastSeq(room: string): number | null;
  /** Messages sent and not yet acknowledged. */
  pending(): Array<{ tempId: string; room: string; content: string }>;
}

export default RealtimeHub;
