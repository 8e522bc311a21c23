//! Request signing: HMAC-SHA256 over `{id}.{timestamp}.{body}`, and its verifier.
//!
//! Every delivery request carries the delivery id ([`ID_HEADER`]), the unix time it was signed
//! at ([`TIMESTAMP_HEADER`]) and the signature ([`SIGNATURE_HEADER`]). The signed content binds
//! all three, so a captured request can neither be re-pointed at another delivery nor replayed
//! outside the timestamp tolerance.
//!
//! The header holds one `v1=<hex>` entry per active secret, space-separated. While a secret is
//! rotated both the old and the new one are active, so a partner that knows either accepts the
//! request; after the partner has switched, the old secret is dropped. Entries with another
//! version prefix are ignored, so a later scheme can be added next to `v1` without breaking
//! partners that only know `v1`.
//!
//! ```
//! use redrain_delivery::sign::{sign, verify, DEFAULT_TOLERANCE_S};
//!
//! let header = sign(&["old-secret", "new-secret"], "d_1", 1_700_000_000, b"{}");
//! // A partner that only has the new secret still accepts it.
//! assert!(verify(&["new-secret"], "d_1", 1_700_000_000, b"{}", &header,
//!                1_700_000_010, DEFAULT_TOLERANCE_S).is_ok());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The idempotency key; redrain sets it to the delivery id.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The delivery id (signed).
pub const ID_HEADER: &str = "redrain-delivery-id";
/// When the request was signed: unix seconds, decimal (signed).
pub const TIMESTAMP_HEADER: &str = "redrain-timestamp";
/// The signature: `v1=<lowercase hex of HMAC-SHA256>` per active secret, space-separated.
pub const SIGNATURE_HEADER: &str = "redrain-signature";
/// How far a signature's timestamp may be from the verifier's clock, either way.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// The signature scheme this module writes and checks.
const V1_PREFIX: &str = "v1=";
/// Hex digits of one HMAC-SHA256.
const V1_HEX_LEN: usize = 64;
/// The most entries a header may hold: verification costs entries × secrets HMAC checks, and
/// rotation needs two.
pub const MAX_ENTRIES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature is valid but its timestamp is further from now than the tolerance (a
    /// replay, or a clock that is off).
    #[error(
        "signature timestamp {timestamp_s} is too far from now ({now_s}, unix seconds); \
         replayed request or clock skew"
    )]
    Stale {
        /// The signed timestamp.
        timestamp_s: u64,
        /// The verifier's clock.
        now_s: u64,
    },
    /// The header cannot be read (the reason says what is wrong).
    #[error("malformed signature header: {0}")]
    Malformed(String),
    /// No `v1` entry matches any of the secrets.
    #[error("signature does not match any active secret")]
    Mismatch,
}

/// The HMAC over `{id}.{timestamp_s}.{body}`, ready to finalize or verify.
fn mac(secret: &[u8], id: &str, timestamp_s: u64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp_s.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The [`SIGNATURE_HEADER`] value for a request: one `v1=<hex>` per secret, in the order given,
/// separated by single spaces. No secrets give an empty string, which [`verify`] refuses.
pub fn sign<S: AsRef<[u8]>>(secrets: &[S], id: &str, timestamp_s: u64, body: &[u8]) -> String {
    let mut out = String::with_capacity(secrets.len() * (V1_PREFIX.len() + V1_HEX_LEN + 1));
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(V1_PREFIX);
        for b in mac(secret.as_ref(), id, timestamp_s, body)
            .finalize()
            .into_bytes()
        {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `v1` value: exactly 64 hex digits.
fn decode_v1(value: &str) -> Option<[u8; 32]> {
    let v = value.as_bytes();
    if v.len() != V1_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// Checks a request's [`SIGNATURE_HEADER`] against the secrets the verifier holds.
///
/// Accepts if any `v1=` entry matches any secret (compared in constant time), and then only if
/// `timestamp_s` is within `tolerance_s` of `now_s` either way. The signature is checked first,
/// so [`VerifyError::Stale`] is only ever reported for an authentic request. Entries with
/// other version prefixes are ignored; a header with no `v1` entry, more than
/// [`MAX_ENTRIES`] entries, an entry without `=`, or a `v1` value that is not 64 hex digits is
/// [`VerifyError::Malformed`].
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    id: &str,
    timestamp_s: u64,
    body: &[u8],
    header: &str,
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let mut candidates = Vec::new();
    for (n, entry) in header.split_ascii_whitespace().enumerate() {
        if n >= MAX_ENTRIES {
            return Err(VerifyError::Malformed(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let Some((version, value)) = entry.split_once('=') else {
            return Err(VerifyError::Malformed(format!(
                "entry {entry:?} is not version=value"
            )));
        };
        if version != "v1" {
            continue;
        }
        let sig = decode_v1(value).ok_or_else(|| {
            VerifyError::Malformed(format!("v1 value {value:?} is not {V1_HEX_LEN} hex digits"))
        })?;
        candidates.push(sig);
    }
    if candidates.is_empty() {
        return Err(VerifyError::Malformed("no v1= entry".to_string()));
    }
    let matched = secrets.iter().any(|secret| {
        let m = mac(secret.as_ref(), id, timestamp_s, body);
        candidates
            .iter()
            .any(|sig| m.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(VerifyError::Mismatch);
    }
    if now_s.abs_diff(timestamp_s) > tolerance_s {
        return Err(VerifyError::Stale { timestamp_s, now_s });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_through_decode() {
        let header = sign(&["k"], "x", 0, b"");
        let value = header.strip_prefix(V1_PREFIX).unwrap();
        let bytes = decode_v1(value).unwrap();
        assert_eq!(
            bytes.as_slice(),
            mac(b"k", "x", 0, b"").finalize().into_bytes().as_slice()
        );
        assert_eq!(decode_v1(&value.to_uppercase()), Some(bytes));
        assert_eq!(decode_v1(&value[1..]), None);
    }

    #[test]
    fn no_secrets_sign_to_an_empty_header() {
        let none: [&str; 0] = [];
        assert_eq!(sign(&none, "x", 0, b""), "");
    }
}
