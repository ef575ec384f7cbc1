//! A 3-node cluster of real processes: writes through every node are readable from every node,
//! with the headers of the spec; lists come back in key order.

use keel_tests::{Cluster, DEADLINE};

#[test]
fn put_through_every_node_is_readable_from_every_node() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();

    let mut written = Vec::new();
    for id in c.ids() {
        let key = format!("greeting-from-{id}");
        let value = format!("hello via node {id}");
        let r = c.put_until_ok(id, &key, value.as_bytes(), DEADLINE);
        let body = r.json();
        let index = body["index"].as_u64().expect("index");
        assert_eq!(
            body["version"].as_u64(),
            Some(index),
            "version is the write's index"
        );
        assert_eq!(body["acked"], "quorum", "default mode is semi");
        assert_eq!(r.header_u64("x-keel-node"), Some(id));
        assert_eq!(r.header_u64("x-keel-leader"), Some(leader));
        written.push((key, value, index));
    }

    for id in c.ids() {
        for (key, value, index) in &written {
            let r = c.get(id, key).expect("node answers");
            assert_eq!(r.status, 200, "GET {key} on node {id}: {}", r.text());
            assert_eq!(r.text(), *value, "value of {key} on node {id}");
            assert_eq!(r.headers.get("etag"), Some(&format!("\"{index}\"")));
            assert_eq!(
                r.headers.get("content-type").map(String::as_str),
                Some("application/octet-stream")
            );
            assert_eq!(r.header_u64("x-keel-node"), Some(id));
            assert!(
                r.header_u64("x-keel-index").unwrap_or(0) >= *index,
                "a linearizable read reflects at least the write's index"
            );
        }
    }

    let r = c.get(1, "never-written").expect("node answers");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code().as_deref(), Some("not_found"));
}

#[test]
fn list_by_prefix_returns_keys_in_order_on_every_node() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    // Written in scrambled order through different nodes; keys with a shared prefix plus
    // decoys on both sides of it.
    let keys = [
        "fruit/pear",
        "fruit/apple",
        "fruits",
        "fruit/fig",
        "fruit/banana",
        "fig",
        "fruit/cherry",
    ];
    for (i, k) in keys.iter().enumerate() {
        let via = (i % 3) as u64 + 1;
        c.put_until_ok(via, k, format!("v{i}").as_bytes(), DEADLINE);
    }
    let expected = [
        "fruit/apple",
        "fruit/banana",
        "fruit/cherry",
        "fruit/fig",
        "fruit/pear",
    ];
    for id in c.ids() {
        let r = c
            .request(id, "GET", "/v1/kv?prefix=fruit/", &[], None)
            .expect("node answers");
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let got: Vec<&str> = body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["key"].as_str().expect("key"))
            .collect();
        assert_eq!(got, expected, "list on node {id}");
        assert_eq!(body["more"], false);
        assert_eq!(body["items"][0]["value"], "v1");
    }
    // Paging: limit and after.
    let r = c
        .request(2, "GET", "/v1/kv?prefix=fruit/&limit=2", &[], None)
        .expect("node answers");
    let body = r.json();
    assert_eq!(body["more"], true);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2));
    let r = c
        .request(
            3,
            "GET",
            "/v1/kv?prefix=fruit/&limit=2&after=fruit/banana",
            &[],
            None,
        )
        .expect("node answers");
    let body = r.json();
    let got: Vec<&str> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["key"].as_str().expect("key"))
        .collect();
    assert_eq!(got, ["fruit/cherry", "fruit/fig"]);
}
