//! Socket.IO clients in the loop: Engine.IO v4 sessions at `/socket.io/`,
//! over HTTP long-polling, over WebSocket, and the upgrade from one to the
//! other.
//!
//! A session is what the core sees as one connection: its [`ConnId`] has
//! [`SESSION_BIT`] set in the index, so outputs for it are routed here rather
//! than to a socket. The session outlives the HTTP requests of long-polling
//! and survives the upgrade: its packets go to the parked poll while it
//! polls, and to its WebSocket once upgraded. The codecs are sans-IO
//! ([`crate::dialect`]); this module only moves their packets.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use super::*;
use crate::core::{frame_binary, frame_payload, frame_text, Credentials};
use crate::dialect::chatpulse::{self, Acks, Refused};
use crate::dialect::engineio::{self, Data, Packet as EioPacket};
use crate::dialect::socketio::{self, Kind};

/// Set in the index of a session's [`ConnId`]: above any socket's slab index.
pub(super) const SESSION_BIT: usize = 1 << 31;

/// Most binary attachments a packet may announce (the Chatpulse events carry
/// none: they are read and dropped).
const MAX_ATTACHMENTS: usize = 10;

/// Whether `id` names a Socket.IO session rather than a socket.
pub(super) fn is_session(id: ConnId) -> bool {
    id.index() & SESSION_BIT != 0
}

/// One Engine.IO session.
pub(super) struct Session {
    id: ConnId,
    sid: String,
    /// Credentials of the handshake request (query), used when `auth` lacks them.
    api_key: Option<String>,
    user_id: Option<String>,
    token: Option<String>,
    origin: Option<String>,
    /// The `/` namespace was joined: the core knows this session.
    connected: bool,
    acks: Acks,
    /// Long-polling: packets waiting for the next poll, joined by the separator.
    queue: Vec<u8>,
    /// A poll waiting for packets (the HTTP connection that sent it).
    poll: Option<ConnId>,
    /// The WebSocket that carries the session, once upgraded (or from the start).
    ws: Option<ConnId>,
    /// A WebSocket probing for the upgrade.
    probing: Option<ConnId>,
    next_ping: Instant,
    pong_due: Option<Instant>,
    /// Binary attachments still to arrive for a refused binary packet.
    skip_binary: usize,
    next_request: u64,
    /// When the session opened (for the connect timeout).
    opened: Instant,
    /// The address that opened it (sessions per address are capped).
    peer: std::net::IpAddr,
    /// `--socketio-conformance`: the namespaces joined.
    namespaces: Vec<String>,
    /// `--socketio-conformance`: a binary packet waiting for its attachments.
    binary_echo: Option<BinaryEcho>,
}

/// The echo of a binary packet, sent once its attachments have arrived.
struct BinaryEcho {
    header: String,
    remaining: usize,
    attachments: Vec<Vec<u8>>,
}

/// Every open session.
#[derive(Default)]
pub(super) struct Sessions {
    slab: Slab<Session>,
    by_sid: HashMap<String, usize>,
    generation: u32,
    /// Sessions with packets queued for a parked poll.
    dirty: Vec<usize>,
    /// The earliest heartbeat or connect deadline of any session.
    pub(super) next_deadline: Option<Instant>,
    /// `--socketio-conformance`: packets sent a moment later, in a write of
    /// their own (the test suite reads the `auth` event only after it has
    /// read the `CONNECT` answer, one WebSocket message at a time).
    deferred: Vec<(ConnId, String)>,
    /// When the deferred packets go.
    pub(super) deferred_at: Option<Instant>,
    /// Open sessions per peer address.
    per_ip: HashMap<std::net::IpAddr, usize>,
}

impl Sessions {
    fn forget_peer(&mut self, peer: std::net::IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&peer);
            }
        }
    }

    fn wake_by(&mut self, at: Instant) {
        self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
    }

    fn get(&mut self, id: ConnId) -> Option<&mut Session> {
        self.slab.get_mut(id.index() & !SESSION_BIT).filter(|s| s.id == id)
    }
}

/// A random id for a session or a socket.
fn random_id() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut bytes = [0u8; 15];
    OsEntropy.fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Engine.IO's error answer to a bad request: `{"code", "message"}`.
fn eio_error(status: u16, code: u8, message: &str) -> Response {
    let mut r = Response::json(status, &serde_json::json!({"code": code, "message": message}));
    r.close = status >= 500;
    r
}

fn text_response(body: Vec<u8>) -> Response {
    let mut r = Response::empty(200);
    r.body = body;
    r.content_type = "text/plain; charset=UTF-8";
    r
}

impl Server {
    fn sio_open_packet(&self, sid: &str, upgrades: &[&str]) -> String {
        let l = &self.limits;
        let json = engineio::open_payload(
            sid,
            upgrades,
            l.socketio_ping_interval.as_millis() as u64,
            l.socketio_ping_timeout.as_millis() as u64,
            l.max_body_bytes,
        );
        format!("0{json}")
    }

    /// A new session for a handshake request that came on connection `i`.
    fn sio_new_session(&mut self, i: usize, req: &Request, now: Now) -> Result<usize, Response> {
        if self.sio.slab.len() >= self.limits.max_socketio_sessions {
            return Err(eio_error(503, 3, "too many Socket.IO sessions"));
        }
        let Some(peer) = self.conns.get(i).map(|c| c.peer.ip()) else {
            return Err(eio_error(400, 3, "Bad request"));
        };
        let from_peer = self.sio.per_ip.entry(peer).or_insert(0);
        if *from_peer >= self.limits.max_connections_per_ip {
            let mut refusal = eio_error(429, 3, "too many Socket.IO sessions from this address");
            refusal.close = true;
            return Err(refusal);
        }
        *from_peer += 1;
        self.sio.generation = self.sio.generation.wrapping_add(1);
        let entry = self.sio.slab.vacant_entry();
        let ix = entry.key();
        let sid = random_id();
        let owned = |name: &str| req.query_param(name).map(str::to_string);
        entry.insert(Session {
            id: ConnId::new(ix | SESSION_BIT, self.sio.generation),
            sid: sid.clone(),
            api_key: owned("apiKey").or_else(|| req.header("x-api-key").map(str::to_string)),
            user_id: owned("userId"),
            token: owned("token"),
            origin: req.header("origin").map(str::to_string),
            connected: false,
            acks: Acks::default(),
            queue: Vec::new(),
            poll: None,
            ws: None,
            probing: None,
            next_ping: now.mono + self.limits.socketio_ping_interval,
            pong_due: None,
            skip_binary: 0,
            next_request: 0,
            opened: now.mono,
            peer,
            namespaces: Vec::new(),
            binary_echo: None,
        });
        self.sio.wake_by(now.mono + self.limits.socketio_ping_interval.min(self.limits.socketio_connect_timeout));
        self.sio.by_sid.insert(sid, ix);
        Ok(ix)
    }

    /// Checks `EIO` and `transport`; the session named by `sid`, if any.
    fn sio_check(&self, req: &Request, transport: &str) -> Result<Option<usize>, Response> {
        if req.query_param("EIO") != Some("4") {
            return Err(eio_error(400, 5, "Unsupported protocol version (EIO=4 is served)"));
        }
        if req.query_param("transport") != Some(transport) {
            return Err(eio_error(400, 0, "Transport unknown"));
        }
        match req.query_param("sid") {
            None => Ok(None),
            Some(sid) => match self.sio.by_sid.get(sid) {
                Some(&ix) => Ok(Some(ix)),
                None => Err(eio_error(400, 1, "Session ID unknown")),
            },
        }
    }

    /// Answers an HTTP request of the long-polling transport now.
    fn sio_respond(&mut self, i: usize, req: &Request, response: Response, now: Now) {
        let response = self.hub.with_cors(req, response);
        let Some(conn) = self.conns.get_mut(i) else { return };
        conn.awaiting.push_back(req.keep_alive());
        let to = conn.id;
        self.deliver(Output::Response { to, response }, now);
    }

    /// An HTTP request to `/socket.io/` that is not a WebSocket upgrade.
    /// Called only when no earlier response on the connection is pending.
    pub(super) fn sio_http(&mut self, i: usize, req: Request, now: Now) {
        if req.method == "OPTIONS" {
            return self.sio_respond(i, &req, Response::empty(204), now);
        }
        let ix = match self.sio_check(&req, "polling") {
            Ok(ix) => ix,
            Err(response) => return self.sio_respond(i, &req, response, now),
        };
        match (req.method.as_str(), ix) {
            ("GET", None) => match self.sio_new_session(i, &req, now) {
                Ok(ix) => {
                    let sid = self.sio.slab[ix].sid.clone();
                    let open = self.sio_open_packet(&sid, &["websocket"]);
                    log::debug!(sid:% = sid; "socket.io session opened (polling)");
                    self.sio_respond(i, &req, text_response(open.into_bytes()), now);
                }
                Err(response) => self.sio_respond(i, &req, response, now),
            },
            ("GET", Some(ix)) => {
                let session = &self.sio.slab[ix];
                let id = session.id;
                if session.ws.is_some() {
                    // A poll after the upgrade is refused; the session goes on.
                    return self.sio_respond(i, &req, eio_error(400, 3, "Bad request"), now);
                }
                if session.poll.is_some() {
                    // A second poll at once: the reference server closes the session.
                    self.sio_respond(i, &req, eio_error(400, 3, "Bad request"), now);
                    return self.sio_close(id, now, Ending::Error);
                }
                if session.queue.is_empty() && session.probing.is_some() {
                    // Upgrading: polls are answered at once, so the client
                    // can pause the transport and switch.
                    self.sio_respond(i, &req, text_response(b"6".to_vec()), now);
                } else if session.queue.is_empty() {
                    let Some(conn) = self.conns.get_mut(i) else { return };
                    conn.awaiting.push_back(req.keep_alive());
                    conn.poll_parked = Some(Box::new(req));
                    self.sio.slab[ix].poll = Some(conn.id);
                } else {
                    let body = std::mem::take(&mut self.sio.slab[ix].queue);
                    self.sio_respond(i, &req, text_response(body), now);
                }
            }
            ("POST", None) => self.sio_respond(i, &req, eio_error(400, 1, "Session ID unknown"), now),
            ("POST", Some(ix)) => {
                let id = self.sio.slab[ix].id;
                let packets: Vec<(String, bool)> = match engineio::decode_payload(&req.body, 1024) {
                    Ok(packets) => packets.iter().map(|p| owned_packet(p)).collect(),
                    Err(e) => {
                        log::debug!(conn:% = id; "bad polling payload: {e}");
                        self.sio_respond(i, &req, eio_error(400, 3, &e.to_string()), now);
                        return self.sio_close(id, now, Ending::Error);
                    }
                };
                let mut answer = Response::empty(200);
                answer.body = b"ok".to_vec();
                answer.content_type = "text/html";
                self.sio_respond(i, &req, answer, now);
                let writes = self.hub.pending_writes();
                for (text, binary) in packets {
                    if self.sio.get(id).is_none() {
                        break;
                    }
                    self.sio_packet(id, &text, binary, now);
                }
                if self.hub.pending_writes() > writes {
                    // A writer like any other: not read while the store is behind.
                    if let Some(conn) = self.conns.get_mut(i) {
                        conn.writer = true;
                    }
                    self.park_if_store_behind(i);
                }
            }
            _ => self.sio_respond(i, &req, eio_error(400, 2, "Bad handshake method"), now),
        }
    }

    /// A WebSocket upgrade request to `/socket.io/`: a new session over
    /// WebSocket, or the probe of a polling session's upgrade.
    pub(super) fn sio_upgrade(&mut self, i: usize, req: Request, now: Now) {
        let ix = match self.sio_check(&req, "websocket") {
            Ok(ix) => ix,
            Err(response) => return self.write_response(i, &self.hub.with_cors(&req, response), false),
        };
        let accept = match http::check_upgrade(&req) {
            Ok(accept) => accept,
            Err(response) => return self.write_response(i, &response, false),
        };
        if let Some(ix) = ix {
            if self.sio.slab[ix].ws.is_some() || self.sio.slab[ix].probing.is_some() {
                // Upgraded or upgrading already: this WebSocket is accepted
                // and closed at once, as the reference server does.
                let Some(id) = self.become_websocket(i, &accept, false, now) else { return };
                if let Some(conn) = live(&mut self.conns, id) {
                    close_ws(conn, 1000, "session already upgraded", &mut self.bytes_in);
                }
                self.touched.push(i);
                return;
            }
            let Some(id) = self.become_websocket(i, &accept, false, now) else { return };
            self.sio.slab[ix].probing = Some(id);
            self.conns[i].sio = Some(ix);
        } else {
            let ix = match self.sio_new_session(i, &req, now) {
                Ok(ix) => ix,
                Err(response) => return self.write_response(i, &response, false),
            };
            let Some(id) = self.become_websocket(i, &accept, false, now) else {
                let session = self.sio.slab.remove(ix);
                self.sio.by_sid.remove(&session.sid);
                self.sio.forget_peer(session.peer);
                return;
            };
            self.conns[i].sio = Some(ix);
            self.sio.slab[ix].ws = Some(id);
            let open = self.sio_open_packet(&self.sio.slab[ix].sid.clone(), &[]);
            self.enqueue(id, &frame_text(open.as_bytes()), now);
        }
        self.read_ws(i, now);
    }

    /// A text frame on a WebSocket that carries (or probes) a session.
    pub(super) fn sio_ws_text(&mut self, i: usize, ix: usize, text: &str, now: Now) {
        let conn_id = self.conns[i].id;
        let Some(session) = self.sio.slab.get_mut(ix) else { return };
        if session.ws == Some(conn_id) {
            let id = session.id;
            return self.sio_packet(id, text, false, now);
        }
        if session.probing != Some(conn_id) {
            return;
        }
        match text {
            "2probe" => {
                // The client pauses polling before it sends `5`: a waiting
                // poll is answered with a noop so that it can.
                let poll = session.poll.take();
                self.enqueue(conn_id, &frame_text(b"3probe"), now);
                if let Some(poll) = poll {
                    self.sio_answer_poll(poll, b"6".to_vec(), now);
                }
            }
            "5" => {
                session.probing = None;
                session.ws = Some(conn_id);
                let queued = std::mem::take(&mut session.queue);
                let poll = session.poll.take();
                log::debug!(sid:% = session.sid; "socket.io session upgraded to websocket");
                if let Some(poll) = poll {
                    self.sio_answer_poll(poll, b"6".to_vec(), now);
                }
                for packet in queued.split(|&b| b == engineio::SEPARATOR).filter(|p| !p.is_empty()) {
                    self.enqueue(conn_id, &frame_text(packet), now);
                }
            }
            _ => log::debug!(conn:% = conn_id; "unexpected packet while probing: {text:?}"),
        }
    }

    /// A binary frame on a session's WebSocket: an attachment of a refused
    /// binary packet, dropped.
    pub(super) fn sio_ws_binary(&mut self, i: usize, ix: usize, data: Vec<u8>, now: Now) {
        let conn_id = self.conns[i].id;
        let Some(session) = self.sio.slab.get_mut(ix).filter(|s| s.ws == Some(conn_id)) else { return };
        let id = session.id;
        if let Some(echo) = &mut session.binary_echo {
            echo.attachments.push(data);
            echo.remaining -= 1;
            if echo.remaining == 0 {
                if let Some(echo) = session.binary_echo.take() {
                    self.enqueue(conn_id, &frame_text(echo.header.as_bytes()), now);
                    for attachment in echo.attachments {
                        self.enqueue(conn_id, &frame_binary(&attachment), now);
                    }
                }
            }
            return;
        }
        if session.skip_binary == 0 {
            log::debug!(conn:% = id; "binary frame without a binary packet: closing the session");
            return self.sio_close(id, now, Ending::Error);
        }
        session.skip_binary -= 1;
    }

    /// An HTTP connection holding a parked poll is gone: its session may poll again.
    pub(super) fn sio_poll_gone(&mut self, conn_id: ConnId) {
        for (_, session) in self.sio.slab.iter_mut() {
            if session.poll == Some(conn_id) {
                session.poll = None;
            }
        }
    }

    /// A WebSocket that carried or probed session `ix` is gone.
    pub(super) fn sio_ws_gone(&mut self, ix: usize, conn_id: ConnId, now: Now) {
        let Some(session) = self.sio.slab.get_mut(ix) else { return };
        if session.probing == Some(conn_id) {
            session.probing = None;
        } else if session.ws == Some(conn_id) {
            let id = session.id;
            session.ws = None;
            self.sio_close(id, now, Ending::Error);
        }
    }

    /// One Engine.IO packet from the client, whichever transport carried it.
    fn sio_packet(&mut self, id: ConnId, text: &str, binary: bool, now: Now) {
        let Some(session) = self.sio.get(id) else { return };
        session.pong_due = None;
        if binary {
            session.skip_binary = session.skip_binary.saturating_sub(1);
            return;
        }
        match engineio::decode_text(text) {
            Ok(EioPacket::Pong(_)) | Ok(EioPacket::Noop) => {}
            Ok(EioPacket::Ping(data)) => {
                let pong = format!("3{data}");
                self.sio_send(id, &pong, None, now);
            }
            Ok(EioPacket::Message(Data::Text(packet))) => self.sio_message(id, packet, now),
            Ok(EioPacket::Message(Data::Binary(_))) => {}
            Ok(EioPacket::Close) => self.sio_close(id, now, Ending::Asked),
            Ok(packet) => {
                log::debug!(conn:% = id; "unexpected Engine.IO packet {packet:?}: closing the session");
                self.sio_close(id, now, Ending::Error);
            }
            Err(e) => {
                log::debug!(conn:% = id; "bad Engine.IO packet: {e}: closing the session");
                self.sio_close(id, now, Ending::Error);
            }
        }
    }

    /// One Socket.IO packet.
    fn sio_message(&mut self, id: ConnId, text: &str, now: Now) {
        if text.len() > self.limits.max_message_bytes {
            log::debug!(conn:% = id; "Socket.IO packet of {} bytes: closing the session", text.len());
            self.hub.record_disconnect(Disconnect::TooLarge);
            return self.sio_close(id, now, Ending::Error);
        }
        let packet = match socketio::decode(text, MAX_ATTACHMENTS) {
            Ok(packet) => packet,
            Err(e) => {
                log::debug!(conn:% = id; "bad Socket.IO packet: {e}: closing the session");
                self.hub.record_disconnect(Disconnect::Protocol);
                return self.sio_close(id, now, Ending::Error);
            }
        };
        if self.sio_conformance {
            return self.sio_conformance_packet(id, &packet, now);
        }
        let Some(session) = self.sio.get(id) else { return };
        match packet.kind {
            Kind::Connect if packet.namespace != "/" => {
                let mut out = vec![b'4'];
                let data = serde_json::json!({"message": "Invalid namespace"}).to_string();
                socketio::encode(Kind::ConnectError, packet.namespace, None, 0, Some(&data), &mut out);
                self.sio_send(id, &String::from_utf8_lossy(&out), None, now);
            }
            Kind::Connect if session.connected => {}
            Kind::Connect => {
                let auth: Map<String, Value> = match packet.data.map(|d| serde_json::from_str::<Value>(d.get())) {
                    Some(Ok(Value::Object(map))) => map,
                    _ => Map::new(),
                };
                let field = |name: &str| chatpulse::auth_field(&auth, name);
                let (token, api_key, user_id) = (
                    field("token").or_else(|| session.token.clone()),
                    field("apiKey").or_else(|| session.api_key.clone()),
                    field("userId").or_else(|| session.user_id.clone()),
                );
                let credentials = Credentials {
                    token: token.as_deref(),
                    api_key: api_key.as_deref(),
                    user_id: user_id.as_deref(),
                    origin: session.origin.as_deref(),
                };
                match self.hub.authorize(&credentials, now) {
                    Ok(authorized) => {
                        session.connected = true;
                        self.hub.handle_ws_open(id, authorized, now);
                        // Connection-state recovery: the client presents the
                        // session id (`pid`) and the last offset it received.
                        // `sid` first, as the reference server writes it (ids are URL-safe).
                        let mut answer = format!("{{\"sid\":\"{}\"", random_id());
                        if self.sio_recovery {
                            let text = |name: &str| match auth.get(name) {
                                Some(Value::String(s)) if s.len() <= 64 => Some(s.as_str()),
                                _ => None,
                            };
                            let (pid, offset) = (text("pid"), text("offset"));
                            let resumed = pid.filter(|pid| self.hub.resume(id, pid, offset, now));
                            let pid = match resumed {
                                Some(pid) => pid.to_string(),
                                None => {
                                    let pid = random_id();
                                    self.hub.make_resumable(id, &pid);
                                    pid
                                }
                            };
                            answer.push_str(&format!(",\"pid\":\"{pid}\""));
                        }
                        answer.push('}');
                        self.sio_send(id, &format!("40{answer}"), None, now);
                    }
                    Err((_, code, message)) => {
                        self.hub.record_refused();
                        let data = serde_json::json!({"message": message, "data": {"code": code}}).to_string();
                        self.sio_send(id, &format!("44{data}"), None, now);
                    }
                }
            }
            Kind::Disconnect => {
                // The client left `/`: the hub forgets it; Engine.IO goes on
                // (the client may CONNECT again or close the transport).
                if session.connected && packet.namespace == "/" {
                    session.connected = false;
                    session.acks = Acks::default();
                    // Left on purpose: nothing to recover.
                    self.hub.forget_resumable(id);
                    self.hub.handle_ws_closed(id, now);
                }
            }
            Kind::Event | Kind::BinaryEvent if !session.connected => {
                log::debug!(conn:% = id; "event before CONNECT: closing the session");
                self.sio_close(id, now, Ending::Error);
            }
            Kind::BinaryEvent => {
                session.skip_binary = packet.attachments;
                let name = packet.event().map(|(name, _)| name).unwrap_or_default();
                let message = "binary arguments are not supported; send JSON";
                self.sio_refuse(id, packet.id, Refused::new(&name, "bad_request", message), now);
            }
            Kind::Event => {
                let Some((name, args)) = packet.event() else {
                    let message = "an event is a non-empty array starting with its name";
                    return self.sio_refuse(id, packet.id, Refused::new("", "bad_request", message), now);
                };
                match chatpulse::decode_event(&name, &args) {
                    Ok(event) => {
                        if !session.acks.start(event.kind, packet.id) {
                            let message = "too many requests waiting for an answer";
                            return self.sio_refuse(id, packet.id, Refused::new(&name, "rate_limited", message), now);
                        }
                        session.next_request += 1;
                        let request = session.next_request;
                        self.hub.handle_request(id, &event.json, Some(request), now);
                    }
                    Err(refused) => self.sio_refuse(id, packet.id, refused, now),
                }
            }
            Kind::BinaryAck => session.skip_binary = packet.attachments,
            Kind::Ack | Kind::ConnectError => {}
        }
    }

    /// Refuses an event the core never saw: `error` and a failed ack.
    fn sio_refuse(&mut self, id: ConnId, ack: Option<u64>, refused: Refused, now: Now) {
        let Refused { event, code, message, temp_id } = refused;
        self.sio_send(id, &chatpulse::error_event(&event, code, &message, temp_id.as_deref()), None, now);
        if let Some(ack) = ack {
            self.sio_send(id, &chatpulse::ack_packet(ack, Err((code, &message))), None, now);
        }
    }

    /// Queues one packet for a session: on its WebSocket (framed once:
    /// `framed` is the shared frame of a broadcast), or for its next poll.
    fn sio_send(&mut self, id: ConnId, packet: &str, framed: Option<&[u8]>, now: Now) {
        let limit = self.limits.max_outbound_bytes;
        let Some(session) = self.sio.get(id) else { return };
        if let Some(ws) = session.ws {
            match framed {
                Some(frame) => self.enqueue(ws, frame, now),
                None => self.enqueue(ws, &frame_text(packet.as_bytes()), now),
            }
            return;
        }
        if !session.queue.is_empty() && session.queue.len() + packet.len() > limit {
            log::debug!(conn:% = id; "socket.io session does not poll its backlog: closing");
            self.hub.record_disconnect(Disconnect::SlowConsumer);
            return self.sio_close(id, now, Ending::Error);
        }
        if !session.queue.is_empty() {
            session.queue.push(engineio::SEPARATOR);
        }
        session.queue.extend_from_slice(packet.as_bytes());
        if session.poll.is_some() {
            self.sio.dirty.push(id.index() & !SESSION_BIT);
        }
    }

    /// Answers a parked poll, and lets its connection read on.
    fn sio_answer_poll(&mut self, poll: ConnId, body: Vec<u8>, now: Now) {
        let Some(conn) = live(&mut self.conns, poll) else { return };
        let Some(req) = conn.poll_parked.take() else { return };
        let response = self.hub.with_cors(&req, text_response(body));
        self.deliver(Output::Response { to: poll, response }, now);
        self.again.push(poll.index());
    }

    /// End of the iteration: every parked poll with packets queued is answered,
    /// all of them in one body.
    pub(super) fn sio_flush_polls(&mut self, now: Now) {
        for ix in std::mem::take(&mut self.sio.dirty) {
            let Some(session) = self.sio.slab.get_mut(ix) else { continue };
            if session.queue.is_empty() {
                continue;
            }
            let Some(poll) = session.poll.take() else { continue };
            let body = std::mem::take(&mut session.queue);
            self.sio_answer_poll(poll, body, now);
        }
    }

    /// An output of the core for a session.
    pub(super) fn sio_deliver(&mut self, output: Output, now: Now) {
        match output {
            Output::Frame { to, wire } => {
                let translated = chatpulse::translate(frame_payload(&wire));
                let Some(session) = self.sio.get(to) else { return };
                if let Some((native, result)) = translated.reply {
                    session.acks.answer(native, result);
                }
                if let Some(packet) = translated.packet {
                    self.sio_send(to, &packet, None, now);
                }
            }
            Output::Done { to, error, .. } => {
                let Some(session) = self.sio.get(to) else { return };
                let error = error.as_ref().map(|(code, message)| (*code, message.as_str()));
                if let Some(ack) = session.acks.done(error) {
                    self.sio_send(to, &ack, None, now);
                }
            }
            Output::Close { to, code, reason } => {
                log::debug!(conn:% = to; "socket.io session closed by the hub: {code} {reason}");
                self.sio_close(to, now, Ending::Error);
            }
            Output::Broadcast { .. }
            | Output::RoomScoped { .. }
            | Output::Relay { .. }
            | Output::Response { .. }
            | Output::Outbound(_) => {}
        }
    }

    /// Delivers a broadcast to its Socket.IO recipients: translated and
    /// framed once, the same bytes for every one of them. `live`: part of a
    /// room's stream (messages carry their recovery offset).
    pub(super) fn sio_broadcast(&mut self, to: &[ConnId], wire: &[u8], live: bool, now: Now) {
        let translated = if live && self.sio_recovery {
            chatpulse::translate_live(frame_payload(wire))
        } else {
            chatpulse::translate(frame_payload(wire))
        };
        if let Some((native, result)) = translated.reply {
            // An answer sent as a broadcast to its one requester (`left`).
            for &id in to {
                if let Some(session) = self.sio.get(id) {
                    session.acks.answer(native, result.clone());
                }
            }
        }
        let Some(packet) = translated.packet else { return };
        let framed: Rc<[u8]> = frame_text(packet.as_bytes());
        for &id in to {
            self.sio_send(id, &packet, Some(&framed), now);
        }
    }

    /// Ends a session: the core is told, its poll answered (`6` when the
    /// client asked, else `1`), its WebSocket closed.
    pub(super) fn sio_close(&mut self, id: ConnId, now: Now, ending: Ending) {
        let ix = id.index() & !SESSION_BIT;
        if self.sio.get(id).is_none() {
            return;
        }
        let session = self.sio.slab.remove(ix);
        self.sio.by_sid.remove(&session.sid);
        self.sio.forget_peer(session.peer);
        if session.connected {
            self.hub.handle_ws_closed(id, now);
        }
        if let Some(poll) = session.poll {
            let packet = if ending == Ending::Asked { b"6".to_vec() } else { b"1".to_vec() };
            self.sio_answer_poll(poll, packet, now);
        }
        for ws in [session.ws, session.probing].into_iter().flatten() {
            if let Some(conn) = live(&mut self.conns, ws) {
                conn.sio = None;
                close_ws(conn, 1000, "session closed", &mut self.bytes_in);
                self.touched.push(ws.index());
                self.mark_dirty(ws.index());
            }
        }
        log::debug!(sid:% = session.sid; "socket.io session closed");
    }

    /// Heartbeats: pings every `pingInterval`; a session that does not
    /// answer (or, polling, come back) within `pingTimeout` is closed, and so
    /// is one that sends no `CONNECT` within the connect timeout. Runs when
    /// the earliest of those deadlines is due.
    pub(super) fn sio_sweep(&mut self, now: Now) {
        if self.sio.next_deadline.is_none_or(|d| now.mono < d) {
            return;
        }
        let limits = &self.limits;
        let mut expired = Vec::new();
        let mut ping = Vec::new();
        let mut next: Option<Instant> = None;
        for (_, session) in self.sio.slab.iter_mut() {
            let connect_by = (!session.connected && session.namespaces.is_empty())
                .then(|| session.opened + limits.socketio_connect_timeout);
            if session.pong_due.is_some_and(|due| now.mono >= due) || connect_by.is_some_and(|by| now.mono >= by) {
                expired.push(session.id);
                continue;
            }
            if session.pong_due.is_none() && now.mono >= session.next_ping {
                session.next_ping = now.mono + limits.socketio_ping_interval;
                session.pong_due = Some(now.mono + limits.socketio_ping_timeout);
                ping.push(session.id);
            }
            let due = session.pong_due.unwrap_or(session.next_ping);
            let due = connect_by.map_or(due, |by| due.min(by));
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        self.sio.next_deadline = next;
        for id in ping {
            self.sio_send(id, "2", None, now);
        }
        for id in expired {
            log::debug!(conn:% = id; "socket.io session missed its ping or connect timeout");
            self.hub.record_disconnect(Disconnect::Idle);
            self.sio_close(id, now, Ending::Error);
        }
    }

    /// Sends the deferred packets once due.
    pub(super) fn sio_send_deferred(&mut self, now: Now) {
        if self.sio.deferred_at.is_none_or(|at| now.mono < at) {
            return;
        }
        self.sio.deferred_at = None;
        for (id, packet) in std::mem::take(&mut self.sio.deferred) {
            self.sio_send(id, &packet, None, now);
        }
    }

    /// `--socketio-conformance`: the reference server of the Socket.IO
    /// protocol test suite. `/` and `/custom` may be joined (answered with
    /// an `auth` event carrying the handshake payload); `message` is echoed
    /// as `message-back` and `message-with-ack` acknowledged with its
    /// arguments, binary attachments included. The hub never sees these
    /// sessions.
    fn sio_conformance_packet(&mut self, id: ConnId, packet: &socketio::Packet<'_>, now: Now) {
        let Some(session) = self.sio.get(id) else { return };
        let ns = packet.namespace;
        let prefix = if ns == "/" { String::new() } else { format!("{ns},") };
        let joined = session.namespaces.iter().any(|n| n == ns);
        match packet.kind {
            Kind::Connect if ns == "/" || ns == "/custom" => {
                if !joined {
                    session.namespaces.push(ns.to_string());
                }
                let auth = packet.data.map_or("{}", |d| d.get());
                let answer = format!("40{prefix}{}", serde_json::json!({"sid": random_id()}));
                let auth_event = format!("42{prefix}[\"auth\",{auth}]");
                self.sio_send(id, &answer, None, now);
                self.sio.deferred.push((id, auth_event));
                self.sio.deferred_at.get_or_insert(now.mono + Duration::from_millis(5));
            }
            Kind::Connect => {
                let data = serde_json::json!({"message": "Invalid namespace"});
                self.sio_send(id, &format!("44{prefix}{data}"), None, now);
            }
            Kind::Disconnect => session.namespaces.retain(|n| n != ns),
            Kind::Event | Kind::BinaryEvent if joined => {
                let Some((name, args)) = packet.event() else { return self.sio_close(id, now, Ending::Error) };
                let args: Vec<&str> = args.iter().map(|a| a.get()).collect();
                let binary = packet.kind == Kind::BinaryEvent;
                let count = if binary { format!("{}-", packet.attachments) } else { String::new() };
                let reply = match (name.as_str(), packet.id) {
                    ("message", _) => {
                        let mut list = vec!["\"message-back\""];
                        list.extend(args);
                        Some(format!("4{}{count}{prefix}[{}]", if binary { 5 } else { 2 }, list.join(",")))
                    }
                    ("message-with-ack", Some(ack)) => {
                        Some(format!("4{}{count}{prefix}{ack}[{}]", if binary { 6 } else { 3 }, args.join(",")))
                    }
                    _ => None,
                };
                match reply {
                    Some(header) if binary && packet.attachments > 0 => {
                        session.binary_echo =
                            Some(BinaryEcho { header, remaining: packet.attachments, attachments: Vec::new() });
                    }
                    Some(reply) => self.sio_send(id, &reply, None, now),
                    None if binary => session.skip_binary = packet.attachments,
                    None => {}
                }
            }
            Kind::Event | Kind::BinaryEvent => self.sio_close(id, now, Ending::Error),
            Kind::BinaryAck => session.skip_binary = packet.attachments,
            Kind::Ack | Kind::ConnectError => {}
        }
    }
}

/// Why a session ends: the client asked (Engine.IO `close`), or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    Asked,
    Error,
}

/// A packet of a polling payload as the text it would have over WebSocket,
/// so both transports share one path (binary packets are only counted).
fn owned_packet(packet: &EioPacket<'_>) -> (String, bool) {
    if packet.is_binary() {
        return (String::new(), true);
    }
    let mut out = Vec::new();
    engineio::encode(packet, false, &mut out);
    (String::from_utf8_lossy(&out).into_owned(), false)
}
