//! The core fed arbitrary event sequences: the bytes are a program for the
//! state-machine harness of `tests/state_machine.rs` (the same model and
//! invariants the property test checks with xorshift programs).

#![no_main]

#[allow(dead_code)]
#[path = "../../tests/state_machine.rs"]
mod state_machine;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    state_machine::run_bytes(data);
});
