//! `keel-bench breakdown`: where one write's time goes. One client writes (`semi`) to a 3-node
//! cluster, first to the leader, then through a follower; the nodes' own histograms
//! (`/metrics`, read before and after each run) give the mean time of each stage a write passes
//! through, beside the latency the client saw:
//!
//! - the HTTP handler of the node the client talks to (request parsed to answer built);
//! - the leader's append of the entry with its fsync, and a follower's (they overlap: the leader
//!   sends the entry before it writes it);
//! - a heartbeat round trip from the leader to a follower (the network and both event loops);
//! - the leader's apply of the committed entry.
//!
//! What the client saw beyond the handler is its own HTTP stack and the loopback; through a
//! follower, the difference from the leader run is the forward hop.

use std::time::Duration;

use bytes::Bytes;
use keel_tests::Cluster;

use crate::load::{self, Spec, System, Workload};

/// Settings of the breakdown.
#[derive(clap::Args, Debug, Clone)]
pub struct BreakdownArgs {
    /// Measured time per run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// The sum (seconds) and count of the histogram `name` over the series whose labels include
/// every one of `labels` (`key="value"` pieces), in Prometheus text.
pub fn histogram(text: &str, name: &str, labels: &[&str]) -> (f64, u64) {
    let (mut sum, mut count) = (0.0, 0u64);
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if !labels.iter().all(|l| rest.contains(l)) {
            continue;
        }
        if metric == format!("{name}_sum") {
            sum += value.parse::<f64>().unwrap_or(0.0);
        } else if metric == format!("{name}_count") {
            count += value.parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    (sum, count)
}

/// The mean (ms) of a histogram between two scrapes, or None if nothing was observed (or a
/// scrape failed).
fn mean_of(
    before: &Option<String>,
    after: &Option<String>,
    name: &str,
    labels: &[&str],
) -> Option<f64> {
    mean_ms(before.as_deref()?, after.as_deref()?, name, labels)
}

/// The mean (ms) of a histogram between two scrapes, or None if nothing was observed.
fn mean_ms(before: &str, after: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let (s0, c0) = histogram(before, name, labels);
    let (s1, c1) = histogram(after, name, labels);
    (c1 > c0).then(|| (s1 - s0) * 1000.0 / (c1 - c0) as f64)
}

/// A node's `/metrics`, or None (its stages then show "-", not a lifetime's mean).
async fn scrape(http: &load::Http, addr: &str) -> Option<String> {
    match http
        .request(addr, "GET", "/metrics", &[], Bytes::new())
        .await
    {
        Ok(r) if r.status == 200 => Some(String::from_utf8_lossy(&r.body).into_owned()),
        _ => None,
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.3}"))
}

/// Runs the breakdown; a Markdown section.
pub async fn run(a: &BreakdownArgs) -> String {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let http = load::http(1);
    let addrs = c.endpoints();
    let addr = |id: u64| addrs[id as usize - 1].clone();
    let mut md = format!(
        "## Where a write's time goes\n\nOne client, `semi` writes of 100 bytes to random keys, {:?} per run after 2 s of warm-up, a 3-node cluster on loopback; means from the nodes' own histograms over the run (ms).\n\n| sent to | client p50 | client mean | HTTP handler | leader append + fsync | follower append + fsync | heartbeat round trip | leader apply | client side (client mean − handler) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        a.duration
    );
    for (name, via) in [("the leader", leader), ("a follower", follower)] {
        let spec = Spec {
            label: format!("writes to {name}"),
            system: System::Keel(vec![addr(via)]),
            workload: Workload::Write,
            mode: "semi".into(),
            stale: false,
            clients: 1,
            duration: a.duration,
            warmup: Duration::ZERO,
            keys: 10_000,
            value_size: 100,
            rate: None,
            pids: Vec::new(),
        };
        // A warm-up run first, so that the histograms read next hold the measured run only.
        let warm = Spec {
            duration: Duration::from_secs(2),
            ..spec.clone()
        };
        load::run(&http, &warm, false).await;
        let mut before = Vec::new();
        for id in 1..=3u64 {
            before.push(scrape(&http, &addr(id)).await);
        }
        let r = load::run(&http, &spec, true).await;
        let mut after = Vec::new();
        for id in 1..=3u64 {
            after.push(scrape(&http, &addr(id)).await);
        }
        if c.wait_for_leader() != leader {
            md.push_str(&format!(
                "\n(the leader moved during the run through {name}: its leader columns are not the leader's)\n"
            ));
        }
        let at = |id: u64| (&before[id as usize - 1], &after[id as usize - 1]);
        let (vb, va) = at(via);
        let handler = mean_of(
            vb,
            va,
            "keel_http_request_duration_seconds",
            &["route=\"/v1/kv/{key}\"", "op=\"write\""],
        );
        let (lb, la) = at(leader);
        let (fb, fa) = at(c.others(&[leader])[1]);
        let client_mean = r.mean_ms;
        md.push_str(&format!(
            "| {name} (node {via}) | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} |\n",
            r.p50_ms,
            client_mean,
            cell(handler),
            cell(mean_of(lb, la, "keel_raft_append_duration_seconds", &[])),
            cell(mean_of(fb, fa, "keel_raft_append_duration_seconds", &[])),
            cell(mean_of(lb, la, "keel_peer_round_trip_seconds", &[])),
            cell(mean_of(lb, la, "keel_apply_duration_seconds", &[])),
            cell(handler.map(|h| client_mean - h)),
        ));
        eprintln!("{}", load::row(&r));
    }
    md.push_str("\nThe client mean is the mean latency of the successful writes as the client timed them. The stages overlap (the leader sends an entry to its followers before its own append), so they do not add up to the handler's time; the handler's time beyond the longer of the two appends and the apply is the round trip to the follower, the Ready loop's wake-ups and the answer's path back.\n");
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_read_from_prometheus_text_by_label() {
        let text = "# TYPE keel_x_seconds histogram\n\
            keel_x_seconds_sum{route=\"/a\",op=\"write\"} 0.5\n\
            keel_x_seconds_count{route=\"/a\",op=\"write\"} 10\n\
            keel_x_seconds_sum{route=\"/b\",op=\"read\"} 2.0\n\
            keel_x_seconds_count{route=\"/b\",op=\"read\"} 4\n\
            keel_y_seconds_sum 3.0\n\
            keel_y_seconds_count 6\n";
        assert_eq!(
            histogram(text, "keel_x_seconds", &["op=\"write\""]),
            (0.5, 10)
        );
        assert_eq!(histogram(text, "keel_x_seconds", &[]), (2.5, 14));
        assert_eq!(histogram(text, "keel_y_seconds", &[]), (3.0, 6));
        let later = text
            .replace("keel_y_seconds_sum 3.0", "keel_y_seconds_sum 3.5")
            .replace("keel_y_seconds_count 6", "keel_y_seconds_count 8");
        assert_eq!(mean_ms(text, &later, "keel_y_seconds", &[]), Some(250.0));
        assert_eq!(mean_ms(text, text, "keel_y_seconds", &[]), None);
    }
}
