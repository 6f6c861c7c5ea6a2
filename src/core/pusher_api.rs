//! Pusher's HTTP API (`/apps/{appId}/…`), so the Pusher server SDKs work
//! against the hub: requests signed as Pusher signs them, events triggered
//! to channels (rooms), channel and presence queries, and terminating a
//! user's connections.
//!
//! A project is a Pusher app: its id is the app key, its API key the
//! secret, and its app id a decimal number derived from the id (the 64 bits
//! of its hex digits), so nothing new is stored. Triggered events reach the
//! rooms' Pusher subscribers as [`Output::Relay`]; they are not stored.

use md5::{Digest, Md5};
use serde_json::{json, Value};

use super::ids::{constant_time_eq, hmac_sha256_hex, to_hex};
use super::protocol::encode;
use super::{ConnId, Hub, Now, Output};
use crate::http::{Request, Response};

/// How far a request's `auth_timestamp` may be from the hub's clock.
const MAX_CLOCK_SKEW_SECONDS: i64 = 600;
/// Most channels one trigger may name (Pusher's limit).
const MAX_TRIGGER_CHANNELS: usize = 100;
/// Most events in one batch (Pusher's limit).
const MAX_BATCH_EVENTS: usize = 10;
/// Longest event name (Pusher's limit).
const MAX_EVENT_NAME: usize = 200;

/// The Pusher app id of a project: the decimal value of its id's hex digits.
pub fn pusher_app_id(project_id: &str) -> String {
    u64::from_str_radix(project_id.trim_start_matches("p_"), 16).map(|n| n.to_string()).unwrap_or_default()
}

/// Whether `name` is a Pusher channel name: 1–164 of `A-Z a-z 0-9 _ - = @ , . ;`.
pub fn valid_channel_name(name: &str) -> bool {
    (1..=164).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';'))
}

fn text(status: u16, message: &str) -> Response {
    let mut r = Response::empty(status);
    r.body = message.as_bytes().to_vec();
    r.with_header("Content-Type", "text/plain; charset=utf-8")
}

impl Hub {
    /// The project whose Pusher app id is `app_id`.
    fn project_by_app_id(&self, app_id: &str) -> Option<usize> {
        if app_id.is_empty() || !app_id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = app_id.parse().ok()?;
        self.project_by_digits.get(&format!("{n:016x}")).copied()
    }

    /// A connection's Pusher `socket_id`: `BOOT.CONN`, a random number of
    /// this process and the connection id, so a channel signature made for
    /// a socket of an earlier run never fits a socket of this one.
    pub fn socket_id(&self, conn: ConnId) -> String {
        format!("{}.{}", self.ids.boot_nonce(), conn.0)
    }

    /// The connection a `socket_id` of this process names.
    pub fn parse_socket_id(&self, s: &str) -> Option<ConnId> {
        let (boot, conn) = s.split_once('.')?;
        if !boot.bytes().chain(conn.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        (boot.parse::<u32>().ok()? == self.ids.boot_nonce()).then_some(ConnId(conn.parse().ok()?))
    }

    /// The project whose id (Pusher app key) is `key`.
    pub fn project_by_app_key(&self, key: &str) -> Option<usize> {
        let &ix = self.project_by_digits.get(key.strip_prefix("p_")?)?;
        (self.projects[ix].row.id == key).then_some(ix)
    }

    /// Whether `signature` (hex) is the HMAC-SHA256 of `message` with the
    /// project's secret (its API key), compared in constant time.
    pub fn pusher_signature_ok(&self, project: usize, message: &str, signature: &str) -> bool {
        constant_time_eq(&hmac_sha256_hex(&self.projects[project].row.api_key, &[message.as_bytes()]), signature)
    }

    /// Whether `path` is Pusher's HTTP API.
    pub fn is_pusher_api(path: &str) -> bool {
        path.starts_with("/apps/")
    }

    /// Answers one request of Pusher's HTTP API.
    pub fn handle_pusher_api(&mut self, conn: ConnId, req: &Request, now: Now) {
        let response = self.pusher_api(req, now);
        *self.metrics.responses.entry(response.status).or_insert(0) += 1;
        self.respond(conn, response, None);
    }

    fn pusher_api(&mut self, req: &Request, now: Now) -> Response {
        let Some(owned) = req.segments() else { return text(400, "bad percent-encoding in path") };
        let segments: Vec<&str> = owned.iter().map(String::as_str).collect();
        let Some(project) = segments.get(1).and_then(|id| self.project_by_app_id(id)) else {
            return text(404, "Unknown app");
        };
        if let Err(response) = self.check_pusher_signature(project, req, now) {
            return response;
        }
        let rate = self.config.max_rest_requests_per_second as f64;
        let allowance = &mut self.projects[project].rest_requests;
        if allowance.available(rate, now.mono) < 1.0 {
            return text(429, "too many requests for this app; retry in a second");
        }
        allowance.spend(1.0);
        match (req.method.as_str(), &segments[2..]) {
            ("POST", ["events"]) => self.pusher_trigger(project, req),
            ("POST", ["batch_events"]) => self.pusher_batch(project, req),
            ("GET", ["channels"]) => self.pusher_channels(project, req),
            ("GET", ["channels", name]) => self.pusher_channel(project, name, req),
            ("GET", ["channels", name, "users"]) => self.pusher_channel_users(project, name),
            ("POST", ["users", user, "terminate_connections"]) => self.pusher_terminate(project, user),
            (_, ["events" | "batch_events" | "channels" | "users", ..]) => text(405, "method not allowed"),
            _ => text(404, "no such endpoint"),
        }
    }

    /// Pusher request signing: `auth_key` (the app key), `auth_timestamp`
    /// within ±600 s, `auth_version` 1.0, `body_md5` of a body, and
    /// `auth_signature` = HMAC-SHA256(secret, "METHOD\nPATH\nSORTED_QUERY").
    fn check_pusher_signature(&self, project: usize, req: &Request, now: Now) -> Result<(), Response> {
        let param = |name: &str| req.query_param(name);
        if param("auth_key") != Some(self.projects[project].row.id.as_str()) {
            return Err(text(401, "Unknown auth_key"));
        }
        let timestamp: i64 = param("auth_timestamp").and_then(|t| t.parse().ok()).unwrap_or(i64::MIN);
        if timestamp == i64::MIN || (now.unix_ms / 1000 - timestamp).abs() > MAX_CLOCK_SKEW_SECONDS {
            return Err(text(401, "Timestamp expired: Given timestamp is not within 600s of server time"));
        }
        if param("auth_version") != Some("1.0") {
            return Err(text(401, "auth_version must be 1.0"));
        }
        if !req.body.is_empty() {
            let md5 = to_hex(&Md5::digest(&req.body));
            if param("body_md5") != Some(md5.as_str()) {
                return Err(text(401, "body_md5 does not match the body"));
            }
        }
        let mut pairs: Vec<(String, &str)> = req
            .query
            .iter()
            .filter(|(k, _)| k != "auth_signature")
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .collect();
        pairs.sort();
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let message = format!("{}\n{}\n{}", req.method, req.path, query.join("&"));
        match param("auth_signature") {
            Some(signature) if self.pusher_signature_ok(project, &message, signature) => Ok(()),
            _ => Err(text(401, "Invalid signature: check the app secret (the project's API key)")),
        }
    }

    fn pusher_trigger(&mut self, project: usize, req: &Request) -> Response {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return text(400, "the body must be a JSON object"),
        };
        let channels: Vec<&str> = match (&body["channels"], &body["channel"]) {
            (Value::Array(list), _) => list.iter().filter_map(Value::as_str).collect(),
            (Value::Null, Value::String(one)) => vec![one.as_str()],
            _ => return text(400, "`channels` (an array) or `channel` is required"),
        };
        if channels.is_empty() || channels.len() > MAX_TRIGGER_CHANNELS {
            return text(400, "an event goes to 1-100 channels");
        }
        let event = match self.pusher_event(&body, &channels) {
            Ok(event) => event,
            Err(r) => return r,
        };
        for channel in &channels {
            self.relay_event(project, channel, &event.0, &event.1, event.2, None);
        }
        let info = body["info"].as_str().unwrap_or("");
        if info.is_empty() {
            return Response::json(200, &json!({}));
        }
        let mut out = serde_json::Map::new();
        for channel in channels {
            out.insert(channel.to_string(), self.channel_info(project, channel, info));
        }
        Response::json(200, &json!({"channels": out}))
    }

    /// Validates one event of a trigger: `(name, data, excluded connection)`.
    fn pusher_event(&self, body: &Value, channels: &[&str]) -> Result<(String, String, Option<ConnId>), Response> {
        let Some(name) = body["name"].as_str().filter(|n| !n.is_empty() && n.len() <= MAX_EVENT_NAME) else {
            return Err(text(400, "`name` must be 1-200 characters"));
        };
        let data = match &body["data"] {
            Value::String(s) => s.clone(),
            Value::Null => return Err(text(400, "`data` is required")),
            other => other.to_string(),
        };
        if data.len() > self.config.max_content_bytes {
            return Err(text(413, &format!("`data` is larger than {} bytes", self.config.max_content_bytes)));
        }
        if let Some(bad) = channels.iter().find(|c| !valid_channel_name(c)) {
            return Err(text(400, &format!("invalid channel name `{bad}`")));
        }
        let excluded = match body["socket_id"].as_str() {
            None => None,
            Some(s)
                if s.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|x| x.is_ascii_digit())
                }) =>
            {
                // A socket of an earlier run (or none) excludes nobody.
                self.parse_socket_id(s)
            }
            Some(_) => return Err(text(400, "`socket_id` must look like 123.456")),
        };
        Ok((name.to_string(), data, excluded))
    }

    fn pusher_batch(&mut self, project: usize, req: &Request) -> Response {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let Some(batch) = body["batch"].as_array() else { return text(400, "`batch` (an array) is required") };
        if batch.len() > MAX_BATCH_EVENTS {
            return text(400, "a batch holds at most 10 events");
        }
        let mut events = Vec::with_capacity(batch.len());
        for item in batch {
            let Some(channel) = item["channel"].as_str() else { return text(400, "each event needs a `channel`") };
            match self.pusher_event(item, &[channel]) {
                Ok(event) => events.push((channel.to_string(), item["info"].as_str(), event)),
                Err(r) => return r,
            }
        }
        // With any `info`, one attributes object per event, in order (`{}` when it asked none).
        let asked = events.iter().any(|(_, info, _)| info.is_some());
        let mut infos = Vec::new();
        for (channel, info, (name, data, excluded)) in events {
            self.relay_event(project, &channel, &name, &data, excluded, None);
            if asked {
                infos.push(self.channel_info(project, &channel, info.unwrap_or("")));
            }
        }
        if infos.is_empty() {
            Response::json(200, &json!({}))
        } else {
            Response::json(200, &json!({"batch": infos}))
        }
    }

    /// `subscription_count` / `user_count` of one channel, as asked by `info`.
    fn channel_info(&self, project: usize, channel: &str, info: &str) -> Value {
        let room = self.projects[project].rooms.get(channel).map(|&r| &self.rooms[r]);
        let mut out = serde_json::Map::new();
        for field in info.split(',') {
            match field {
                "subscription_count" => {
                    out.insert(field.into(), json!(room.map_or(0, |r| r.conns.len())));
                }
                "user_count" if channel.starts_with("presence-") => {
                    out.insert(field.into(), json!(room.map_or(0, |r| r.users.len())));
                }
                _ => {}
            }
        }
        Value::Object(out)
    }

    fn pusher_channels(&self, project: usize, req: &Request) -> Response {
        let prefix = req.query_param("filter_by_prefix").unwrap_or("");
        let info = req.query_param("info").unwrap_or("");
        if info.split(',').any(|f| f == "user_count") && !prefix.starts_with("presence-") {
            return text(400, "user_count is only available with filter_by_prefix=presence-");
        }
        let mut channels = serde_json::Map::new();
        let mut names: Vec<&String> = self.projects[project]
            .rooms
            .iter()
            .filter(|(name, &r)| name.starts_with(prefix) && !self.rooms[r].conns.is_empty())
            .map(|(name, _)| name)
            .collect();
        names.sort();
        for name in names {
            channels.insert(name.clone(), self.channel_info(project, name, info));
        }
        Response::json(200, &json!({"channels": channels}))
    }

    fn pusher_channel(&self, project: usize, name: &str, req: &Request) -> Response {
        if !valid_channel_name(name) {
            return text(400, "invalid channel name");
        }
        let info = req.query_param("info").unwrap_or("");
        if info.split(',').any(|f| f == "user_count") && !name.starts_with("presence-") {
            return text(400, "user_count is only available for presence channels");
        }
        let occupied = self.projects[project].rooms.get(name).is_some_and(|&r| !self.rooms[r].conns.is_empty());
        let mut out = json!({"occupied": occupied});
        if let (Value::Object(o), Value::Object(extra)) = (&mut out, self.channel_info(project, name, info)) {
            o.extend(extra);
        }
        Response::json(200, &out)
    }

    fn pusher_channel_users(&self, project: usize, name: &str) -> Response {
        if !name.starts_with("presence-") || !valid_channel_name(name) {
            return text(400, "users are only listed for presence channels");
        }
        let mut users: Vec<&String> =
            self.projects[project].rooms.get(name).map(|&r| self.rooms[r].users.keys().collect()).unwrap_or_default();
        users.sort();
        let users: Vec<Value> = users.into_iter().map(|id| json!({"id": id})).collect();
        Response::json(200, &json!({"users": users}))
    }

    fn pusher_terminate(&mut self, project: usize, user: &str) -> Response {
        let conns: Vec<ConnId> = self.projects[project].users.get(user).map(|u| u.conns.clone()).unwrap_or_default();
        for conn in conns {
            log::info!(conn:% = conn, project:% = self.projects[project].row.id; "closed 4009: terminated by the backend");
            self.close_connection(conn, 4009, "connection terminated by the app");
        }
        Response::json(200, &json!({}))
    }

    /// Sends a free-form event to a room's subscribers that hear them (the
    /// Pusher dialect): `except` is left out; `user` names the sender of a
    /// client event on a presence channel.
    pub(super) fn relay_event(
        &mut self,
        project: usize,
        channel: &str,
        event: &str,
        data: &str,
        except: Option<ConnId>,
        user: Option<&str>,
    ) {
        let Some(&room) = self.projects[project].rooms.get(channel) else { return };
        let to: Vec<ConnId> = self.rooms[room].conns.iter().copied().filter(|&c| Some(c) != except).collect();
        if to.is_empty() {
            return;
        }
        let mut frame = json!({"type": "event", "room": channel, "event": event, "data": data});
        if let Some(user) = user {
            frame["userId"] = Value::String(user.to_string());
        }
        let wire = encode(&frame);
        self.push_output(Output::Relay { to, wire });
    }

    /// A Pusher client event (`client-…`) from a subscriber of `channel`:
    /// to its other subscribers, with the sender's user on presence channels.
    /// Never stored.
    pub fn client_event(&mut self, conn: ConnId, channel: &str, event: &str, data: &str) -> Result<(), &'static str> {
        let Some(client) = self.clients.get(&conn) else { return Err("the connection is closing") };
        let project = client.project;
        let Some(&room) = self.projects[project].rooms.get(channel) else { return Err("not subscribed") };
        if !client.rooms.contains(&room) {
            return Err("not subscribed");
        }
        if data.len() > self.config.max_content_bytes {
            return Err("the event is too large");
        }
        let user = (channel.starts_with("presence-") && !client.anonymous).then(|| client.user.clone());
        self.relay_event(project, channel, event, data, Some(conn), user.as_deref());
        Ok(())
    }

    /// The presence hash of a room: every member with what they show (`user_info`).
    pub fn presence_members(&self, conn: ConnId, channel: &str) -> Vec<(String, Option<String>)> {
        let Some(client) = self.clients.get(&conn) else { return Vec::new() };
        let Some(&room) = self.projects[client.project].rooms.get(channel) else { return Vec::new() };
        let r = &self.rooms[room];
        let mut members: Vec<(String, Option<String>)> =
            r.users.keys().map(|u| (u.clone(), r.infos.get(u).cloned())).collect();
        members.sort();
        members
    }

    /// What a member of `channel` shows (`user_info`), as seen from `conn`'s project.
    pub fn member_info(&self, conn: ConnId, channel: &str, user: &str) -> Option<String> {
        let client = self.clients.get(&conn)?;
        let &room = self.projects[client.project].rooms.get(channel)?;
        self.rooms[room].infos.get(user).cloned()
    }
}
