//! Signed user tokens: JWT with HS256, the way Pusher and Centrifugo users
//! authorise browsers without handing them the API key.
//!
//! The project's backend signs `{"iss": PROJECT_ID, "sub": USER_ID, "exp":
//! SECONDS, "rooms"?: [ROOM…]}` with the project's API key as the HMAC
//! secret; the browser connects with `?token=JWT`. Only `HS256` is accepted
//! (so `alg: none` and algorithm confusion are refused), the signature is
//! checked in constant time, and `exp` is required.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::model::{valid_room_name, valid_user_id};

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The project (`iss`).
    pub project: String,
    /// The user (`sub`).
    pub user: String,
    /// When the token, and any connection made with it, ends (ms since the epoch).
    pub expires_at_ms: i64,
    /// The only rooms the user may join, when the token names them.
    pub rooms: Option<Vec<String>>,
}

/// Why a token was refused; every variant is answered 401 before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed(&'static str),
    /// `alg` is not `HS256` (including `none`).
    Algorithm,
    /// The signature does not match the project's secret.
    Signature,
    /// `exp` is in the past, or `nbf` in the future.
    Expired,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::Algorithm => write!(f, "token algorithm must be HS256"),
            TokenError::Signature => write!(f, "token signature is not valid"),
            TokenError::Expired => write!(f, "token is expired or not yet valid"),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Payload {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    rooms: Option<Vec<String>>,
}

fn parts(token: &str) -> Result<[&str; 3], TokenError> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Ok([h, p, s]),
        _ => Err(TokenError::Malformed("expected header.payload.signature")),
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str, what: &'static str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(what))
}

/// The project a token claims to belong to, read before the signature can be
/// checked (the project's secret is needed for that). Trust nothing else.
pub fn issuer(token: &str) -> Result<String, TokenError> {
    let [_, payload, _] = parts(token)?;
    let payload: Payload = decode_json(payload, "payload is not base64url JSON")?;
    payload.iss.ok_or(TokenError::Malformed("missing `iss` (the project id)"))
}

/// Verifies a token against the project's secret at time `now_ms`.
pub fn verify(token: &str, secret: &[u8], now_ms: i64) -> Result<Claims, TokenError> {
    let [header_b64, payload_b64, signature_b64] = parts(token)?;
    let header: Header = decode_json(header_b64, "header is not base64url JSON")?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| TokenError::Malformed("signature"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| TokenError::Signature)?;
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
    let payload: Payload = decode_json(payload_b64, "payload is not base64url JSON")?;
    let project = payload.iss.ok_or(TokenError::Malformed("missing `iss` (the project id)"))?;
    let user = payload.sub.ok_or(TokenError::Malformed("missing `sub` (the user id)"))?;
    if !valid_user_id(&user) {
        return Err(TokenError::Malformed("`sub` is not a valid user id"));
    }
    let exp = payload.exp.ok_or(TokenError::Malformed("missing `exp`"))?;
    let expires_at_ms = (exp * 1000.0) as i64;
    if expires_at_ms <= now_ms || payload.nbf.is_some_and(|nbf| (nbf * 1000.0) as i64 > now_ms) {
        return Err(TokenError::Expired);
    }
    if let Some(rooms) = &payload.rooms {
        if rooms.iter().any(|r| !valid_room_name(r)) {
            return Err(TokenError::Malformed("`rooms` must hold room names"));
        }
    }
    Ok(Claims { project, user, expires_at_ms, rooms: payload.rooms })
}

/// Signs claims as a backend would; used by tests and documentation examples.
pub fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_795_290_414_000;

    #[test]
    fn a_valid_token_grants_its_claims() {
        let token = sign(&json!({"iss": "p_1", "sub": "alice", "exp": NOW / 1000 + 60, "rooms": ["a"]}), b"k");
        assert_eq!(issuer(&token).unwrap(), "p_1");
        let claims = verify(&token, b"k", NOW).unwrap();
        assert_eq!(claims.user, "alice");
        assert_eq!(claims.rooms, Some(vec!["a".to_string()]));
        assert_eq!(claims.expires_at_ms, NOW + 60_000);
    }

    #[test]
    fn bad_tokens_are_refused_for_the_right_reason() {
        let good = sign(&json!({"iss": "p_1", "sub": "alice", "exp": NOW / 1000 + 60}), b"k");
        assert_eq!(verify(&good, b"other", NOW), Err(TokenError::Signature));
        let expired = sign(&json!({"iss": "p_1", "sub": "alice", "exp": NOW / 1000 - 1}), b"k");
        assert_eq!(verify(&expired, b"k", NOW), Err(TokenError::Expired));
        let early = sign(&json!({"iss": "p_1", "sub": "a", "exp": NOW / 1000 + 60, "nbf": NOW / 1000 + 30}), b"k");
        assert_eq!(verify(&early, b"k", NOW), Err(TokenError::Expired));
        let no_exp = sign(&json!({"iss": "p_1", "sub": "alice"}), b"k");
        assert!(matches!(verify(&no_exp, b"k", NOW), Err(TokenError::Malformed(_))));
        // alg none with an empty signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = good.split('.').nth(1).unwrap();
        assert_eq!(verify(&format!("{header}.{payload}."), b"k", NOW), Err(TokenError::Algorithm));
        // A tampered payload breaks the signature.
        let forged = URL_SAFE_NO_PAD.encode(json!({"iss": "p_1", "sub": "admin", "exp": NOW}).to_string());
        let mut pieces: Vec<&str> = good.split('.').collect();
        pieces[1] = &forged;
        assert_eq!(verify(&pieces.join("."), b"k", NOW), Err(TokenError::Signature));
        for junk in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert!(matches!(verify(junk, b"k", NOW), Err(TokenError::Malformed(_))), "{junk}");
        }
    }
}
