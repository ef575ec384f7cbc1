//! Backup and restore on real processes: a backup taken under a write load restores into a new
//! cluster holding exactly the writes acknowledged up to the backup's index.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_tests::http::Http;
use keel_tests::{wait_until, Cluster, DEADLINE};
use serde_json::json;

#[test]
fn a_backup_taken_under_load_restores_exactly_the_acknowledged_writes_up_to_its_index() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    // Writes whose answer was an error: they may or may not have been applied.
    let unknown: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3usize)
        .map(|w| {
            let (addr, acked, unknown, stop) = (
                c.node(w as u64 + 1).http.clone(),
                acked.clone(),
                unknown.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let http = Http::new(Duration::from_secs(2), Duration::from_secs(5));
                let mut i = 0;
                while !stop.load(Ordering::Acquire) && i < 100_000 {
                    let key = format!("b/{w}/{i:06}");
                    i += 1;
                    let path = format!("/v1/kv/{key}");
                    match http.send(&addr, "PUT", &path, &[], Some(key.as_bytes())) {
                        Ok(r) if (200..300).contains(&r.status) => {
                            let v = r.json();
                            let index = v["index"].as_u64().expect("index");
                            acked.lock().expect("acked").push((key, index));
                        }
                        _ => unknown.lock().expect("unknown").push(key),
                    }
                }
            })
        })
        .collect();
    wait_until(DEADLINE, "some writes", || {
        (acked.lock().expect("acked").len() > 200).then_some(())
    });
    // Inside the nodes' --backup-dir (the harness gives every node <cluster dir>/backups).
    let backup_dir = c.dir().join("backups").join("backup");
    let body = json!({"dir": backup_dir.display().to_string()}).to_string();
    let r = c
        .request(2, "POST", "/v1/admin/backup", &[], Some(body.as_bytes()))
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let backup_index = r.json()["index"].as_u64().expect("index");
    // Keep writing after the backup point, then stop.
    let after = acked.lock().expect("acked").len() + 200;
    wait_until(DEADLINE, "writes after the backup", || {
        (acked.lock().expect("acked").len() > after).then_some(())
    });
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().expect("writer");
    }
    let acked = acked.lock().expect("acked").clone();
    let before: Vec<&(String, u64)> = acked.iter().filter(|(_, i)| *i <= backup_index).collect();
    let later: Vec<&(String, u64)> = acked.iter().filter(|(_, i)| *i > backup_index).collect();
    eprintln!(
        "backup at index {backup_index}: {} writes acknowledged at or before it, {} after",
        before.len(),
        later.len()
    );
    assert!(!before.is_empty() && !later.is_empty());

    let mut restored = Cluster::start_from_backup(3, &backup_dir);
    restored.wait_for_leader();
    let r = wait_until(
        DEADLINE,
        "a linearizable list on the restored cluster",
        || {
            let r = restored
                .request(1, "GET", "/v1/kv?prefix=b/&limit=10000", &[], None)
                .ok()?;
            (r.status == 200).then_some(r)
        },
    );
    let v = r.json();
    let items = v["items"].as_array().expect("items");
    let have: std::collections::HashMap<&str, &str> = items
        .iter()
        .map(|i| {
            (
                i["key"].as_str().expect("key"),
                i["value"].as_str().expect("value"),
            )
        })
        .collect();
    for (k, _) in &before {
        assert_eq!(
            have.get(k.as_str()).copied(),
            Some(k.as_str()),
            "{k} was acknowledged before the backup"
        );
    }
    for (k, _) in &later {
        assert!(
            !have.contains_key(k.as_str()),
            "{k} was written after the backup point"
        );
    }
    // Exactly: besides the writes acknowledged up to the backup index, the restored data holds
    // only writes whose answer was an error (they may have been applied before the backup).
    assert!(items.len() >= before.len());
    let before_keys: std::collections::HashSet<&str> =
        before.iter().map(|(k, _)| k.as_str()).collect();
    let unknown = unknown.lock().expect("unknown").clone();
    for k in have.keys() {
        assert!(
            before_keys.contains(k) || unknown.iter().any(|u| u == k),
            "{k} is in the backup but was never written before it"
        );
    }
    // Every node of the new cluster has the same data, and it takes writes.
    restored.put_until_ok(3, "b/new", b"new", DEADLINE);
    for id in restored.ids() {
        let r = restored
            .request(id, "GET", "/v1/kv?prefix=b/&limit=10000", &[], None)
            .expect("answers");
        assert_eq!(
            r.json()["items"].as_array().map(Vec::len),
            Some(items.len() + 1),
            "node {id}"
        );
    }
}
