//! `keel-client`: the Rust client library for keel (built out in a later issue).
