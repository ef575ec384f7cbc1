//! Property tests of what the client API parses from strangers: percent-encoded keys, query
//! strings and transaction bodies. Whatever the input, parsing never panics and answers either
//! a value or an error whose status is a 4xx; what is well-formed parses to what was meant.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;
use serde_json::json;

use super::request::{decode_key, parse_query};
use super::txn::parse_txn;
use keel_api::limits::MAX_KEY_BYTES;

fn client_error(e: &super::ApiError) -> bool {
    (400..500).contains(&e.code().status())
}

/// A key: 1 to 64 characters of any kind (ASCII, multi-byte, controls, `/`, `%`).
fn key() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 1..64).prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_path_segment_decodes_or_is_refused_as_a_bad_key(raw in ".{0,200}") {
        match decode_key(&raw) {
            Ok(k) => prop_assert!(!k.is_empty() && k.len() <= MAX_KEY_BYTES),
            Err(e) => prop_assert_eq!(e.code().as_str(), "invalid_key"),
        }
    }

    #[test]
    fn an_encoded_key_decodes_to_itself(k in key()) {
        let encoded = utf8_percent_encode(&k, NON_ALPHANUMERIC).to_string();
        prop_assert_eq!(decode_key(&encoded).ok(), Some(k));
    }

    #[test]
    fn any_query_string_parses_or_is_a_client_error(raw in "[a-z_=&%0-9A-F.]{0,80}") {
        let accepted = ["mode", "consistency", "min_index", "prefix", "after", "limit"];
        if let Err(e) = parse_query(Some(&raw), &accepted, "the test") {
            prop_assert!(client_error(&e), "{raw:?}: {:?}", e.code());
        }
    }

    #[test]
    fn any_body_parses_as_a_transaction_or_is_a_client_error(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = parse_txn(&body, 1024) {
            prop_assert!(client_error(&e));
        }
    }

    #[test]
    fn json_of_the_wrong_shape_is_a_client_error(
        ops in proptest::collection::vec(("[a-z]{1,6}", "[a-z]{0,3}", any::<i64>()), 0..6),
    ) {
        let steps: Vec<_> = ops
            .iter()
            .map(|(op, key, n)| json!({"op": op, "key": key, "value": n.to_string(), "delta": n}))
            .collect();
        let body = json!({"success": steps, "compare": [{"key": "k", "target": ops.first().map(|o| o.0.clone()).unwrap_or_default(), "op": "==", "value": 1}]});
        if let Err(e) = parse_txn(body.to_string().as_bytes(), 1024) {
            prop_assert!(client_error(&e));
        }
    }

    #[test]
    fn a_valid_transaction_keeps_its_keys(
        keys in proptest::collection::vec(key(), 1..8),
        value in ".{0,40}",
    ) {
        let success: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| match i % 3 {
                0 => json!({"op": "put", "key": k, "value": value}),
                1 => json!({"op": "get", "key": k}),
                _ => json!({"op": "delete", "key": k}),
            })
            .collect();
        let compare = vec![json!({"key": keys[0], "target": "version", "op": ">=", "value": 0})];
        let body = json!({"compare": compare, "success": success}).to_string();
        let txn = parse_txn(body.as_bytes(), 1024).map_err(|e| TestCaseError::fail(format!("{:?}", e.code())))?;
        prop_assert_eq!(txn.success.len(), keys.len());
        let got: Vec<&str> = super::txn::txn_keys(&txn).collect();
        let mut want: Vec<&str> = vec![keys[0].as_str()];
        want.extend(keys.iter().map(String::as_str));
        prop_assert_eq!(got, want);
    }
}
