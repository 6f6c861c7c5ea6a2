//! The client-event decoder, alone and behind a real hub connection.
//!
//! The bytes (as UTF-8, lossily) are one WebSocket text frame. Decoding must
//! not panic; a refusal names the event when one could be read. The same text
//! from a joined connection must never produce an `internal` error or a frame
//! for a connection that is not open, a refusal must be exactly one
//! `bad_request` error frame to the sender, and once both connections close,
//! nothing may remain connected or online.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::borrow::Cow;
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use realtimehub::core::decode_client_event;
use serde_json::json;

use common::{Fixture, Seen};
use realtimehub::core::HubConfig;

thread_local! {
    /// For text that does not decode, which changes nothing: one hub for all
    /// runs (no rate limit, so run counts do not matter).
    static SHARED: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn unlimited() -> Fixture {
    Fixture::with_config(HubConfig { max_events_per_second: u32::MAX, ..HubConfig::default() })
}

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(t) => Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(data),
    };
    let decoded = decode_client_event(&text).map(|e| e.name()).map_err(|e| (e.event, e.temp_id, e.message));
    if let Err((_, _, message)) = &decoded {
        assert!(!message.is_empty());
    }
    if let Ok(name) = &decoded {
        // A decoded event's name is its `type`. JSON's grammar allows numbers
        // that serde_json::Value cannot hold (an exponent past f64's range) in
        // fields the decoder ignores without evaluating them, so compare only
        // when Value can represent the text.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            assert_eq!(v["type"], *name);
        }
    }

    if let Err((event, temp_id, _)) = &decoded {
        SHARED.with(|cell| {
            let mut slot = cell.borrow_mut();
            let f = slot.get_or_insert_with(unlimited);
            f.hub.handle_ws_text(f.alice, &text, f.now);
            let seen = f.drain();
            let [Seen::Frame(to, v)] = &seen[..] else { panic!("a refusal answered {seen:?}") };
            assert_eq!(*to, f.alice);
            assert_eq!((&v["type"], &v["code"]), (&json!("error"), &json!("bad_request")), "{v}");
            assert_eq!(v["event"], json!(event), "{v}");
            assert_eq!(v.get("tempId"), temp_id.as_ref().map(|t| json!(t)).as_ref(), "{v}");
            assert_eq!(f.hub.connection_count(), 2);
        });
        return;
    }

    // A valid event may change the hub: a fresh one for each.
    let mut f = Fixture::new();
    let (alice, bob) = (f.alice, f.bob);
    f.hub.handle_ws_text(alice, &text, f.now);
    let seen = f.drain();
    for s in &seen {
        match s {
            Seen::Frame(to, v) => {
                assert!(*to == alice || *to == bob, "frame to {to}");
                assert_ne!(v["code"], "internal", "{v}");
            }
            Seen::Response(..) => panic!("a response to a WebSocket frame"),
            Seen::Close(to, code) => panic!("close {code} of {to} after one frame"),
        }
    }
    // Typing expires and only says isTyping:false.
    for s in f.expire_typing() {
        let Seen::Frame(_, v) = s else { panic!("a timeout answered {s:?}") };
        assert_eq!((&v["type"], &v["isTyping"]), (&json!("typing"), &json!(false)), "{v}");
    }
    f.close_all_and_check();
});
