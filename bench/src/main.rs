//! `keel-bench`: the load generator (built out in a later issue).

fn main() {
    eprintln!("keel-bench: not yet implemented");
}
