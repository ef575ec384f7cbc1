//! `keel watch PREFIX`: prints the change feed of a prefix (or one key) as JSON lines, one per
//! change, resuming by itself across node failures (SPEC §9).

use std::time::Duration;

use clap::Args;
use keel_client::{Error, WatchKind, WatchOptions};
use serde_json::json;

use crate::opts::Endpoints;

/// `keel watch PREFIX`
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The prefix to watch ("" for every key), or the key with --key.
    pub prefix: String,
    /// Watch exactly this key instead of a prefix.
    #[arg(long)]
    pub key: bool,
    /// Start with the changes of this index (default: from now).
    #[arg(long)]
    pub from_index: Option<u64>,
    /// Print progress bookmarks too.
    #[arg(long)]
    pub progress: bool,
    /// Stop after this many changes (0: never).
    #[arg(long, default_value_t = 0)]
    pub changes: u64,
}

/// Runs `keel watch`; the exit code (0 after --changes changes, 1 on an error, 3 when the start
/// is older than every member's history).
pub async fn run(endpoints: &Endpoints, args: WatchArgs) -> i32 {
    let client = match endpoints.builder() {
        Ok(b) => match b.build().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("keel: {e}");
                return 1;
            }
        },
        Err(e) => {
            eprintln!("keel: {e}");
            return 1;
        }
    };
    let mut opts = if args.key {
        WatchOptions::key(&args.prefix)
    } else {
        WatchOptions::prefix(&args.prefix)
    };
    if let Some(n) = args.from_index {
        opts = opts.from_index(n);
    }
    if args.progress {
        opts = opts.progress_every(Duration::from_secs(1));
    }
    let mut watch = match client.watch(opts).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("keel: {e}");
            return 1;
        }
    };
    let mut seen = 0;
    while args.changes == 0 || seen < args.changes {
        let e = match watch.next().await {
            Ok(e) => e,
            Err(e @ Error::Compacted { .. }) => {
                eprintln!("keel: {e}");
                return 3;
            }
            Err(e) => {
                eprintln!("keel: {e}");
                return 1;
            }
        };
        let line = match e.kind {
            WatchKind::Progress if !args.progress => continue,
            WatchKind::Progress => json!({"event": "progress", "index": e.index}),
            kind => {
                let name = match kind {
                    WatchKind::Put => "put",
                    WatchKind::Delete => "delete",
                    _ => "expire",
                };
                seen += 1;
                json!({
                    "event": name,
                    "key": e.key,
                    "value": e.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    "index": e.index,
                    "lease": e.lease,
                })
            }
        };
        outln!("{line}");
    }
    0
}
