//! Where a `compare` run's CPU went, and what keel's nodes could spend per operation to meet
//! issue 21's throughput targets on this machine.
//!
//! On a 2-core machine shared by the nodes and the load generator, throughput is capped by the
//! CPU per operation of everything that runs, not only of the system under load. A run's
//! figures split the machine's busy time per operation three ways: the nodes (from their
//! `/proc` times), the generator (its own), and the rest (interrupts and work charged to no
//! process of the run). The budget asks: keeping the machine as busy as keel's run kept it, and
//! the generator's and the rest's cost per operation as they were, how much CPU per operation
//! may keel's nodes spend to reach the target rate? This is a model, not a measurement: it
//! says how far a target is in CPU, not that saving that CPU would reach it.

use crate::load::{RunResult, Workload};
use crate::Compared;

/// The rest of the machine's busy time per 1,000 operations: neither the nodes nor the generator.
fn rest(r: &RunResult) -> Option<f64> {
    Some(r.busy_ms_per_1k? - r.cpu_ms_per_1k? - r.gen_cpu_ms_per_1k?)
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

/// CPU ms per 1,000 operations keel's nodes may spend for `run` to reach `target` ops/s.
pub fn allowed(run: &RunResult, target: f64) -> Option<f64> {
    if target <= 0.0 {
        return None;
    }
    let per_1k_at_target = run.busy_cores? * 1_000_000.0 / target;
    Some(per_1k_at_target - run.gen_cpu_ms_per_1k? - rest(run)?)
}

/// The Markdown section for a compare run.
pub fn section(c: &Compared) -> String {
    let mut md = String::from(
        "\n### Where the machine's cores went\n\nBusy CPU of the whole machine per 1,000 operations (`/proc/stat`), split into the nodes or members, the load generator itself, and the rest (interrupts, other processes).\n\n| workload | system | ops/s | busy cores | nodes ms / 1,000 | generator ms / 1,000 | rest ms / 1,000 |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (name, k, e) in &c.pairs {
        for r in [k, e] {
            md.push_str(&format!(
                "| {name} | {} | {:.0} | {} | {} | {} | {} |\n",
                r.system,
                r.throughput,
                r.busy_cores.map_or("-".into(), |b| format!("{b:.2}")),
                cell(r.cpu_ms_per_1k),
                cell(r.gen_cpu_ms_per_1k),
                cell(rest(r)),
            ));
        }
    }
    let find = |w: Workload, stale: bool| {
        c.pairs.iter().find(|(_, k, _)| {
            k.workload == w && k.clients > 1 && (k.consistency == "stale") == stale
        })
    };
    let writes = find(Workload::Write, false);
    let lin = find(Workload::Read, false);
    let stale = find(Workload::Read, true);
    let health = find(Workload::Health, true).or_else(|| find(Workload::Health, false));
    let mut rows = Vec::new();
    if let Some((_, k, e)) = writes {
        rows.push(("writes ≥ 3× etcd's", k, 3.0 * e.throughput));
    }
    if let Some((_, k, e)) = lin {
        rows.push(("linearizable reads ≥ 5× etcd's", k, 5.0 * e.throughput));
    }
    if let (Some((_, s, _)), Some((_, h, _))) = (stale, health) {
        rows.push(("stale reads ≥ 90% of `/health`", s, 0.9 * h.throughput));
    }
    if let (Some((_, l, _)), Some((_, s, _))) = (lin, stale) {
        rows.push(("linearizable reads ≥ 70% of stale", l, 0.7 * s.throughput));
    }
    md.push_str("\n### keel's CPU budget for the throughput targets\n\nThe CPU per operation keel's nodes could spend to reach each target, if the machine stayed as busy as in keel's run and the generator and the rest cost what they did per operation (a model: how far each target is, in CPU).\n\n| target | keel ops/s | target ops/s | nodes ms / 1,000 now | allowed | change needed |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (name, run, target) in rows {
        let now = run.cpu_ms_per_1k;
        let allow = allowed(run, target);
        let change = match (now, allow) {
            _ if run.throughput >= target => "met".to_string(),
            // Even nodes that cost nothing would not reach it on this machine.
            (_, Some(a)) if a <= 0.0 => "out of reach".to_string(),
            (Some(n), Some(a)) if n > 0.0 => format!("{:+.0}%", 100.0 * (a - n) / n),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {name} | {:.0} | {target:.0} | {} | {} | {change} |\n",
            run.throughput,
            cell(now),
            cell(allow),
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(throughput: f64, nodes: f64, gen: f64, busy: f64, cores: f64) -> RunResult {
        RunResult {
            cpu_ms_per_1k: Some(nodes),
            gen_cpu_ms_per_1k: Some(gen),
            busy_ms_per_1k: Some(busy),
            busy_cores: Some(cores),
            ..crate::load::sample_run(throughput)
        }
    }

    #[test]
    fn the_budget_keeps_the_machine_as_busy_and_the_others_as_costly() {
        // 10,000 ops/s on 1.8 busy cores: 180 ms per 1,000, of which nodes 150, generator 20,
        // rest 10. At 12,000 ops/s the same 1.8 cores give 150 ms per 1,000, so the nodes may
        // spend 150 - 20 - 10 = 120.
        let r = run(10_000.0, 150.0, 20.0, 180.0, 1.8);
        assert_eq!(rest(&r), Some(10.0));
        let a = allowed(&r, 12_000.0).expect("allowed");
        assert!((a - 120.0).abs() < 1e-9, "{a}");
        assert_eq!(allowed(&r, 0.0), None);
        // At 90,000 ops/s the 1.8 cores give 20 ms per 1,000: less than the others' 30.
        assert!(allowed(&r, 90_000.0).expect("allowed") < 0.0);
        let mut unknown = r.clone();
        unknown.gen_cpu_ms_per_1k = None;
        assert_eq!(allowed(&unknown, 12_000.0), None);
    }
}
