//! Identifiers and secrets. Randomness comes from outside (an [`Entropy`]) so
//! the core stays deterministic under test.

/// A source of random bytes: the OS in production, a counter in tests.
pub trait Entropy {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// Makes ids: random ones for projects, rooms and keys; time-ordered ones for
/// messages (milliseconds, a per-boot nonce and a counter: unique without a
/// syscall per message).
pub struct Ids {
    entropy: Box<dyn Entropy>,
    boot_nonce: u32,
    counter: u32,
    /// The millisecond part of the last ordered id: ids never go back when
    /// the wall clock does, nor after a restart (see [`Ids::continue_after`]).
    last_ms: u64,
}

impl Ids {
    /// Draws the boot nonce from `entropy`.
    pub fn new(mut entropy: Box<dyn Entropy>) -> Ids {
        let mut nonce = [0u8; 4];
        entropy.fill(&mut nonce);
        Ids { entropy, boot_nonce: u32::from_le_bytes(nonce), counter: 0, last_ms: 0 }
    }

    /// This process's random number (in message ids and Pusher socket ids).
    pub fn boot_nonce(&self) -> u32 {
        self.boot_nonce
    }

    /// Random bytes (the backoff's jitter).
    pub fn fill_random(&mut self, buf: &mut [u8]) {
        self.entropy.fill(buf);
    }

    /// `prefix` + `bytes` random bytes in hex.
    pub fn random(&mut self, prefix: &str, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.entropy.fill(&mut buf);
        format!("{prefix}{}", to_hex(&buf))
    }

    /// A time-ordered unique id: `prefix` + 12 hex ms + 8 hex nonce + 8 hex
    /// counter. Ids of one prefix sort in the order they were made, within a
    /// boot and across restarts (after [`Ids::continue_after`]): Socket.IO
    /// sessions resume from the last message id they saw.
    pub fn ordered(&mut self, prefix: &str, unix_ms: i64) -> String {
        self.last_ms = self.last_ms.max(unix_ms.max(0) as u64 & 0xffff_ffff_ffff);
        self.counter = self.counter.wrapping_add(1);
        if self.counter == 0 {
            // 2^32 ids in one millisecond: the next millisecond keeps the order.
            self.last_ms += 1;
        }
        format!("{prefix}{:012x}{:08x}{:08x}", self.last_ms, self.boot_nonce, self.counter)
    }

    /// Makes every later ordered id sort after `last` (an id of an earlier
    /// boot, whose nonce may be greater than this one's).
    pub fn continue_after(&mut self, last: &str, prefix: &str) {
        let ms =
            last.strip_prefix(prefix).and_then(|rest| rest.get(..12)).and_then(|hex| u64::from_str_radix(hex, 16).ok());
        if let Some(ms) = ms {
            self.last_ms = self.last_ms.max(ms + 1);
        }
    }

    /// A new API key: `rh_` + the project's id digits + 128 random bits. The
    /// project part lets the key be looked up without comparing secrets in a
    /// hash map; the whole key is then compared in constant time.
    pub fn api_key(&mut self, project_id: &str) -> String {
        let digits = project_id.trim_start_matches("p_");
        let secret = self.random("", 16);
        format!("rh_{digits}{secret}")
    }
}

/// Bytes in lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// HMAC-SHA256 with `secret` of the concatenated `parts`, in lowercase hex:
/// the hub's signatures (webhooks, access hooks) and Pusher's.
pub fn hmac_sha256_hex(secret: &str, parts: &[&[u8]]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    to_hex(&mac.finalize().into_bytes())
}

/// The project id digits inside an API key, for the lookup.
pub fn project_digits_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("rh_").and_then(|rest| rest.get(..16))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic entropy for tests.
    pub struct CountingEntropy(pub u8);

    impl Entropy for CountingEntropy {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
    }

    #[test]
    fn keys_carry_the_project_and_compare_exactly() {
        let mut ids = Ids::new(Box::new(CountingEntropy(0)));
        let project = ids.random("p_", 8);
        let key = ids.api_key(&project);
        assert_eq!(project_digits_of_key(&key), Some(&project[2..]));
        assert_eq!(key.len(), 3 + 16 + 32);
        assert!(constant_time_eq(&key, &key.clone()));
        assert!(!constant_time_eq(&key, &key[..key.len() - 1]));
        let a = ids.ordered("m_", 5);
        let b = ids.ordered("m_", 5);
        assert_ne!(a, b);
    }

    #[test]
    fn ordered_ids_sort_in_the_order_they_were_made_whatever_the_clock() {
        let earlier_boot = "m_0000000000ffffffffff00000001";
        let mut ids = Ids::new(Box::new(CountingEntropy(0)));
        ids.continue_after(earlier_boot, "m_");
        let mut made = vec![earlier_boot.to_string()];
        // The same millisecond as the earlier boot, then the clock stepping back.
        for ms in [0xff, 0xff, 0x10, 0x100, 0x20] {
            made.push(ids.ordered("m_", ms));
        }
        let mut sorted = made.clone();
        sorted.sort();
        assert_eq!(made, sorted);
    }
}
