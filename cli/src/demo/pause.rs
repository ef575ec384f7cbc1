//! `keel demo pause`: the lease seed told step by step (SPEC §8): a client holds a lease and a
//! lock and writes as the owner of a resource; it pauses (a GC pause: it sends nothing, not even
//! keepalives) past its TTL; the leader expires its lease and the lock goes to a second client,
//! which writes; the first wakes up and writes as if it still owned the resource. First with the
//! fence check switched off (a plain write: it silently overwrites the new owner's work), then
//! on (the same write with `If-Fence`: refused).

use std::time::{Duration, Instant};

use keel_client::{Client, Error, PutOptions};
use serde_json::json;

use super::{check, failed, pinned, DemoCtx, DemoError};

/// One round of the story; returns whether the late write went through, and the final value.
async fn round(client: &Client, prefix: &str, fenced: bool) -> Result<(bool, String), DemoError> {
    let lock = format!("{prefix}/owner");
    let file = format!("{prefix}/file");
    let ttl = Duration::from_millis(2000);
    // Client A: a lease it will stop keeping alive (it is about to pause).
    let a = client
        .grant_lease(ttl)
        .await
        .map_err(failed("granting A's lease"))?;
    let ttl = Duration::from_millis(a.ttl_ms);
    let ga = client
        .lock_for(&lock, a.id.0, "client-A", Duration::ZERO)
        .await
        .map_err(failed("A acquiring the lock"))?;
    outln!(
        "   A holds the lock with fence {} (lease {}, TTL {} ms)",
        ga.fence,
        a.id,
        a.ttl_ms
    );
    let write = |who: &'static str, fence: Option<u64>| {
        let mut opts = PutOptions::new();
        if let Some(f) = fence {
            opts = opts.fence_raw(&lock, f);
        }
        let file = file.clone();
        async move {
            client
                .put_with(&file, format!("written by {who}"), opts)
                .await
        }
    };
    write("A", fenced.then_some(ga.fence))
        .await
        .map_err(failed("A's first write"))?;
    outln!("   A writes the file.");
    let paused = Instant::now();
    outln!("   A pauses (GC): no keepalive, no request, for longer than its TTL...");
    // Client B waits in line for the lock, with a lease it keeps alive.
    let b = client
        .lease(Duration::from_secs(10))
        .await
        .map_err(failed("B's lease"))?;
    let gb = client
        .lock(&lock, &b, "client-B", ttl * 5)
        .await
        .map_err(failed("B acquiring the lock"))?;
    outln!(
        "   after {:.1} s A's lease expired on the leader; B holds the lock with fence {}",
        paused.elapsed().as_secs_f64(),
        gb.fence
    );
    write("B", fenced.then_some(gb.fence))
        .await
        .map_err(failed("B's write"))?;
    outln!("   B writes the file.");
    outln!("   A wakes up, still believing it owns the file, and writes:");
    let late = match write("A (late)", fenced.then_some(ga.fence)).await {
        Ok(_) => {
            outln!("     accepted: A's stale write overwrote B's work");
            true
        }
        Err(Error::FenceRejected { .. }) => {
            outln!(
                "     refused: fence {} is no longer the lock's (412 fence_rejected)",
                ga.fence
            );
            false
        }
        Err(e) => return Err(failed("A's late write")(e)),
    };
    let final_value = client
        .get(&file)
        .await
        .map_err(failed("reading the file"))?
        .value_str()
        .unwrap_or_default()
        .to_string();
    outln!("   the file now says: {final_value:?}");
    let _ = b.revoke().await;
    Ok((late, final_value))
}

/// The demo.
pub async fn pause(dc: &mut DemoCtx<'_>) -> Result<serde_json::Value, DemoError> {
    let client = pinned(&dc.endpoints, dc.mode).await?;
    outln!();
    outln!("1. Without the fence check (plain writes):");
    let (unfenced_late, unfenced_final) =
        round(&client, &format!("{}/off", dc.prefix), false).await?;
    outln!();
    outln!("2. With the fence check (every write carries If-Fence):");
    let (fenced_late, fenced_final) = round(&client, &format!("{}/on", dc.prefix), true).await?;
    let ok = unfenced_late && !fenced_late && fenced_final == "written by B";
    outln!();
    outln!(
        "{} without fences the paused client's late write went through (expected: it does)",
        check(unfenced_late)
    );
    outln!(
        "{} with fences it was refused and B's write stands",
        check(!fenced_late && fenced_final == "written by B")
    );
    Ok(json!({
        "demo": "pause",
        "unfenced_late_write_accepted": unfenced_late,
        "unfenced_final": unfenced_final,
        "fenced_late_write_accepted": fenced_late,
        "fenced_final": fenced_final,
        "invariants_hold": ok,
    }))
}
