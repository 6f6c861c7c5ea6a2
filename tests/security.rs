//! Regression tests for the security audit (issue 17) against the real binary: one access
//! decision on every path and for every kind of credential, work bounded by the answer and
//! by per-connection and per-key budgets, per-tenant quotas, token lifetimes and user ids
//! that cannot hide formatting.

mod common;

use common::{cpu_time_of, metric_value, metrics_text, pct, rss_kib_of, unix_now_secs, Hub, Ws};
use realtimehub::core::token;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The next frame that answers `event`: its `error`, or the first frame of a type in `ok`.
fn answer(ws: &mut Ws, event: &str, ok: &[&str]) -> Value {
    ws.recv_until(&format!("an answer to {event}"), |v| {
        (v["type"] == "error" && v["event"] == event) || ok.iter().any(|t| v["type"] == *t)
    })
}

/// `Ok(())` for an answer of an accepted type, `Err(code)` for an error.
fn outcome(v: &Value) -> Result<(), String> {
    if v["type"] == "error" {
        Err(v["code"].as_str().unwrap_or("?").to_string())
    } else {
        Ok(())
    }
}

/// Posts a message over REST as `user`; returns its id.
fn post_as(hub: &Hub, key: &str, room: &str, user: &str, content: &str) -> String {
    let resp =
        hub.post(&format!("/api/v1/rooms/{room}/messages"), Some(key), &json!({"userId": user, "content": content}));
    assert_eq!(resp.status, 201, "post to {room}: {resp:?}");
    resp.json()["id"].as_str().expect("message id").to_string()
}

/// Every credential kind against every path that touches a room. The one access decision
/// (`authorize_room`) must give the same answer to `join`, `join` with `since` and `history`,
/// and every action in a room must need the room joined first.
#[test]
fn every_path_and_credential_gets_the_same_access_decision() {
    let hub = Hub::start();
    let (pid, key) = hub.create_project("access");
    hub.create_room(&key, "lobby", "public");
    hub.create_room(&key, "town", "public");
    let resp = hub.post("/api/v1/rooms", Some(&key), &json!({"name": "hr", "type": "private", "members": ["alice"]}));
    assert_eq!(resp.status, 201, "{resp:?}");
    let exp = unix_now_secs() as u64 + 600;
    let token_all = token::sign(&json!({"iss": pid, "sub": "alice", "exp": exp}), key.as_bytes());
    let token_lobby = token::sign(&json!({"iss": pid, "sub": "alice", "exp": exp, "rooms": ["lobby"]}), key.as_bytes());
    // (name, connect path, user, rooms it may join)
    let credentials: Vec<(&str, String, &str, Vec<&str>)> = vec![
        ("apiKey member", format!("/?apiKey={}&userId=alice", pct(&key)), "alice", vec!["lobby", "town", "hr"]),
        ("apiKey stranger", format!("/?apiKey={}&userId=bob", pct(&key)), "bob", vec!["lobby", "town"]),
        ("token, every room", format!("/?token={}", pct(&token_all)), "alice", vec!["lobby", "town", "hr"]),
        ("token scoped to lobby", format!("/?token={}", pct(&token_lobby)), "alice", vec!["lobby"]),
    ];
    let paths = ["join", "join since", "history", "message", "typing", "read", "edit", "delete"];
    let mut failures = Vec::new();
    for (cred, path, user, admitted) in &credentials {
        for room in ["lobby", "town", "hr"] {
            let may_enter = admitted.contains(&room);
            for what in paths {
                let mut ws = hub.ws_raw(path).unwrap_or_else(|e| panic!("{cred}: connect: {e}"));
                assert_eq!(ws.recv()["type"], "connected");
                // Actions need the room joined: try to join first (refused rooms stay unjoined).
                let acting = !matches!(what, "join" | "join since" | "history");
                if acting {
                    ws.send(json!({"type": "join", "room": room}));
                    let joined = answer(&mut ws, "join", &["joined"]);
                    assert_eq!(outcome(&joined).is_ok(), may_enter, "{cred} joining {room}: {joined}");
                }
                // Seeded by the room's member alice over REST, so edit/delete have a target.
                let id = post_as(&hub, &key, room, "alice", "seed");
                let (event, ok): (Value, &[&str]) = match what {
                    "join" => (json!({"type": "join", "room": room}), &["joined"]),
                    "join since" => (json!({"type": "join", "room": room, "since": 0}), &["joined"]),
                    "history" => (json!({"type": "history", "room": room}), &["history"]),
                    "message" => (
                        json!({"type": "message", "room": room, "content": "hi", "tempId": "t"}),
                        &["message_id_mapping"],
                    ),
                    "typing" => (json!({"type": "typing", "room": room, "isTyping": true}), &["pong"]),
                    "read" => (json!({"type": "read", "room": room, "messageIds": [id]}), &["read_receipt"]),
                    "edit" => {
                        (json!({"type": "edit", "room": room, "messageId": id, "content": "x"}), &["message_update"])
                    }
                    _ => (json!({"type": "delete", "room": room, "messageId": id}), &["message_update"]),
                };
                let name = event["type"].as_str().unwrap().to_string();
                ws.send(event);
                if what == "typing" {
                    // Typing has no answer of its own: a ping after it proves it was accepted.
                    ws.send(json!({"type": "ping"}));
                }
                let got = answer(&mut ws, &name, ok);
                let expected: Result<(), String> = match (acting, may_enter) {
                    (false, true) => Ok(()),
                    (false, false) => Err("forbidden".into()),
                    (true, false) => Err("not_joined".into()),
                    (true, true) if matches!(what, "edit" | "delete") && *user != "alice" => Err("forbidden".into()),
                    (true, true) => Ok(()),
                };
                if outcome(&got) != expected {
                    failures.push(format!("{cred} / {what} in {room}: expected {expected:?}, got {got}"));
                }
                ws.close();
            }
        }
    }
    assert!(failures.is_empty(), "access decisions differ from the table:\n{}", failures.join("\n"));

    // The backend (the API key over REST) acts for any user of its project, in any room.
    let id = post_as(&hub, &key, "hr", "bob", "posted by the backend for a non-member");
    assert!(id.starts_with("m_"), "{id}");
    // Never across tenants.
    let (_, other) = hub.create_project("other");
    let resp = hub.get("/api/v1/rooms/hr/messages", Some(&other));
    assert_eq!(resp.status, 404, "another project's room: {resp:?}");
}

/// A token limited to `lobby` could read the whole history of any room its user could
/// otherwise see (the audit's second finding).
#[test]
fn history_honours_the_token_room_scope() {
    let hub = Hub::start();
    let (pid, key) = hub.create_project("scope");
    hub.create_room(&key, "lobby", "public");
    let resp = hub.post("/api/v1/rooms", Some(&key), &json!({"name": "hr", "type": "private", "members": ["alice"]}));
    assert_eq!(resp.status, 201);
    post_as(&hub, &key, "hr", "alice", "salaries");
    let exp = unix_now_secs() as u64 + 600;
    let scoped = token::sign(&json!({"iss": pid, "sub": "alice", "exp": exp, "rooms": ["lobby"]}), key.as_bytes());
    let mut ws = hub.ws_raw(&format!("/?token={}", pct(&scoped))).expect("connect");
    assert_eq!(ws.recv()["type"], "connected");
    for room in ["hr", "lobby"] {
        ws.send(json!({"type": "history", "room": room}));
        let got = answer(&mut ws, "history", &["history"]);
        if room == "hr" {
            assert_eq!(got["code"], "forbidden", "out of the token's scope: {got}");
        } else {
            assert_eq!(got["type"], "history", "{got}");
        }
    }
}

/// Fills `room` with `n` messages of `size` bytes over one keep-alive connection.
fn fill(hub: &Hub, key: &str, room: &str, n: usize, size: usize) {
    let mut http = hub.http();
    let body = json!({"userId": "filler", "content": "x".repeat(size)}).to_string();
    let path = format!("/api/v1/rooms/{room}/messages");
    for i in 0..n {
        let resp =
            http.request("POST", &path, &[("X-API-Key", key), ("Content-Type", "application/json")], Some(&body));
        assert_eq!(resp.status, 201, "message {i}: {resp:?}");
    }
}

/// The audit's first finding: a burst of `join since:0` into a room of 1,000 messages of
/// 32 KB made the hub read and encode up to 32 MB per join. Now the replay is measured from
/// the size index before any row is read, and the connection's read allowance refuses what
/// goes past it. Bounded, not timed: the hub's CPU time for the burst is the measure.
#[test]
fn heavy_replays_pages_and_receipts_cost_what_they_answer() {
    // Every budget is lifted: what is measured is the work each request does, so a hub
    // that read whole rows to measure a replay would spend seconds here.
    let hub = Hub::start_with(&[
        "--max-rest-requests-per-second",
        "100000",
        "--max-events-per-second",
        "100000",
        "--max-read-bytes-per-second",
        "1000000000000",
        "--max-rest-read-bytes-per-second",
        "1000000000000",
    ]);
    let (_, key) = hub.create_project("heavy");
    hub.create_room(&key, "town", "public");
    fill(&hub, &key, "town", 1000, 32_000);
    let mut ws = hub.ws(&key, "mallory");
    let cpu_before = cpu_time_of(hub.pid());
    let (mut not_recovered, mut limited) = (0, 0);
    for _ in 0..100 {
        ws.send(json!({"type": "join", "room": "town", "since": 0}));
        let got = answer(&mut ws, "join", &["joined"]);
        match got["type"].as_str() {
            Some("joined") => {
                assert_eq!(got["recovered"], false, "1,000 × 32 KB cannot be replayed at once: {got}");
                not_recovered += 1;
                ws.send(json!({"type": "leave", "room": "town"}));
                answer(&mut ws, "leave", &["left"]);
            }
            _ => {
                assert_eq!(got["code"], "rate_limited", "{got}");
                limited += 1;
            }
        }
    }
    // History pages: each costs what it returns, at most half the outbound limit.
    let mut pages = 0;
    for _ in 0..20 {
        ws.send(json!({"type": "history", "room": "town", "limit": 1000}));
        let got = answer(&mut ws, "history", &["history"]);
        if got["type"] == "history" {
            let n = got["messages"].as_array().map_or(0, Vec::len);
            assert!((1..=17).contains(&n), "a page of 32 KB messages holds what fits 512 KiB: {n}");
            pages += 1;
        } else {
            assert_eq!(got["code"], "rate_limited", "{got}");
        }
    }
    assert_eq!(pages, 20, "no budget refuses here");
    // REST pages are cut by bytes before the rows are read.
    let resp = hub.get("/api/v1/rooms/town/messages?limit=1000", Some(&key));
    assert_eq!(resp.status, 200, "{resp:?}");
    let n = resp.json()["messages"].as_array().map_or(0, Vec::len);
    assert!((1..=17).contains(&n), "REST page cut to its byte budget: {n}");
    let spent = cpu_time_of(hub.pid()).saturating_sub(cpu_before);
    assert_eq!((not_recovered, limited), (100, 0), "every join answered recovered:false");
    // Before the fix this burst read 100 × 32 MB (seconds of CPU); now it reads sizes only.
    assert!(spent < Duration::from_millis(1500), "100 heavy joins and 20 pages took {spent:?} of hub CPU");

    // `read` carries at most --max-ids-per-read ids, checked through the id index.
    let ids: Vec<String> = (0..101).map(|i| format!("m_{i}")).collect();
    ws.send(json!({"type": "join", "room": "town"}));
    answer(&mut ws, "join", &["joined"]);
    ws.send(json!({"type": "read", "room": "town", "messageIds": ids}));
    let got = answer(&mut ws, "read", &["read_receipt"]);
    assert_eq!(got["code"], "bad_request", "101 ids: {got}");
    assert!(got["message"].as_str().unwrap_or("").contains("100"), "{got}");
}

/// A user's read allowance is its own and shared by its connections: a neighbour that
/// exhausted its allowance does not slow another user's history, a new connection does not
/// reset it, and the allowance refills with time.
#[test]
fn the_read_allowance_refuses_then_refills() {
    let hub = Hub::start_with(&["--max-read-bytes-per-second", "20000"]);
    let (_, key) = hub.create_project("allowance");
    hub.create_room(&key, "town", "public");
    fill(&hub, &key, "town", 10, 5_000);
    let mut greedy = hub.ws(&key, "greedy");
    greedy.send(json!({"type": "history", "room": "town", "limit": 10}));
    assert_eq!(answer(&mut greedy, "history", &["history"])["type"], "history", "the first page is admitted");
    greedy.send(json!({"type": "history", "room": "town", "limit": 10}));
    let refused = answer(&mut greedy, "history", &["history"]);
    assert_eq!(refused["code"], "rate_limited", "≈ 52 KB read with a 20 KB/s allowance: {refused}");
    assert!(refused["message"].as_str().unwrap_or("").contains("retry in"), "{refused}");
    // A join whose replay cannot be paid now still joins, and says the client must page.
    greedy.send(json!({"type": "join", "room": "town", "since": 2}));
    let joined = answer(&mut greedy, "join", &["joined"]);
    assert_eq!((joined["type"].as_str(), joined["recovered"].as_bool()), (Some("joined"), Some(false)), "{joined}");
    let text = metrics_text(&hub);
    assert!(metric_value(&text, "realtimehub_quota_refusals_total{quota=\"ws_read_bytes\"}") >= 2.0, "{text}");
    // The allowance is the user's: a fresh connection does not buy a fresh budget.
    let mut again = hub.ws(&key, "greedy");
    again.send(json!({"type": "history", "room": "town", "limit": 10}));
    assert_eq!(answer(&mut again, "history", &["history"])["code"], "rate_limited", "reconnecting resets nothing");
    let mut other = hub.ws(&key, "other");
    other.send(json!({"type": "history", "room": "town", "limit": 10}));
    assert_eq!(answer(&mut other, "history", &["history"])["type"], "history", "another connection is not charged");
    // Refilled after about 2.6 s: retry until admitted, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        greedy.send(json!({"type": "history", "room": "town", "limit": 1}));
        if answer(&mut greedy, "history", &["history"])["type"] == "history" {
            break;
        }
        assert!(Instant::now() < deadline, "the allowance never refilled");
    }
}

/// REST has a request budget and a read budget per API key; a key over either gets 429 with
/// `Retry-After`, and other keys are not charged.
#[test]
fn rest_budgets_are_per_api_key() {
    let hub = Hub::start_with(&["--max-rest-requests-per-second", "2"]);
    let (_, key) = hub.create_project("busy");
    let (_, calm) = hub.create_project("calm");
    let mut http = hub.http();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = http.request("GET", "/api/v1/rooms", &[("X-API-Key", key.as_str())], None);
        if resp.status == 429 {
            assert_eq!(resp.json()["error"]["code"], "rate_limited", "{resp:?}");
            let retry: u64 = resp.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After seconds");
            assert!(retry >= 1, "{retry}");
        }
        statuses.push(resp.status);
    }
    assert_eq!(&statuses[..2], &[200; 2], "the burst: {statuses:?}");
    assert!(statuses[2..].contains(&429), "past the burst: {statuses:?}");
    assert_eq!(hub.get("/api/v1/rooms", Some(&calm)).status, 200, "another key keeps its budget");
    assert_eq!(hub.get("/health", None).status, 200, "health is never budgeted");
    let text = metrics_text(&hub);
    assert!(metric_value(&text, "realtimehub_quota_refusals_total{quota=\"rest_requests\"}") >= 1.0, "{text}");

    let hub = Hub::start_with(&["--max-rest-read-bytes-per-second", "20000", "--max-rest-requests-per-second", "1000"]);
    let (_, key) = hub.create_project("reader");
    hub.create_room(&key, "town", "public");
    fill(&hub, &key, "town", 10, 5_000);
    let first = hub.get("/api/v1/rooms/town/messages?limit=10", Some(&key));
    assert_eq!(first.status, 200);
    let second = hub.get("/api/v1/rooms/town/messages?limit=10", Some(&key));
    assert_eq!(second.status, 429, "≈ 52 KB read with a 20 KB/s budget: {second:?}");
    assert!(second.header("retry-after").is_some(), "{second:?}");
}

/// Quotas per tenant: projects per address and hour (open creation only), rooms per project,
/// members per room, stored bytes per project; each answered 429 / 413 and counted.
#[test]
fn tenant_quotas_refuse_clearly_and_are_counted() {
    let hub = Hub::start_with(&[
        "--max-projects-per-ip-per-hour",
        "2",
        "--max-rooms-per-project",
        "2",
        "--max-members-per-room",
        "2",
        "--max-stored-bytes-per-project",
        "3000",
    ]);
    let (_, key) = hub.create_project("one");
    hub.create_project("two");
    let third = hub.post("/api/v1/projects", None, &json!({"name": "three"}));
    assert_eq!(third.status, 429, "{third:?}");
    assert_eq!(third.json()["error"]["code"], "rate_limited");
    assert!(third.header("retry-after").is_some(), "{third:?}");

    hub.create_room(&key, "a", "public");
    let resp =
        hub.post("/api/v1/rooms", Some(&key), &json!({"name": "p", "type": "private", "members": ["u1", "u2", "u3"]}));
    assert_eq!(resp.status, 429, "three members over a quota of two: {resp:?}");
    let resp = hub.post("/api/v1/rooms", Some(&key), &json!({"name": "p", "type": "private", "members": ["u1", "u2"]}));
    assert_eq!(resp.status, 201, "{resp:?}");
    let resp = hub.post("/api/v1/rooms", Some(&key), &json!({"name": "c", "type": "public"}));
    assert_eq!(resp.status, 429, "a third room: {resp:?}");
    assert!(resp.json()["error"]["message"].as_str().unwrap_or("").contains("2 rooms"), "{resp:?}");
    assert_eq!(hub.put("/api/v1/rooms/p/members/u3", Some(&key), None).status, 429, "a third member");
    assert_eq!(hub.put("/api/v1/rooms/p/members/u2", Some(&key), None).status, 204, "an existing member");
    assert_eq!(hub.delete("/api/v1/rooms/p/members/u2", Some(&key)).status, 204);
    assert_eq!(hub.put("/api/v1/rooms/p/members/u3", Some(&key), None).status, 204, "room again after a removal");
    let view = hub.get("/api/v1/rooms/p", Some(&key)).json();
    assert_eq!(view["members"], json!(["u1", "u3"]), "members come from the store: {view}");

    // Stored bytes: 1,000-byte messages fill a 3,000-byte quota after two.
    let body = json!({"userId": "u", "content": "x".repeat(1000)});
    let statuses: Vec<u16> = (0..4).map(|_| hub.post("/api/v1/rooms/a/messages", Some(&key), &body).status).collect();
    assert_eq!(statuses, vec![201, 201, 413, 413], "{statuses:?}");
    let resp = hub.post("/api/v1/rooms/a/messages", Some(&key), &body);
    assert_eq!(resp.json()["error"]["code"], "payload_too_large", "{resp:?}");
    let mut ws = hub.ws(&key, "u");
    ws.join("a");
    ws.send(json!({"type": "message", "room": "a", "content": "y".repeat(1000), "tempId": "q"}));
    let got = answer(&mut ws, "message", &["message_id_mapping"]);
    assert_eq!(got["code"], "too_large", "{got}");
    assert_eq!(got["tempId"], "q", "{got}");
    let text = metrics_text(&hub);
    for quota in ["projects_per_ip", "rooms", "members", "stored_bytes"] {
        let series = format!("realtimehub_quota_refusals_total{{quota=\"{quota}\"}}");
        assert!(metric_value(&text, &series) >= 1.0, "{series} in {text}");
    }
    // Deleting the room frees its bytes.
    assert_eq!(hub.delete("/api/v1/rooms/a", Some(&key)).status, 204);
    hub.create_room(&key, "a", "public");
    assert_eq!(hub.post("/api/v1/rooms/a/messages", Some(&key), &body).status, 201, "quota freed");

    // With an admin token, project creation is the operator's, not limited per address.
    let hub = Hub::start_with(&["--admin-token", "adm", "--max-projects-per-ip-per-hour", "1"]);
    for i in 0..3 {
        hub.create_project_with_admin(&format!("p{i}"), "adm");
    }
}

/// The stored-bytes quota is counted from the store at start-up, so a restart does not
/// reset it.
#[test]
fn the_storage_quota_survives_a_restart() {
    let mut hub = Hub::start_with(&["--max-stored-bytes-per-project", "2500"]);
    let (_, key) = hub.create_project("persist");
    hub.create_room(&key, "a", "public");
    let body = json!({"userId": "u", "content": "x".repeat(1000)});
    assert_eq!(hub.post("/api/v1/rooms/a/messages", Some(&key), &body).status, 201);
    assert_eq!(hub.post("/api/v1/rooms/a/messages", Some(&key), &body).status, 201);
    assert_eq!(hub.terminate().code(), Some(0));
    let again = Hub::start_at(&hub.db_path, &["--max-stored-bytes-per-project", "2500"]);
    assert_eq!(again.post("/api/v1/rooms/a/messages", Some(&key), &body).status, 413, "still full after a restart");
}

/// Retention: `--retention-messages-per-room N` keeps the newest N (deleting in batches of
/// N/8); a replay from before the oldest kept message answers `recovered:false`.
#[test]
fn retention_keeps_the_newest_messages() {
    let hub = Hub::start_with(&["--retention-messages-per-room", "16"]);
    let (_, key) = hub.create_project("retain");
    hub.create_room(&key, "a", "public");
    fill(&hub, &key, "a", 40, 10);
    let page = hub.get("/api/v1/rooms/a/messages?limit=100", Some(&key)).json();
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!((16..=18).contains(&seqs.len()), "16 kept, plus at most 16/8 before the next trim: {seqs:?}");
    assert_eq!(*seqs.last().unwrap(), 40, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "kept messages stay gapless: {seqs:?}");
    let mut ws = hub.ws(&key, "late");
    ws.send(json!({"type": "join", "room": "a", "since": 2}));
    let joined = answer(&mut ws, "join", &["joined"]);
    assert_eq!(joined["recovered"], false, "messages 3.. were dropped by retention: {joined}");
    ws.send(json!({"type": "leave", "room": "a"}));
    answer(&mut ws, "leave", &["left"]);
    ws.send(json!({"type": "join", "room": "a", "since": 35}));
    let joined = answer(&mut ws, "join", &["joined"]);
    assert_eq!(joined["recovered"], true, "{joined}");
    for seq in 36..=40 {
        assert_eq!(ws.recv_type("message")["seq"], seq);
    }
}

/// Members of private rooms live in the store, not in memory: ten rooms of 9,000 members
/// with 100-byte ids (about 9 MB of request bodies) cost the hub a few MiB, where keeping
/// them in memory cost about six times the request bytes.
#[test]
fn large_member_lists_stay_out_of_memory() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("big");
    hub.create_room(&key, "warmup", "public");
    let before = rss_kib_of(hub.pid());
    for r in 0..10 {
        let members: Vec<String> = (0..9000).map(|i| format!("{r:02}-{i:06}-{}", "m".repeat(90))).collect();
        let resp = hub.post(
            "/api/v1/rooms",
            Some(&key),
            &json!({"name": format!("p{r}"), "type": "private", "members": members}),
        );
        assert_eq!(resp.status, 201, "room {r}: {resp:?}");
    }
    let grown = rss_kib_of(hub.pid()).saturating_sub(before);
    assert!(grown < 24 * 1024, "90,000 members grew the hub by {grown} KiB");
    let mut ws = hub.ws(&key, &format!("03-000042-{}", "m".repeat(90)));
    ws.join("p3");
    let mut stranger = hub.ws(&key, "nobody");
    stranger.send(json!({"type": "join", "room": "p3"}));
    assert_eq!(answer(&mut stranger, "join", &["joined"])["code"], "forbidden");
}

/// Decisions the audit asked for: a token may not claim a lifetime past
/// `--max-token-lifetime-ms` (a token with `exp: 1e300` was accepted), and user ids may not
/// hold bidirectional overrides or zero-width characters (display spoofing).
#[test]
fn token_lifetimes_and_user_ids_are_bounded() {
    let hub = Hub::start();
    let (pid, key) = hub.create_project("decisions");
    let now = unix_now_secs();
    for (exp, admitted) in [(json!(now + 3600.0), true), (json!(now + 3.0 * 86400.0), false), (json!(1e300), false)] {
        let t = token::sign(&json!({"iss": pid, "sub": "alice", "exp": exp}), key.as_bytes());
        let status = common::expect_http_status_or_ok(hub.ws_raw(&format!("/?token={}", pct(&t))));
        assert_eq!(status == 101, admitted, "exp {exp}: status {status}");
        if !admitted {
            assert_eq!(status, 401, "exp {exp}");
        }
    }
    let hub2 = Hub::start_with(&["--max-token-lifetime-ms", &(7u64 * 86_400_000).to_string()]);
    let (pid2, key2) = hub2.create_project("longer");
    let t = token::sign(&json!({"iss": pid2, "sub": "alice", "exp": now + 3.0 * 86400.0}), key2.as_bytes());
    assert_eq!(common::expect_http_status_or_ok(hub2.ws_raw(&format!("/?token={}", pct(&t)))), 101, "raised limit");

    for spoof in ["admin\u{202E}gnp.exe", "bob\u{200B}", "\u{2066}carol\u{2069}", "\u{FEFF}dave"] {
        let status =
            common::expect_http_status_or_ok(hub.ws_raw(&format!("/?apiKey={}&userId={}", pct(&key), pct(spoof))));
        assert_eq!(status, 400, "userId {spoof:?}");
        let t = token::sign(&json!({"iss": pid, "sub": spoof, "exp": now + 60.0}), key.as_bytes());
        assert_eq!(common::expect_http_status_or_ok(hub.ws_raw(&format!("/?token={}", pct(&t)))), 401, "sub {spoof:?}");
    }
    hub.create_room(&key, "a", "public");
    let resp = hub.post("/api/v1/rooms/a/messages", Some(&key), &json!({"userId": "x\u{202E}y", "content": "c"}));
    assert_eq!(resp.status, 400, "{resp:?}");
    let ok = hub.ws(&key, "👩\u{200D}💻");
    drop(ok);
}

/// A `read` naming many ids may broadcast one receipt per id to the whole room: each id
/// costs one event of the sender's rate budget, as a message would.
#[test]
fn read_receipts_cost_one_event_per_id() {
    let hub = Hub::start_with(&["--max-events-per-second", "10"]);
    let (_, key) = hub.create_project("receipts");
    hub.create_room(&key, "town", "public");
    let ids: Vec<String> = (0..20).map(|i| post_as(&hub, &key, "town", "u", &format!("m{i}"))).collect();
    let mut ws = hub.ws(&key, "reader");
    ws.join("town");
    ws.send(json!({"type": "read", "room": "town", "messageIds": ids}));
    let got = answer(&mut ws, "read", &["read_receipt"]);
    assert_eq!(got["code"], "rate_limited", "20 ids with a budget of 10 events: {got}");
    ws.send(json!({"type": "read", "room": "town", "messageIds": &ids[..3]}));
    assert_eq!(answer(&mut ws, "read", &["read_receipt"])["type"], "read_receipt", "3 ids fit");
}

/// `GET /api/v1/rooms/{room}` of a private room lists at most `--max-members-per-room`
/// members, and listings are paid from the key's read budget by the bytes they return.
#[test]
fn listings_are_bounded_and_paid_by_their_bytes() {
    let hub = Hub::start_with(&["--max-rest-read-bytes-per-second", "3000"]);
    let (_, key) = hub.create_project("listings");
    let members: Vec<String> = (0..100).map(|i| format!("member-{i:03}-{}", "x".repeat(40))).collect();
    let resp = hub.post("/api/v1/rooms", Some(&key), &json!({"name": "p", "type": "private", "members": members}));
    assert_eq!(resp.status, 201);
    let first = hub.get("/api/v1/rooms/p", Some(&key));
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["members"].as_array().map(Vec::len), Some(100));
    let second = hub.get("/api/v1/rooms/p", Some(&key));
    assert_eq!(second.status, 429, "≈ 5.5 KB listed with a 3 KB/s budget: {second:?}");
    assert!(second.header("retry-after").is_some());
}
