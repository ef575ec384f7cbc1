//! A disk that can lose power: each node's data directory on a small FUSE file system of the
//! harness's own (after Jepsen's LazyFS) that keeps what is written in a cache of its own until
//! the file is fsynced (and, for creates, renames and unlinks, until the directory is), and on
//! command forgets everything not yet synced. kill -9 keeps the kernel's page cache, so a
//! missing fsync is invisible to it; a power loss is not.
//!
//! - `state.rs`: the model (what readers see now, what survives), pure data, tested alone;
//! - `fuse.rs`: the kernel's requests turned into operations on the model (fuser, without
//!   libfuse; the kernel caches nothing: direct I/O, zero time-to-live).
//!
//! The file system runs on a thread of the test process; nodes are other processes using the
//! mount. Mounting needs /dev/fuse and root (or fusermount3); `scripts/setup.sh` installs fuse3.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod fuse;
mod state;

pub use state::Stats;

/// The name mounts carry in /proc/mounts, to find leftovers of dead runs.
const FS_NAME: &str = "keel-powerfs";

/// One mounted disk; unmounted when dropped.
pub struct PowerDisk {
    /// The model, shared with the file system thread.
    state: Arc<Mutex<state::State>>,
    /// Where it is mounted.
    mountpoint: PathBuf,
    /// The FUSE session (its drop unmounts).
    session: Option<fuser::BackgroundSession>,
}

impl PowerDisk {
    /// Mounts an empty disk at `dir` (created if missing).
    pub fn mount(dir: &Path) -> Result<PowerDisk, String> {
        cleanup_stale_mounts();
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let state = Arc::new(Mutex::new(state::State::default()));
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let fs = fuse::PowerFs {
            state: state.clone(),
            uid,
            gid,
        };
        let options = [
            fuser::MountOption::FSName(FS_NAME.into()),
            fuser::MountOption::RW,
        ];
        let session = fuser::spawn_mount2(fs, dir, &options).map_err(|e| {
            format!(
                "cannot mount a power disk at {} (needs /dev/fuse, and root or fusermount3): {e}",
                dir.display()
            )
        })?;
        Ok(PowerDisk {
            state,
            mountpoint: dir.to_path_buf(),
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Power is lost: everything written but not fsynced is gone (stop the processes using the
    /// disk first). Returns the bytes of file contents thrown away.
    pub fn power_loss(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_loss()
    }

    /// What the disk holds and has done.
    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }
}

impl Drop for PowerDisk {
    fn drop(&mut self) {
        // Dropping the session unmounts (lazily, if a process still holds a file open).
        self.session.take();
    }
}

/// Detaches power disks left mounted by runs that died without unmounting them.
fn cleanup_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        if source != FS_NAME {
            continue;
        }
        // A mount of a live disk in this process is answered by its session; a dead one's
        // mount point fails to stat ("transport endpoint is not connected").
        if std::fs::metadata(target).is_ok() {
            continue;
        }
        if let Ok(c) = std::ffi::CString::new(target) {
            // SAFETY: umount2 on a path string we own, with a valid flag.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
