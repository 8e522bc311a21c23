//! The request signature against an independent HMAC (Python's `hmac`), rotation, refusals.

use proptest::prelude::*;
use redrain_delivery::sign::{sign, verify, VerifyError, DEFAULT_TOLERANCE_S};

/// `(secret, id, timestamp_s, body, hex)`, the hex computed once with
/// `hmac.new(secret, f"{id}.{ts}.".encode() + body, hashlib.sha256).hexdigest()`.
/// The same vectors are in docs/partners.md.
const VECTORS: &[(&str, &str, u64, &str, &str)] = &[
    (
        "redrain-demo-secret",
        "d_0001",
        1_700_000_000,
        r#"{"delivery_id":"d_0001","user":"u1","prize":"cash-small","amount_cents":100}"#,
        "44402b35dfa49ed4ce76a05e44977be1c590ca4b20c9d4183b4e2f451b4e48e8",
    ),
    (
        "whsec_old_2024",
        "w_9f3a",
        1_735_689_600,
        r#"{"delivery_id":"w_9f3a","user":"alice","prize":"coupon-10","sku":"SKU-10"}"#,
        "34b73329e9960b8e081308d7e05864ee6643bc9bf87b0d6311d7d972be47638a",
    ),
    (
        "whsec_new_2025",
        "w_9f3a",
        1_735_689_600,
        r#"{"delivery_id":"w_9f3a","user":"alice","prize":"coupon-10","sku":"SKU-10"}"#,
        "94b7ac891c6e9c55a472e18f47b9c839cf41b1dfce3e3bb71534763a675e4374",
    ),
    (
        "k",
        "x",
        0,
        "",
        "3bfd64db7696671d2d3adaf263d621bcf833df6bc6a2179a3848a4da9171b2ce",
    ),
];

const TS: u64 = 1_735_689_600;
const ID: &str = "w_9f3a";
const BODY: &[u8] =
    br#"{"delivery_id":"w_9f3a","user":"alice","prize":"coupon-10","sku":"SKU-10"}"#;

fn check(secrets: &[&str], header: &str) -> Result<(), VerifyError> {
    verify(secrets, ID, TS, BODY, header, TS + 1, DEFAULT_TOLERANCE_S)
}

#[test]
fn signatures_match_an_independent_hmac() {
    for &(secret, id, ts, body, hex) in VECTORS {
        let header = sign(&[secret], id, ts, body.as_bytes());
        assert_eq!(header, format!("v1={hex}"), "secret {secret:?}");
        assert_eq!(
            verify(
                &[secret],
                id,
                ts,
                body.as_bytes(),
                &header,
                ts,
                DEFAULT_TOLERANCE_S
            ),
            Ok(())
        );
    }
}

#[test]
fn several_secrets_give_one_entry_each_in_order() {
    let header = sign(&["whsec_old_2024", "whsec_new_2025"], ID, TS, BODY);
    assert_eq!(header, format!("v1={} v1={}", VECTORS[1].4, VECTORS[2].4));
}

#[test]
fn during_rotation_a_partner_with_either_secret_accepts() {
    let header = sign(&["whsec_old_2024", "whsec_new_2025"], ID, TS, BODY);
    assert_eq!(check(&["whsec_new_2025"], &header), Ok(()));
    assert_eq!(check(&["whsec_old_2024"], &header), Ok(()));
    assert_eq!(
        check(&["whsec_new_2025", "whsec_old_2024"], &header),
        Ok(())
    );
    // And a partner holding both accepts a sender that has already switched, or not yet.
    let both = ["whsec_old_2024", "whsec_new_2025"];
    assert_eq!(
        check(&both, &sign(&["whsec_new_2025"], ID, TS, BODY)),
        Ok(())
    );
    assert_eq!(
        check(&both, &sign(&["whsec_old_2024"], ID, TS, BODY)),
        Ok(())
    );
    assert_eq!(
        check(&["someone-else"], &header),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn any_change_to_what_is_signed_is_a_mismatch() {
    let header = sign(&["s"], ID, TS, BODY);
    let mut body = BODY.to_vec();
    body[10] ^= 1;
    let now = TS;
    let tol = DEFAULT_TOLERANCE_S;
    assert_eq!(verify(&["s"], ID, TS, BODY, &header, now, tol), Ok(()));
    assert_eq!(
        verify(&["s"], ID, TS, &body, &header, now, tol),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify(&["s"], "w_9f3b", TS, BODY, &header, now, tol),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify(&["s"], ID, TS + 1, BODY, &header, now, tol),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify(&["t"], ID, TS, BODY, &header, now, tol),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn timestamps_outside_the_tolerance_are_stale_either_way() {
    let header = sign(&["s"], ID, TS, BODY);
    let at = |now| verify(&["s"], ID, TS, BODY, &header, now, 300);
    assert_eq!(at(TS + 300), Ok(()));
    assert_eq!(at(TS - 300), Ok(()));
    assert_eq!(
        at(TS + 301),
        Err(VerifyError::Stale {
            timestamp_s: TS,
            now_s: TS + 301
        })
    );
    assert_eq!(
        at(TS - 301),
        Err(VerifyError::Stale {
            timestamp_s: TS,
            now_s: TS - 301
        })
    );
    // Forged and stale: the forgery is what is reported.
    assert_eq!(
        verify(&["t"], ID, TS, BODY, &header, TS + 10_000, 300),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn malformed_headers_are_refused_and_unknown_versions_ignored() {
    let good = sign(&["s"], ID, TS, BODY);
    let hex = good.strip_prefix("v1=").unwrap();
    let malformed = |h: &str| matches!(check(&["s"], h), Err(VerifyError::Malformed(_)));
    assert!(malformed(""));
    assert!(malformed("   "));
    assert!(malformed(hex), "no version prefix");
    assert!(malformed(&format!("v2={hex}")), "only unknown versions");
    assert!(malformed(&format!("v1={}", &hex[1..])), "short");
    assert!(malformed(&format!("v1={hex}0")), "long");
    assert!(malformed(&format!("v1={}g", &hex[1..])), "not hex");
    assert!(malformed(&format!("v1=>{}", &hex[1..])), "not hex");
    assert!(malformed(&"v0=x ".repeat(17)), "too many entries");
    // Unknown versions next to a good v1 entry are ignored; separators may be any whitespace.
    assert_eq!(check(&["s"], &format!("v2=zzz {good}")), Ok(()));
    assert_eq!(check(&["s"], &format!("{good}\tv9=1")), Ok(()));
    assert_eq!(
        check(
            &["s"],
            &format!("  {}  ", good.to_uppercase().replace("V1", "v1"))
        ),
        Ok(())
    );
    let none: [&str; 0] = [];
    assert_eq!(check(&none, &good), Err(VerifyError::Mismatch));
}

#[test]
fn errors_say_what_is_wrong() {
    let stale = VerifyError::Stale {
        timestamp_s: 5,
        now_s: 500,
    };
    assert!(stale.to_string().contains("5") && stale.to_string().contains("500"));
    let m = check(&["s"], "v1=zz").unwrap_err().to_string();
    assert!(m.contains("malformed") && m.contains("zz"), "{m}");
}

proptest! {
    #[test]
    fn sign_then_verify_round_trips_and_any_body_byte_change_fails(
        secrets in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 1..4),
        pick in any::<prop::sample::Index>(),
        id in "[a-z0-9_]{1,32}",
        ts in 0u64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 1..512),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let header = sign(&secrets, &id, ts, &body);
        let one = &secrets[pick.index(secrets.len())];
        prop_assert_eq!(verify(&[one], &id, ts, &body, &header, ts, 0), Ok(()));
        let mut changed = body.clone();
        changed[at.index(body.len())] ^= flip;
        prop_assert_eq!(
            verify(&secrets, &id, ts, &changed, &header, ts, 0),
            Err(VerifyError::Mismatch)
        );
    }
}
