//! The Markdown summaries and SVG plots of `modes` and `compare`.

use std::path::Path;

use crate::load::{self, RunResult, Workload};
use crate::{plot, Compared, ModesResults};

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

pub fn write_modes(out: &Path, results: &ModesResults) -> String {
    let mut md = String::from("## Replication modes under peer-link delay\n\nWrites of 100-byte values to the leader of a 3-node cluster whose every peer link goes through a delaying proxy.\n\n");
    md.push_str("| delay (measured one-way) | mode | clients | ops/s | p50 ms | p99 ms |\n| --- | --- | ---: | ---: | ---: | ---: |\n");
    for (d, measured, rs) in results {
        for r in rs {
            md.push_str(&format!(
                "| {d} ms ({measured:.2} ms) | {} | {} | {:.0} | {:.2} | {:.2} |\n",
                r.mode, r.clients, r.throughput, r.p50_ms, r.p99_ms
            ));
        }
    }
    let labels: Vec<String> = results.iter().map(|(d, _, _)| format!("{d} ms")).collect();
    let series = |clients_one: bool, f: fn(&RunResult) -> f64| -> Vec<plot::Series> {
        ["async", "semi", "sync"]
            .iter()
            .map(|m| plot::Series {
                name: m.to_string(),
                points: results
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, _, rs))| {
                        rs.iter()
                            .find(|r| r.mode == *m && (r.clients == 1) == clients_one)
                            .map(|r| (i as f64, f(r)))
                    })
                    .collect(),
            })
            .collect()
    };
    let plots = [
        (
            "modes-latency.svg",
            "p50 write latency, 1 client",
            "ms",
            series(true, |r| r.p50_ms),
        ),
        (
            "modes-throughput.svg",
            "write throughput, concurrent clients",
            "ops/s",
            series(false, |r| r.throughput),
        ),
    ];
    for (file, title, y, s) in plots {
        if let Err(e) = plot::lines(
            &out.join(file),
            title,
            "peer-link delay",
            y,
            &s,
            Some(&labels),
        ) {
            eprintln!("plot {file}: {e}");
        }
        md.push_str(&format!("\n![{title}]({file})\n"));
    }
    md
}

/// The median of `v` (the higher middle value of an even count; NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn write_compare(out: &Path, c: &Compared) -> String {
    let mut md = format!("## keel beside etcd\n\nThe same closed-loop workloads against a 3-node keel cluster and a 3-member etcd cluster on the same machine, one after the other, requests spread over every node/member, in {} rounds (the system that runs first alternating from round to round and from workload to workload){}. Each row gives each system's median round by throughput (all rounds below).\n\n", c.rounds.first().map_or(0, |(_, k, _)| k.len()), if c.paused_idle { ", the other system's processes stopped (SIGSTOP) during each run" } else { "" });
    md.push_str("| workload | clients | keel ops/s | etcd ops/s | keel/etcd throughput | keel p50 ms | etcd p50 ms | keel p99 ms | etcd p99 ms | p99 etcd/keel | keel CPU ms / 1,000 ops | etcd CPU ms / 1,000 ops | CPU keel/etcd |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let cpu = |r: &RunResult| {
        r.cpu_ms_per_1k
            .map_or("-".to_string(), |c| format!("{c:.0}"))
    };
    for (name, k, e) in &c.pairs {
        md.push_str(&format!(
            "| {name} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            k.clients,
            k.throughput,
            e.throughput,
            ratio(k.throughput, e.throughput),
            k.p50_ms,
            e.p50_ms,
            k.p99_ms,
            e.p99_ms,
            ratio(e.p99_ms, k.p99_ms),
            cpu(k),
            cpu(e),
            ratio(
                k.cpu_ms_per_1k.unwrap_or(0.0),
                e.cpu_ms_per_1k.unwrap_or(0.0)
            )
        ));
    }
    let keel = |w: Workload, stale: bool| {
        c.pairs
            .iter()
            .find(|(_, k, _)| {
                k.workload == w && k.clients > 1 && (k.consistency == "stale") == stale
            })
            .map(|(_, k, _)| k.throughput)
    };
    if let (Some(health), Some(stale), Some(lin)) = (
        keel(Workload::Health, true),
        keel(Workload::Read, true),
        keel(Workload::Read, false),
    ) {
        md.push_str(&format!(
            "\nkeel's stale reads are {:.0}% of its own trivial endpoint's rate (the HTTP ceiling in this run), its linearizable reads {:.0}% of its stale reads.\n",
            100.0 * stale / health.max(1.0),
            100.0 * lin / stale.max(1.0)
        ));
    }
    md.push_str("\n### Every round (ops/s)\n\nThe two systems run back to back within a round, so a round's ratio compares them under the same conditions; the median of those ratios is the paired figure (the table above pairs each system's own median round, which may come from different rounds).\n\n| workload | keel | etcd | keel/etcd per round | median of the rounds' ratios |\n| --- | --- | --- | --- | ---: |\n");
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let per_round = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect()
    };
    let ops = |rs: &[RunResult]| rs.iter().map(|r| r.throughput).collect::<Vec<_>>();
    for (name, k, e) in &c.rounds {
        let (k, e) = (ops(k), ops(e));
        let r = per_round(&k, &e);
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {:.2} |\n",
            list(&k, 0),
            list(&e, 0),
            list(&r, 2),
            median(&r)
        ));
    }
    let workload = |prefix: &str| c.rounds.iter().find(|(n, ..)| n.starts_with(prefix));
    let keel_rounds = |prefix: &str| workload(prefix).map(|(_, k, _)| ops(k));
    if let (Some(health), Some(stale), Some(lin)) = (
        keel_rounds("trivial endpoint"),
        keel_rounds("stale reads"),
        keel_rounds("linearizable reads"),
    ) {
        let pct = |v: Vec<f64>| v.iter().map(|x| x * 100.0).collect::<Vec<_>>();
        let stale_health = pct(per_round(&stale, &health));
        let lin_stale = pct(per_round(&lin, &stale));
        md.push_str(&format!(
            "\nPer round, keel's stale reads were {}% of its `/health` (median {:.0}%), its linearizable reads {}% of its stale reads (median {:.0}%).\n",
            list(&stale_health, 0),
            median(&stale_health),
            list(&lin_stale, 0),
            median(&lin_stale)
        ));
    }
    if let Some((_, k, e)) = workload("writes, 1 client") {
        let p50 = |rs: &[RunResult]| rs.iter().map(|r| r.p50_ms).collect::<Vec<_>>();
        let (k, e) = (p50(k), p50(e));
        let r = per_round(&k, &e);
        md.push_str(&format!(
            "\nPer round, the one-client write p50 was {} ms for keel and {} ms for etcd: keel/etcd {} (median {:.2}).\n",
            list(&k, 2),
            list(&e, 2),
            list(&r, 2),
            median(&r)
        ));
    }
    md.push_str(&crate::budget::section(c));
    let names: Vec<String> = c
        .pairs
        .iter()
        .map(|(n, _, _)| n.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let thr = vec![
        plot::Series {
            name: "keel".into(),
            points: c
                .pairs
                .iter()
                .enumerate()
                .map(|(i, (_, k, _))| (i as f64, k.throughput))
                .collect(),
        },
        plot::Series {
            name: "etcd".into(),
            points: c
                .pairs
                .iter()
                .enumerate()
                .map(|(i, (_, _, e))| (i as f64, e.throughput))
                .collect(),
        },
    ];
    if let Err(e) = plot::lines(
        &out.join("compare-throughput.svg"),
        "throughput by workload",
        "workload",
        "ops/s",
        &thr,
        Some(&names),
    ) {
        eprintln!("plot: {e}");
    }
    let sweep = |sys: &str| plot::Series {
        name: sys.to_string(),
        points: c
            .sweep
            .iter()
            .filter(|r| r.system == sys)
            .map(|r| (r.throughput, r.p99_ms))
            .collect(),
    };
    if let Err(e) = plot::lines(
        &out.join("latency-vs-load.svg"),
        "write p99 latency against throughput (1, 4, 16, 64 clients)",
        "ops/s",
        "p99 ms",
        &[sweep("keel"), sweep("etcd")],
        None,
    ) {
        eprintln!("plot: {e}");
    }
    md.push_str("\n![throughput by workload](compare-throughput.svg)\n\n![latency against load](latency-vs-load.svg)\n\n");
    md.push_str("### Latency against offered load (writes)\n\n");
    md.push_str(load::HEADER);
    md.push('\n');
    for r in &c.sweep {
        md.push_str(&load::row(r));
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_median_of_the_rounds_ratios() {
        assert_eq!(super::median(&[2.13, 1.94, 2.05]), 2.05);
        assert_eq!(super::median(&[1.0, 3.0]), 3.0);
        assert!(super::median(&[]).is_nan());
    }
}
