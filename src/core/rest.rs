//! The REST half of the contract: routing, authentication and the handlers.
//!
//! Each handler takes a parsed request and answers through the hub's outbox, so
//! a response that reports a write is released only after the commit (and is
//! replaced by a 503 if the commit fails). Pipelined requests are answered in
//! the order they came.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::hub::{Hub, NewMessage, Principal, Refusal, RoomAction};
use super::model::{valid_user_id, ProjectRow, RoomKind, RoomRow, WriteOp};
use super::protocol::{history_query, timestamp, trim_page, MessageView, MessagesFrame};
use super::{ConnId, Now};
use crate::http::{Request, Response};

/// The JavaScript client, served at `/client.js` so a page can import it from the hub.
const CLIENT_JS: &str = include_str!("../../clients/js/realtimehub.js");
/// The OpenAPI 3.1 description of this API, served at `/api/v1/openapi.json`.
const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");
/// The demo chat page, served at `/demo`.
const DEMO_HTML: &str = include_str!("../../clients/demo/index.html");

/// Methods a preflight may ask for.
const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// Headers a preflight may ask for.
const ALLOWED_HEADERS: &str = "Content-Type, X-API-Key, Authorization";

/// The 503 a write gets when its commit fails.
fn unavailable() -> Response {
    Response::error(503, "unavailable", "storage failed; nothing was stored")
}

fn bad_request(message: &str) -> Response {
    Response::error(400, "bad_request", message)
}

fn not_found(message: &str) -> Response {
    Response::error(404, "not_found", message)
}

/// Maps a core refusal to its HTTP status.
fn refusal_response(refusal: Refusal) -> Response {
    let status = match refusal.code {
        "bad_request" => 400,
        "forbidden" => 403,
        "not_found" => 404,
        "too_large" => 413,
        "rate_limited" => 429,
        _ => 503,
    };
    let code = match refusal.code {
        "too_large" => "payload_too_large",
        "internal" => "unavailable",
        other => other,
    };
    Response::error(status, code, &refusal.message)
}

/// A routed answer: the response and, for writes, what to send if the commit fails.
struct Answer {
    response: Response,
    on_failure: Option<Response>,
}

impl From<Response> for Answer {
    fn from(response: Response) -> Answer {
        Answer { response, on_failure: None }
    }
}

impl Answer {
    fn write(response: Response) -> Answer {
        Answer { response, on_failure: Some(unavailable()) }
    }
}

/// Which methods a known path accepts, for 405 and `Allow`.
fn allowed(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["health"] | ["stats"] | ["metrics"] | ["api", "v1", "stats"] | ["client.js"] | ["demo"] => "GET",
        ["api", "v1", "openapi.json"] => "GET",
        ["api", "v1", "projects"] => "POST",
        ["api", "v1", "project"] => "GET, PATCH",
        ["api", "v1", "rooms"] => "GET, POST",
        ["api", "v1", "rooms", _] => "GET, DELETE",
        ["api", "v1", "rooms", _, "members", _] => "PUT, DELETE",
        ["api", "v1", "rooms", _, "messages"] => "GET, POST",
        ["api", "v1", "rooms", _, "messages", _, "receipts"] => "GET",
        ["api", "v1", "rooms", _, "presence"] => "GET",
        ["api", "v1", "users", _, "messages"] => "POST",
        _ => return None,
    })
}

impl Hub {
    /// Answers one HTTP request (not an upgrade) on connection `conn` from
    /// the address `peer` (for the per-address project quota).
    pub fn handle_http(&mut self, conn: ConnId, req: &Request, peer: IpAddr, now: Now) {
        if Hub::is_pusher_api(&req.path) {
            return self.handle_pusher_api(conn, req, now);
        }
        let mut answer = self.route(req, peer, now);
        *self.metrics.responses.entry(answer.response.status).or_insert(0) += 1;
        if req.method == "HEAD" {
            answer.response.head_only = true;
            if let Some(fallback) = answer.on_failure.as_mut() {
                fallback.head_only = true;
            }
        }
        let response = self.with_cors(req, answer.response);
        let on_failure = answer.on_failure.map(|r| self.with_cors(req, r));
        self.respond(conn, response, on_failure);
    }

    fn route(&mut self, req: &Request, peer: IpAddr, now: Now) -> Answer {
        let Some(owned) = req.segments() else { return bad_request("bad percent-encoding in path").into() };
        let segments: Vec<&str> = owned.iter().map(String::as_str).collect();
        let Some(methods) = allowed(&segments) else { return not_found("no such endpoint").into() };
        // HEAD is answered like GET; the shell sends the headers only.
        let method = if req.method == "HEAD" { "GET" } else { req.method.as_str() };
        if method == "OPTIONS" {
            return Response::empty(204)
                .with_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
                .with_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
                .with_header("Access-Control-Max-Age", "86400")
                .into();
        }
        if !methods.split(", ").any(|m| m == method) {
            return Response::error(405, "method_not_allowed", &format!("{method} is not allowed here"))
                .with_header("Allow", methods)
                .into();
        }
        match (method, segments.as_slice()) {
            ("GET", ["health"]) => Response::json(
                200,
                &json!({"status": "ok", "uptimeSeconds": self.uptime(now), "version": crate::VERSION}),
            )
            .into(),
            ("GET", ["client.js"]) => Response::asset("text/javascript; charset=utf-8", CLIENT_JS).into(),
            ("GET", ["api", "v1", "openapi.json"]) => Response::asset("application/json", OPENAPI_JSON).into(),
            ("GET", ["demo"]) => Response::asset("text/html; charset=utf-8", DEMO_HTML).into(),
            ("GET", ["stats"]) => match self.check_admin(req) {
                Err(r) => r.into(),
                Ok(()) => self.server_stats(now).into(),
            },
            ("GET", ["metrics"]) => match self.check_admin(req) {
                Err(r) => r.into(),
                Ok(()) => self.metrics_response(now).into(),
            },
            ("POST", ["api", "v1", "projects"]) => match self.check_admin(req) {
                Err(r) => r.into(),
                Ok(()) => self.create_project(req, peer, now),
            },
            _ => {
                let key = req.header("x-api-key").unwrap_or("");
                let Some(project) = self.project_for_key(key) else {
                    return Response::error(401, "unauthorized", "missing or invalid X-API-Key").into();
                };
                let rate = self.config.max_rest_requests_per_second as f64;
                let allowance = &mut self.projects[project].rest_requests;
                if allowance.available(rate, now.mono) < 1.0 {
                    let wait = allowance.wait(rate).max(std::time::Duration::from_millis(1));
                    self.metrics.count_quota("rest_requests");
                    let message = format!("more than {rate} requests per second with this API key");
                    return too_many(&message, wait).into();
                }
                allowance.spend(1.0);
                // Listings answer as much as the project holds (rooms, members,
                // receipts): they are paid from the key's read budget by the
                // bytes they return, like history pages.
                let listing = method == "GET"
                    && matches!(
                        segments.as_slice(),
                        ["api", "v1", "rooms"]
                            | ["api", "v1", "rooms", _]
                            | ["api", "v1", "rooms", _, "messages", _, "receipts"]
                    );
                if listing {
                    if let Err(refused) = self.admit_rest_read(project, now) {
                        return refused.into();
                    }
                }
                let answer = self.route_project(project, method, &segments, req, now);
                if listing {
                    self.projects[project].rest_reads.spend(answer.response.body.len() as f64);
                }
                answer
            }
        }
    }

    /// Admits a REST read while the API key's read budget is positive (its
    /// cost is charged once the answer is known, at most one answer's worth).
    fn admit_rest_read(&mut self, project: usize, now: Now) -> Result<(), Response> {
        let rate = self.config.max_rest_read_bytes_per_second as f64;
        let reads = &mut self.projects[project].rest_reads;
        if reads.available(rate, now.mono) > 0.0 {
            return Ok(());
        }
        let wait = reads.wait(rate);
        self.metrics.count_quota("rest_read_bytes");
        Err(too_many(&format!("more than {rate} bytes read per second with this API key"), wait))
    }

    fn route_project(&mut self, project: usize, method: &str, segments: &[&str], req: &Request, now: Now) -> Answer {
        match (method, segments) {
            ("POST", ["api", "v1", "rooms"]) => self.create_room(project, req, now),
            ("GET", ["api", "v1", "rooms"]) => self.list_rooms(project).into(),
            ("GET", ["api", "v1", "stats"]) => self.project_stats(project).into(),
            ("GET", ["api", "v1", "project"]) => Response::json(200, &self.project_json(project)).into(),
            ("PATCH", ["api", "v1", "project"]) => self.update_project(project, req),
            ("POST", ["api", "v1", "users", user, "messages"]) => self.post_direct(project, user, req, now).into(),
            (_, ["api", "v1", "rooms", name, rest @ ..]) => {
                let room = match self.authorize_room(Principal::Backend, project, name, RoomAction::Act) {
                    Ok(room) => room,
                    Err(refusal) => return refusal_response(refusal).into(),
                };
                match (method, rest) {
                    ("GET", []) => self.room_view(room),
                    ("DELETE", []) => self.delete_room(room),
                    ("PUT", ["members", user]) => self.change_member(room, user, true, now),
                    ("DELETE", ["members", user]) => self.change_member(room, user, false, now),
                    ("GET", ["messages"]) => self.list_messages(room, req, now),
                    ("POST", ["messages"]) => self.post_room_message(room, req, now),
                    ("GET", ["messages", id, "receipts"]) => self.list_receipts(room, id).into(),
                    ("GET", ["presence"]) => self.room_presence(room).into(),
                    _ => not_found("no such endpoint").into(),
                }
            }
            _ => not_found("no such endpoint").into(),
        }
    }

    /// Admin-guarded endpoints: open when no token is configured.
    fn check_admin(&self, req: &Request) -> Result<(), Response> {
        let Some(token) = &self.config.admin_token else { return Ok(()) };
        let given = req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if super::ids::constant_time_eq(given.trim(), token) {
            Ok(())
        } else {
            Err(Response::error(401, "unauthorized", "missing or invalid admin bearer token"))
        }
    }

    fn server_stats(&self, now: Now) -> Response {
        let c = &self.counters;
        Response::json(
            200,
            &json!({
                "connections": self.clients.len(),
                "projects": self.project_by_digits.len(),
                "rooms": self.rooms.len(),
                "uptimeSeconds": self.uptime(now),
                "messagesIn": c.messages_in,
                "messagesOut": c.messages_out,
                "bytesIn": c.bytes_in,
                "bytesOut": c.bytes_out,
            }),
        )
    }

    fn metrics_response(&self, now: Now) -> Response {
        let c = &self.counters;
        let snapshot = super::metrics::Snapshot {
            connections: self.clients.len(),
            projects: self.project_by_digits.len(),
            rooms: self.rooms.len(),
            uptime_seconds: self.uptime(now),
            messages_in: c.messages_in,
            messages_out: c.messages_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            per_project: self
                .project_by_digits
                .values()
                .map(|&ix| {
                    let p = &self.projects[ix];
                    super::metrics::ProjectCounters {
                        id: &p.row.id,
                        connections: p.connections,
                        messages_in: p.messages_in,
                        messages_out: p.messages_out,
                        stored_bytes: p.stored_bytes,
                    }
                })
                .collect(),
            store_queue_batches: self.store_backlog().0,
            store_queue_bytes: self.store_backlog().1,
            outbox_depth: self.outbox_depth(),
            hooks: self.hook_metrics().0,
            hook_latency: self.hook_metrics().1,
        };
        let body = self.metrics.render(&snapshot).into_bytes();
        Response {
            status: 200,
            headers: Vec::new(),
            body,
            close: false,
            content_type: "text/plain; version=0.0.4",
            head_only: false,
        }
    }

    fn create_project(&mut self, req: &Request, peer: IpAddr, now: Now) -> Answer {
        let body = match json_body(req) {
            Ok(v) => v,
            Err(r) => return r.into(),
        };
        let name = match body.get("name").and_then(Value::as_str) {
            Some(n) if !n.trim().is_empty() && n.len() <= 200 => n.to_string(),
            _ => return bad_request("`name` must be a non-empty string of at most 200 bytes").into(),
        };
        if self.config.admin_token.is_none() {
            if let Err(response) = self.count_open_project_creation(peer, now) {
                return response.into();
            }
        }
        let id = self.ids.random("p_", 8);
        let row = ProjectRow {
            api_key: self.ids.api_key(&id),
            id,
            name,
            created_at: now.unix_ms,
            require_tokens: false,
            allowed_origins: Vec::new(),
            auto_create_rooms: false,
            webhook_url: None,
            webhook_events: None,
            access_hook_url: None,
        };
        self.write(WriteOp::InsertProject(row.clone()));
        log::info!(project:% = row.id; "created");
        let response = Response::json(
            201,
            &json!({"id": row.id, "name": row.name, "apiKey": row.api_key, "createdAt": timestamp(row.created_at)}),
        );
        self.add_project(row, now.mono);
        Answer::write(response)
    }

    /// Open project creation (no admin token) is limited per source address
    /// and hour, so one client cannot fill the disk with tenants.
    fn count_open_project_creation(&mut self, peer: IpAddr, now: Now) -> Result<(), Response> {
        const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
        let cap = self.config.max_projects_per_ip_per_hour;
        if self.projects_by_ip.len() >= 4096 {
            // Forget finished windows, so the table stays as small as the traffic.
            self.projects_by_ip.retain(|_, (start, _)| now.mono.saturating_duration_since(*start) < HOUR);
        }
        let (start, count) = self.projects_by_ip.entry(peer).or_insert((now.mono, 0));
        if now.mono.saturating_duration_since(*start) >= HOUR {
            *start = now.mono;
            *count = 0;
        }
        if *count >= cap {
            let wait = HOUR.saturating_sub(now.mono.saturating_duration_since(*start));
            self.metrics.count_quota("projects_per_ip");
            let message = format!("this address created {cap} projects this hour; set --admin-token to lift the limit");
            return Err(too_many(&message, wait));
        }
        *count += 1;
        Ok(())
    }

    fn project_json(&self, project: usize) -> Value {
        let row = &self.projects[project].row;
        json!({
            "id": row.id,
            "name": row.name,
            "createdAt": timestamp(row.created_at),
            "requireTokens": row.require_tokens,
            "allowedOrigins": row.allowed_origins,
            "autoCreateRooms": row.auto_create_rooms,
            "webhookUrl": row.webhook_url,
            "webhookEvents": row.webhook_events.clone().unwrap_or_else(|| super::WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect()),
            "accessHookUrl": row.access_hook_url,
            "pusherAppId": super::pusher_app_id(&row.id),
        })
    }

    /// `PATCH /api/v1/project`: `name`, `requireTokens`, `allowedOrigins`,
    /// `autoCreateRooms`, and the backend's `webhookUrl`, `webhookEvents`,
    /// `accessHookUrl` (`null` removes a URL; `webhookEvents: null` is all).
    fn update_project(&mut self, project: usize, req: &Request) -> Answer {
        let body = match json_body(req) {
            Ok(v) => v,
            Err(r) => return r.into(),
        };
        let mut row = self.projects[project].row.clone();
        for (field, value) in body.as_object().into_iter().flatten() {
            match (field.as_str(), value) {
                ("name", Value::String(n)) if !n.trim().is_empty() && n.len() <= 200 => row.name = n.clone(),
                ("requireTokens", Value::Bool(b)) => row.require_tokens = *b,
                ("autoCreateRooms", Value::Bool(b)) => row.auto_create_rooms = *b,
                ("allowedOrigins", Value::Array(list)) => {
                    let origins: Option<Vec<String>> = list
                        .iter()
                        .map(|o| o.as_str().filter(|o| !o.is_empty() && o.len() <= 256).map(str::to_string))
                        .collect();
                    match origins {
                        Some(origins) => row.allowed_origins = origins,
                        None => return bad_request("`allowedOrigins` must be origins like https://app.example").into(),
                    }
                }
                ("webhookUrl" | "accessHookUrl", Value::Null) => {
                    *url_setting(&mut row, field) = None;
                }
                ("webhookUrl" | "accessHookUrl", Value::String(url)) => match crate::url::parse_url(url) {
                    Ok(_) => *url_setting(&mut row, field) = Some(url.clone()),
                    Err(e) => return bad_request(&format!("`{field}`: {e}")).into(),
                },
                ("webhookEvents", Value::Null) => row.webhook_events = None,
                ("webhookEvents", Value::Array(list)) => {
                    let mut events = Vec::with_capacity(list.len());
                    for event in list {
                        match event.as_str().filter(|e| super::WEBHOOK_EVENTS.contains(e)) {
                            Some(e) if !events.iter().any(|x: &String| x == e) => events.push(e.to_string()),
                            Some(_) => {}
                            None => {
                                let known = super::WEBHOOK_EVENTS.join(", ");
                                return bad_request(&format!("`webhookEvents` lists event types, of: {known}")).into();
                            }
                        }
                    }
                    row.webhook_events = Some(events);
                }
                (
                    "name" | "requireTokens" | "allowedOrigins" | "autoCreateRooms" | "webhookUrl" | "accessHookUrl"
                    | "webhookEvents",
                    _,
                ) => return bad_request(&format!("`{field}` has the wrong type")).into(),
                (other, _) => return bad_request(&format!("unknown setting `{other}`")).into(),
            }
        }
        let webhook_changed = row.webhook_url != self.projects[project].row.webhook_url;
        self.write(WriteOp::UpdateProject(row.clone()));
        self.projects[project].row = row;
        if webhook_changed {
            self.webhook_settings_changed(project);
        }
        Answer::write(Response::json(200, &self.project_json(project)))
    }

    fn create_room(&mut self, project: usize, req: &Request, now: Now) -> Answer {
        let body = match json_body(req) {
            Ok(v) => v,
            Err(r) => return r.into(),
        };
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            return bad_request("`name` is required").into();
        };
        if let Err(refusal) = Hub::check_room_name(name) {
            return refusal_response(refusal).into();
        }
        let kind = match body.get("type") {
            None | Some(Value::Null) => RoomKind::Public,
            Some(v) => match v.as_str().and_then(RoomKind::parse) {
                Some(kind) => kind,
                None => return bad_request("`type` must be \"public\" or \"private\"").into(),
            },
        };
        let members = match body.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                let mut members = Vec::new();
                for m in list {
                    match m.as_str() {
                        Some(u) if valid_user_id(u) => members.push(u.to_string()),
                        _ => return bad_request("`members` must be user ids of 1-128 printable characters").into(),
                    }
                }
                members.sort();
                members.dedup();
                members
            }
            Some(_) => return bad_request("`members` must be an array of user ids").into(),
        };
        if kind == RoomKind::Public && !members.is_empty() {
            return bad_request("`members` applies to private rooms only").into();
        }
        if self.projects[project].rooms.contains_key(name) {
            return Response::error(409, "conflict", &format!("room `{name}` already exists")).into();
        }
        if let Err(refusal) = self.check_room_quota(project) {
            return quota_full(&refusal.message).into();
        }
        let member_cap = self.config.max_members_per_room;
        if members.len() > member_cap {
            self.metrics.count_quota("members");
            return quota_full(&format!("a room may list at most {member_cap} members")).into();
        }
        let room = self.insert_room(project, name, kind, members, now);
        let r = &self.rooms[room];
        let response = Response::json(
            201,
            &json!({"id": r.id, "name": r.name, "type": kind.as_str(), "createdAt": timestamp(r.created_at)}),
        );
        Answer::write(response)
    }

    /// Refuses a new room past `--max-rooms-per-project` (counted as a quota refusal).
    pub(super) fn check_room_quota(&mut self, project: usize) -> Result<(), Refusal> {
        let room_cap = self.config.max_rooms_per_project;
        if self.projects[project].rooms.len() >= room_cap {
            self.metrics.count_quota("rooms");
            let message = format!("this project has {room_cap} rooms, its quota; delete rooms first");
            return Err(Refusal::new("rate_limited", message));
        }
        Ok(())
    }

    /// Creates a room (name and quota already checked): written with the
    /// iteration's batch, usable at once. Its index.
    pub(super) fn insert_room(
        &mut self,
        project: usize,
        name: &str,
        kind: RoomKind,
        members: Vec<String>,
        now: Now,
    ) -> usize {
        let row = RoomRow {
            pk: self.allocate_room_pk(),
            id: self.ids.random("r_", 8),
            project_id: self.projects[project].row.id.clone(),
            name: name.to_string(),
            kind,
            created_at: now.unix_ms,
            member_count: members.len(),
            members,
            last_seq: 0,
            first_seq: 0,
            stored_bytes: 0,
        };
        self.write(WriteOp::InsertRoom(row.clone()));
        self.add_room(row, project)
    }

    fn room_json(&self, room: usize) -> Value {
        let r = &self.rooms[room];
        json!({
            "id": r.id,
            "name": r.name,
            "type": r.kind.as_str(),
            "createdAt": timestamp(r.created_at),
            "online": r.users.len(),
        })
    }

    fn list_rooms(&self, project: usize) -> Response {
        let mut rooms: Vec<usize> = self.projects[project].rooms.values().copied().collect();
        rooms.sort_by(|a, b| self.rooms[*a].name.cmp(&self.rooms[*b].name));
        let list: Vec<Value> = rooms.into_iter().map(|r| self.room_json(r)).collect();
        Response::json(200, &json!({"rooms": list}))
    }

    /// One room; a private room with its members, read from the store (at
    /// most `--max-members-per-room` of them).
    fn room_view(&mut self, room: usize) -> Answer {
        let mut view = self.room_json(room);
        if self.rooms[room].kind == RoomKind::Private {
            match self.members_of(self.rooms[room].pk, self.config.max_members_per_room) {
                Ok(members) => view["members"] = json!(members),
                Err(err) => {
                    log::error!(project:% = self.room_project_id(room); "{err}");
                    return unavailable().into();
                }
            }
        }
        // Members added earlier in this iteration are not yet committed.
        Answer::write(Response::json(200, &view))
    }

    /// The id of the project a room belongs to, for log lines.
    fn room_project_id(&self, room: usize) -> &str {
        &self.projects[self.rooms[room].project].row.id
    }

    fn delete_room(&mut self, room: usize) -> Answer {
        self.write(WriteOp::DeleteRoom(self.rooms[room].pk));
        self.remove_room(room);
        Answer::write(Response::empty(204))
    }

    fn change_member(&mut self, room: usize, user: &str, add: bool, now: Now) -> Answer {
        if !valid_user_id(user) {
            return bad_request("user ids are 1-128 printable characters").into();
        }
        if self.rooms[room].kind != RoomKind::Private {
            return bad_request("membership applies to private rooms only").into();
        }
        let pk = self.rooms[room].pk;
        let cap = self.config.max_members_per_room;
        if add && self.rooms[room].member_count >= cap {
            match self.is_member(pk, user) {
                Ok(true) => return Answer::write(Response::empty(204)),
                Ok(false) => {
                    self.metrics.count_quota("members");
                    return quota_full(&format!("this room lists {cap} members, the most allowed")).into();
                }
                Err(err) => {
                    log::error!(project:% = self.room_project_id(room); "{err}");
                    return unavailable().into();
                }
            }
        }
        let result = self.change_membership(pk, user, add);
        let changed = match result {
            Ok(changed) => changed,
            Err(err) => {
                log::error!(project:% = self.room_project_id(room); "{err}");
                return unavailable().into();
            }
        };
        let r = &mut self.rooms[room];
        match (add, changed) {
            (true, true) => r.member_count += 1,
            (false, true) => r.member_count = r.member_count.saturating_sub(1),
            _ => {}
        }
        if !add {
            self.evict_user(room, user, now);
        }
        Answer::write(Response::empty(204))
    }

    fn list_messages(&mut self, room: usize, req: &Request, now: Now) -> Answer {
        let number = |name: &str| -> Result<Option<u64>, Response> {
            match req.query_param(name) {
                None | Some("") => Ok(None),
                Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => {
                    v.parse().map(Some).map_err(|_| bad_request(&format!("`{name}` is too large")))
                }
                Some(_) => Err(bad_request(&format!("`{name}` must be a whole number"))),
            }
        };
        let query = (|| {
            let q = history_query(number("before")?, number("after")?, number("limit")?);
            q.map_err(|m| bad_request(&m))
        })();
        let query = match query {
            Ok(q) => q,
            Err(r) => return r.into(),
        };
        let project = self.rooms[room].project;
        if let Err(refused) = self.admit_rest_read(project, now) {
            return refused.into();
        }
        let budget = self.reply_budget(false);
        let pk = self.rooms[room].pk;
        match self.store.history(pk, &query, budget) {
            Ok(mut page) => {
                page.rows = self.inflight.complete_page(pk, &query, page.rows, page.cut);
                self.projects[project].rest_reads.spend(page.bytes as f64);
                let name = &self.rooms[room].name;
                let mut views: Vec<MessageView> = page.rows.iter().map(|r| MessageView::of(r, name, None)).collect();
                trim_page(&mut views, self.config.max_reply_bytes, query.after.is_some());
                // Rows still in flight are in the page (a GET pipelined after
                // a POST sees it): the page is released only after their
                // commit, and is a 503 if it fails.
                Answer::write(Response::json_of(200, &MessagesFrame { kind: None, room: None, messages: views }))
            }
            Err(err) => {
                log::error!(project:% = self.room_project_id(room); "{err}");
                unavailable().into()
            }
        }
    }

    fn post_room_message(&mut self, room: usize, req: &Request, now: Now) -> Answer {
        let body = match json_body(req) {
            Ok(v) => v,
            Err(r) => return r.into(),
        };
        let user = match body.get("userId").and_then(Value::as_str) {
            Some(u) if valid_user_id(u) => u,
            _ => return bad_request("`userId` must be a user id of 1-128 printable characters").into(),
        };
        let Some(content) = body.get("content").and_then(Value::as_str) else {
            return bad_request("`content` must be a string").into();
        };
        let content_type = match body.get("contentType") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return bad_request("`contentType` must be a string").into(),
        };
        // Attachments are stored as the exact JSON text sent.
        #[derive(serde::Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            attachments: Option<&'a serde_json::value::RawValue>,
        }
        let raw: Raw = match serde_json::from_slice(&req.body) {
            Ok(raw) => raw,
            Err(_) => return bad_request("the body is not valid JSON").into(),
        };
        let attachments = match (body.get("attachments"), raw.attachments) {
            (None | Some(Value::Null), _) => None,
            (Some(Value::Array(_)), Some(text)) => Some(text.get()),
            _ => return bad_request("`attachments` must be an array").into(),
        };
        let input = NewMessage { user, content, content_type, attachments, temp_id: None };
        match self.store_message(room, &input, now) {
            Ok(row) => {
                self.broadcast_message(room, &row);
                let name = &self.rooms[room].name;
                Answer::write(Response::json_of(201, &MessageView::of(&row, name, None)))
            }
            Err(refusal) => refusal_response(refusal).into(),
        }
    }

    fn list_receipts(&mut self, room: usize, id: &str) -> Response {
        let pk = self.rooms[room].pk;
        let result = self.store.message_exists(pk, id).and_then(|m| Ok((m, self.store.receipts(pk, id)?)));
        match result {
            Ok((false, _)) => not_found(&format!("message `{id}` is not in this room")),
            Ok((true, receipts)) => {
                let list: Vec<Value> =
                    receipts.iter().map(|(user, at)| json!({"userId": user, "readAt": timestamp(*at)})).collect();
                Response::json(200, &json!({"receipts": list}))
            }
            Err(err) => {
                log::error!(project:% = self.room_project_id(room); "{err}");
                unavailable()
            }
        }
    }

    fn post_direct(&mut self, project: usize, user: &str, req: &Request, now: Now) -> Response {
        if !valid_user_id(user) {
            return bad_request("user ids are 1-128 printable characters");
        }
        let body = match json_body(req) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Some(content) = body.get("content").and_then(Value::as_str) else {
            return bad_request("`content` must be a string");
        };
        if content.len() > self.config.max_content_bytes {
            return Response::error(413, "payload_too_large", "content is over the message size limit");
        }
        let from = match body.get("from") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if valid_user_id(s) => Some(s.as_str()),
            Some(_) => return bad_request("`from` must be a user id"),
        };
        let (_, delivered) = self.deliver_direct(project, from, user, content, now);
        Response::json(200, &json!({"delivered": delivered}))
    }

    fn room_presence(&self, room: usize) -> Response {
        let r = &self.rooms[room];
        let mut users: Vec<(&String, &u32)> = r.users.iter().collect();
        users.sort();
        let list: Vec<Value> = users
            .into_iter()
            .map(|(user, conns)| {
                json!({"userId": user, "status": self.status_of(r.project, user).as_str(), "connections": conns})
            })
            .collect();
        Response::json(200, &json!({"room": r.name, "users": list}))
    }

    fn project_stats(&self, project: usize) -> Response {
        let p = &self.projects[project];
        Response::json(
            200,
            &json!({
                "connections": p.connections,
                "users": p.users.len(),
                "rooms": p.rooms.len(),
                "messagesIn": p.messages_in,
                "messagesOut": p.messages_out,
            }),
        )
    }
}

/// A 429 with `Retry-After` (whole seconds, at least 1).
fn too_many(message: &str, wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Response::error(429, "rate_limited", message).with_header("Retry-After", seconds.max(1).to_string())
}

/// A 429 for a quota that waiting does not lift (rooms, members).
fn quota_full(message: &str) -> Response {
    Response::error(429, "rate_limited", message)
}

/// The request body as a JSON object.
fn json_body(req: &Request) -> Result<Value, Response> {
    if req.body.is_empty() {
        return Err(bad_request("a JSON object body is required"));
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(err) => Err(bad_request(&format!("the body is not valid JSON: {err}"))),
    }
}

/// The project's URL setting named `field` (`webhookUrl` or `accessHookUrl`).
fn url_setting<'a>(row: &'a mut ProjectRow, field: &str) -> &'a mut Option<String> {
    if field == "webhookUrl" {
        &mut row.webhook_url
    } else {
        &mut row.access_hook_url
    }
}
