//! Pusher clients in the loop: WebSockets at `/app/{appKey}` speaking
//! Pusher protocol 7. A Pusher connection is an ordinary WebSocket of the
//! shell with a [`PusherConn`]; the core sees it as a connection without a
//! user until a presence subscription names one. Subscriptions are core
//! joins ([`Hub::subscribe`]) with the channel's rules; the codec is
//! [`crate::dialect::pusher`].

use std::collections::HashMap;
use std::rc::Rc;

use super::*;
use crate::core::{frame_payload, frame_text, JoinOptions};
use crate::dialect::pusher::{self as codec, ChannelKind, ClientMessage, Translated};

/// What the shell keeps of a Pusher connection.
pub(super) struct PusherConn {
    socket_id: String,
    /// Subscriptions the core is deciding: request id → channel.
    pending: HashMap<u64, String>,
    next_request: u64,
    /// Client events in the current one-second window: (window start, count).
    client_events: (Instant, u32),
}

/// The app key of a Pusher WebSocket path (`/app/{key}`).
pub(super) fn app_key_of(path: &str) -> Option<&str> {
    path.strip_prefix("/app/").filter(|k| !k.is_empty() && !k.contains('/'))
}

/// A failure's HTTP-like status in `pusher:subscription_error`.
fn status_of(code: &str) -> u16 {
    match code {
        "forbidden" => 403,
        "not_found" => 404,
        "rate_limited" => 429,
        "unavailable" | "internal" => 503,
        _ => 400,
    }
}

impl Server {
    /// A WebSocket upgrade at `/app/{appKey}`: an unknown key or an old
    /// protocol is told with `pusher:error` and the close code pusher-js
    /// expects; otherwise `pusher:connection_established`.
    pub(super) fn pusher_upgrade(&mut self, i: usize, req: Request, now: Now) {
        let accept = match http::check_upgrade(&req) {
            Ok(accept) => accept,
            Err(response) => return self.write_response(i, &response, false),
        };
        let key = app_key_of(&req.path).unwrap_or_default().to_string();
        let project = self.hub.project_by_app_key(&key);
        let protocol: u32 = req.query_param("protocol").and_then(|p| p.parse().ok()).unwrap_or(0);
        let session = project.map(|p| self.hub.pusher_session(p, req.header("origin")));
        let Some(id) = self.become_websocket(i, &accept, false, now) else { return };
        let refusal = match (&session, protocol) {
            (None, _) => Some((4001, format!("App key {key} not in this cluster"))),
            (_, 0..=4) => Some((4007, "Unsupported protocol version: use protocol 7".to_string())),
            (Some(Err(message)), _) => Some((4009, message.clone())),
            _ => None,
        };
        if let Some((code, message)) = refusal {
            self.hub.record_refused();
            self.pusher_send(id, &codec::error(Some(code), &message), now);
            if let Some(conn) = live(&mut self.conns, id) {
                close_ws(conn, code, "refused", &mut self.bytes_in);
                self.touched.push(i);
            }
            return;
        }
        let Some(Ok(session)) = session else { return };
        let socket_id = self.hub.socket_id(id);
        if let Some(conn) = self.conns.get_mut(i) {
            conn.pusher = Some(Box::new(PusherConn {
                socket_id: socket_id.clone(),
                pending: HashMap::new(),
                next_request: 0,
                client_events: (now.mono, 0),
            }));
        }
        self.hub.handle_ws_open(id, session, now);
        let activity = codec::activity_timeout(self.limits.ws_idle_timeout.as_secs());
        self.pusher_send(id, &codec::connection_established(&socket_id, activity), now);
        self.read_ws(i, now);
    }

    /// One text frame from a Pusher client.
    pub(super) fn pusher_text(&mut self, i: usize, id: ConnId, text: &str, now: Now) {
        let message = match codec::decode(text) {
            Ok(m) => m,
            Err(codec::BadMessage(why)) => return self.pusher_send(id, &codec::error(None, &why), now),
        };
        match message {
            ClientMessage::Ping => self.pusher_send(id, &codec::message("pusher:pong", None, "{}"), now),
            ClientMessage::Pong => {}
            ClientMessage::Subscribe { channel, auth, channel_data } => {
                self.pusher_subscribe(i, id, &channel, auth.as_deref(), channel_data.as_deref(), now)
            }
            ClientMessage::Unsubscribe { channel } => {
                let event = serde_json::json!({"type": "leave", "room": channel}).to_string();
                self.hub.handle_request(id, &event, None, now);
            }
            ClientMessage::ClientEvent { event, channel, data } => {
                self.pusher_client_event(i, id, &event, &channel, &data, now)
            }
            ClientMessage::Unsupported(event) => {
                self.pusher_send(id, &codec::error(None, &format!("`{event}` is not supported by this server")), now)
            }
        }
    }

    fn pusher_subscribe(
        &mut self,
        i: usize,
        id: ConnId,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
        now: Now,
    ) {
        let Some(state) = self.conns.get(i).and_then(|c| c.pusher.as_ref()) else { return };
        let socket_id = state.socket_id.clone();
        let refuse = |server: &mut Server, status: u16, why: &str| {
            server.pusher_send(id, &codec::subscription_error(channel, status, why), now);
            server.pusher_send(id, &codec::error(Some(4009), why), now);
        };
        if !crate::core::valid_channel_name(channel) {
            return refuse(self, 400, "channel names are 1-164 of A-Z a-z 0-9 _ - = @ , . ;");
        }
        let kind = ChannelKind::of(channel);
        let mut options = JoinOptions { silent: kind != ChannelKind::Presence, create: true, ..JoinOptions::default() };
        if kind != ChannelKind::Public {
            let Some(project) = self.hub.project_of(id) else { return };
            let expected_key = self.hub.project_id(project).to_string();
            let signed = auth.and_then(|a| a.split_once(':')).is_some_and(|(key, signature)| {
                let message = kind.string_to_sign(&socket_id, channel, channel_data);
                key == expected_key && self.hub.pusher_signature_ok(project, &message, signature)
            });
            if !signed {
                let why = format!("Invalid signature: expected HMAC SHA256 hex digest of {socket_id}:{channel}…");
                return refuse(self, 401, &why);
            }
            options.signed = true;
        }
        if kind == ChannelKind::Presence {
            let data: Option<serde_json::Value> = channel_data.and_then(|d| serde_json::from_str(d).ok());
            let user = match data.as_ref().map(|d| &d["user_id"]) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => return refuse(self, 400, "presence channel_data needs a user_id"),
            };
            if let Err(why) = self.hub.become_user(id, &user, now) {
                return refuse(self, 400, &why);
            }
            options.info = data.map(|d| d["user_info"].to_string()).filter(|i| i != "null");
        }
        let Some(state) = self.conns.get_mut(i).and_then(|c| c.pusher.as_mut()) else { return };
        state.next_request += 1;
        let request = state.next_request;
        state.pending.insert(request, channel.to_string());
        self.hub.subscribe(id, channel, options, Some(request), now);
    }

    fn pusher_client_event(&mut self, i: usize, id: ConnId, event: &str, channel: &str, data: &str, now: Now) {
        if ChannelKind::of(channel) == ChannelKind::Public {
            let why = "Client event rejected - only supported on private and presence channels";
            return self.pusher_send(id, &codec::error(None, why), now);
        }
        let rate = self.limits.pusher_client_events_per_second;
        let Some(state) = self.conns.get_mut(i).and_then(|c| c.pusher.as_mut()) else { return };
        let (start, count) = &mut state.client_events;
        if now.mono.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now.mono;
            *count = 0;
        }
        *count += 1;
        if *count > rate {
            let why = format!("Client event rejected - only {rate} per second allowed");
            return self.pusher_send(id, &codec::error(Some(4301), &why), now);
        }
        if let Err(why) = self.hub.client_event(id, channel, event, data) {
            self.pusher_send(id, &codec::error(None, &format!("Client event rejected - {why}")), now);
        }
    }

    /// Frames one Pusher message for one connection.
    fn pusher_send(&mut self, id: ConnId, message: &str, now: Now) {
        self.enqueue(id, &frame_text(message.as_bytes()), now);
    }

    /// An output of the core for one Pusher connection.
    pub(super) fn pusher_deliver(&mut self, output: Output, now: Now) {
        match output {
            Output::Frame { to, wire } => self.pusher_broadcast(&[to], &wire, now),
            Output::Done { to, request, error } => {
                let Some(conn) = live(&mut self.conns, to) else { return };
                let Some(state) = conn.pusher.as_mut() else { return };
                let Some(channel) = state.pending.remove(&request) else { return };
                if let Some((code, message)) = error {
                    self.pusher_send(to, &codec::subscription_error(&channel, status_of(code), &message), now);
                }
            }
            _ => {}
        }
    }

    /// A native frame for Pusher recipients: translated and framed once,
    /// the same bytes for every one of them.
    pub(super) fn pusher_broadcast(&mut self, to: &[ConnId], wire: &[u8], now: Now) {
        let Some(&first) = to.first() else { return };
        let message = match codec::translate(frame_payload(wire)) {
            Translated::Nothing => return,
            Translated::Message(m) | Translated::Error(m) => m,
            Translated::Subscribed(channel) => {
                // Per connection: the members as this subscriber sees them.
                for &id in to {
                    let presence = (ChannelKind::of(&channel) == ChannelKind::Presence)
                        .then(|| self.hub.presence_members(id, &channel));
                    self.pusher_send(id, &codec::subscription_succeeded(&channel, presence.as_deref()), now);
                }
                return;
            }
            Translated::MemberAdded { channel, user } => {
                let info = self.hub.member_info(first, &channel, &user);
                codec::member_added(&channel, &user, &info)
            }
        };
        let framed: Rc<[u8]> = frame_text(message.as_bytes());
        for &id in to {
            self.enqueue(id, &framed, now);
        }
    }

    /// A hub close code in Pusher's ranges: 4000-4099 do not reconnect,
    /// 4100-4199 back off; other limits (1008, 1009…) become 4100.
    pub(super) fn pusher_close_code(code: u16) -> u16 {
        match code {
            4000..=4999 | 1000 | 1001 => code,
            _ => 4100,
        }
    }

    /// Whether `id` is a Pusher connection.
    pub(super) fn is_pusher(&self, id: ConnId) -> bool {
        self.conns.get(id.index()).is_some_and(|c| c.id == id && c.pusher.is_some())
    }
}
