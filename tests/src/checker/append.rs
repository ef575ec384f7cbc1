//! An Elle-style check of multi-key transactions over append-only lists (Kingsbury & Alvaro,
//! "Elle: inferring isolation anomalies from experimental observations", VLDB 2020).
//!
//! Each key holds a list of integers; a transaction reads some keys and appends a unique
//! element to some of them. Because every element is unique and lists only grow, the longest
//! list read of a key gives that key's *version order*, and every read names exactly which
//! transactions' appends it saw. From that, without trusting any index the server reports:
//!
//! - **Incompatible orders**: every list read of a key is a prefix of the final read of that
//!   key (which is its version order; the longest list read when there is no final read), so
//!   an element once read and later gone is found too.
//! - **Duplicates, garbage, aborted reads**: an element appears at most once, was appended by
//!   some transaction to that key, and never by one that certainly did not take effect.
//! - **Lost appends**: an acknowledged append is in the final read of its key.
//! - **Dependency cycles**: a graph over the transactions that took effect, with an edge
//!   T1 → T2 for write-write (T2 appended right after T1 in a key's order), write-read (T2 read a
//!   list ending with T1's element) and read-write (T1 read a list that T2's element extends)
//!   dependencies. A cycle is a serializability anomaly (G0, G1c, G-single, G2); with the
//!   real-time edges added (T1 completed before T2 was sent), a cycle is a violation of strict
//!   serializability, which keel promises for transactions through one leader.

use std::collections::{HashMap, HashSet};

/// One transaction of the history.
#[derive(Clone, Debug, Default)]
pub struct AppendTxn {
    /// When it was sent.
    pub invoke: u64,
    /// When it was answered; None when its outcome is unknown.
    pub complete: Option<u64>,
    /// Whether it certainly took no effect (its compare failed, or it was refused).
    pub failed: bool,
    /// The lists it read: (key, list). For a transaction of unknown outcome these are the
    /// lists it would have read had it taken effect.
    pub reads: Vec<(String, Vec<i64>)>,
    /// The elements it appended: (key, element).
    pub appends: Vec<(String, i64)>,
}

/// What the check found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AppendFindings {
    /// Transactions that took effect (nodes of the graph), read-only ones included.
    pub committed: usize,
    /// Of those, the ones that appended (acknowledged, or seen).
    pub appended: usize,
    /// Write-write and write-read edges: how much the graph had to say.
    pub dependencies: usize,
    /// Keys with a version order.
    pub keys: usize,
    /// Anomalies by kind.
    pub anomalies: std::collections::BTreeMap<String, usize>,
    /// The first few, described.
    pub examples: Vec<String>,
}

impl AppendFindings {
    fn flag(&mut self, kind: &str, what: String) {
        *self.anomalies.entry(kind.to_string()).or_default() += 1;
        if self.examples.len() < 20 {
            self.examples.push(format!("{kind}: {what}"));
        }
    }

    /// Every anomaly found.
    pub fn total(&self) -> usize {
        self.anomalies.values().sum()
    }
}

/// An edge's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dep {
    WriteWrite,
    WriteRead,
    ReadWrite,
    Realtime,
}

/// Checks the transactions; `finals` is the final read of each key (after the faults healed).
pub fn check_appends(txns: &[AppendTxn], finals: &HashMap<String, Vec<i64>>) -> AppendFindings {
    let mut f = AppendFindings::default();
    // Who appended each element, and where.
    let mut writer: HashMap<i64, (usize, &str)> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for (k, e) in &t.appends {
            if writer.insert(*e, (i, k.as_str())).is_some() {
                f.flag(
                    "duplicate",
                    format!("element {e} appended by two transactions"),
                );
            }
        }
    }
    // Every list observed: by transactions that took effect or may have, and the final reads.
    let observed = |t: &AppendTxn| !t.failed && t.complete.is_some();
    let mut lists: Vec<(Option<usize>, &str, &[i64])> = Vec::new();
    for (i, t) in txns.iter().enumerate().filter(|(_, t)| observed(t)) {
        for (k, l) in &t.reads {
            lists.push((Some(i), k.as_str(), l.as_slice()));
        }
    }
    for (k, l) in finals {
        lists.push((None, k.as_str(), l.as_slice()));
    }
    // Version order per key: the final read, else the longest list; every other must be its
    // prefix.
    let mut order: HashMap<&str, &[i64]> = HashMap::new();
    for (_, k, l) in &lists {
        let cur = order.entry(k).or_insert(&[]);
        if l.len() > cur.len() {
            *cur = l;
        }
    }
    for (k, l) in finals {
        order.insert(k.as_str(), l.as_slice());
    }
    for (who, k, l) in &lists {
        let longest = order.get(k).copied().unwrap_or(&[]);
        if !longest.starts_with(l) {
            f.flag(
                "incompatible_order",
                format!("{k}: {l:?} (read by {who:?}) is no prefix of {longest:?}"),
            );
        }
    }
    // Each element once, from a transaction that appended it to this key and did not fail.
    let mut effective: HashSet<usize> = HashSet::new();
    for (k, l) in &order {
        let mut seen = HashSet::new();
        for e in l.iter() {
            if !seen.insert(*e) {
                f.flag("duplicate", format!("{k}: element {e} twice in {l:?}"));
            }
            match writer.get(e) {
                None => f.flag("garbage", format!("{k}: element {e} was never appended")),
                Some((_, wk)) if wk != k => {
                    f.flag("garbage", format!("{k}: element {e} was appended to {wk}"))
                }
                Some((w, _)) if txns[*w].failed => f.flag(
                    "aborted_read",
                    format!("{k}: element {e} of a transaction that did not take effect"),
                ),
                Some((w, _)) => {
                    effective.insert(*w);
                }
            }
        }
    }
    // Acknowledged appends survive.
    for t in txns.iter().filter(|t| observed(t)) {
        for (k, e) in &t.appends {
            let kept = finals.get(k).is_some_and(|l| l.contains(e));
            if !kept {
                f.flag(
                    "lost",
                    format!("{k}: acknowledged element {e} not in the final read"),
                );
            }
        }
    }
    // The graph: transactions that certainly or visibly took effect.
    let nodes: Vec<usize> = (0..txns.len())
        .filter(|i| observed(&txns[*i]) || effective.contains(i))
        .collect();
    f.committed = nodes.len();
    f.appended = nodes
        .iter()
        .filter(|i| !txns[**i].appends.is_empty())
        .count();
    f.keys = order.len();
    let slot: HashMap<usize, usize> = nodes.iter().enumerate().map(|(s, i)| (*i, s)).collect();
    let mut edges: Vec<(usize, usize, Dep)> = Vec::new();
    for (k, l) in &order {
        let w = |e: &i64| writer.get(e).and_then(|(i, _)| slot.get(i)).copied();
        for pair in l.windows(2) {
            if let (Some(a), Some(b)) = (w(&pair[0]), w(&pair[1])) {
                edges.push((a, b, Dep::WriteWrite));
            }
        }
        for &i in &nodes {
            for (rk, read) in &txns[i].reads {
                if rk != k || !l.starts_with(read) {
                    continue;
                }
                let me = slot[&i];
                if let Some(a) = read.last().and_then(w) {
                    edges.push((a, me, Dep::WriteRead));
                }
                if let Some(b) = l.get(read.len()).and_then(w) {
                    edges.push((me, b, Dep::ReadWrite));
                }
            }
        }
    }
    edges.retain(|(a, b, _)| a != b);
    f.dependencies = edges
        .iter()
        .filter(|(_, _, d)| matches!(d, Dep::WriteWrite | Dep::WriteRead))
        .count();
    let data_cycles = cycles(nodes.len(), &edges);
    for c in &data_cycles {
        f.flag("cycle", describe(c, &nodes, &edges));
    }
    let realtime = realtime_edges(txns, &nodes);
    edges.extend(realtime.iter().copied());
    // A cycle that needs a real-time edge: a component of the whole graph holding a real-time
    // edge whose ends are not in one component of the data graph.
    let mut data_comp = vec![usize::MAX; nodes.len()];
    for (n, c) in data_cycles.iter().enumerate() {
        for x in c {
            data_comp[*x] = n;
        }
    }
    for c in cycles(nodes.len(), &edges) {
        let inside: HashSet<usize> = c.iter().copied().collect();
        let needs_time = realtime.iter().any(|(a, b, _)| {
            inside.contains(a)
                && inside.contains(b)
                && (data_comp[*a] == usize::MAX || data_comp[*a] != data_comp[*b])
        });
        if needs_time {
            f.flag("realtime_cycle", describe(&c, &nodes, &edges));
        }
    }
    f
}

/// Real-time edges, transitively reduced as Elle does: each transaction follows the completed
/// ones that no other completed transaction follows yet.
fn realtime_edges(txns: &[AppendTxn], nodes: &[usize]) -> Vec<(usize, usize, Dep)> {
    // Events: (time, 0 for an invocation and 1 for a completion, slot). At equal times the
    // invocation sorts first: the two count as concurrent (the permissive order).
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (s, &i) in nodes.iter().enumerate() {
        events.push((txns[i].invoke, 0, s));
        if let Some(c) = txns[i].complete {
            events.push((c, 1, s));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<usize> = Vec::new();
    let mut preds: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut edges = Vec::new();
    for (_, kind, s) in events {
        if kind == 0 {
            preds.insert(s, frontier.clone());
            for &p in &frontier {
                edges.push((p, s, Dep::Realtime));
            }
        } else {
            let before: HashSet<usize> = preds.remove(&s).unwrap_or_default().into_iter().collect();
            frontier.retain(|p| !before.contains(p));
            frontier.push(s);
        }
    }
    edges
}

/// Strongly connected components of more than one node (Tarjan, iterative), each sorted.
fn cycles(n: usize, edges: &[(usize, usize, Dep)]) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for (a, b, _) in edges {
        adj[*a].push(*b);
    }
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if let Some(&w) = adj[v].get(*i) {
                *i += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort_unstable();
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// A cycle's transactions and the kinds of edge inside it.
fn describe(c: &[usize], nodes: &[usize], edges: &[(usize, usize, Dep)]) -> String {
    let inside: HashSet<usize> = c.iter().copied().collect();
    let mut kinds: Vec<String> = edges
        .iter()
        .filter(|(a, b, _)| inside.contains(a) && inside.contains(b))
        .map(|(_, _, d)| format!("{d:?}"))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    kinds.sort();
    let txns: Vec<usize> = c.iter().take(8).map(|s| nodes[*s]).collect();
    format!(
        "{} transactions (first: {txns:?}), edges {}",
        c.len(),
        kinds.join("+")
    )
}

#[cfg(test)]
#[path = "append_tests.rs"]
mod tests;
