//! The model of a disk with a volatile cache: every file and directory has what a reader sees
//! now and what survives a power loss, and only `fsync` moves the first into the second.
//!
//! - A file's contents (and size) become durable when the file is fsynced (`fsync` or
//!   `fdatasync`).
//! - A directory's entries (creates, unlinks, renames in and out of it) become durable when the
//!   directory is fsynced. A file that was written and fsynced but whose directory entry never
//!   was is gone after a power loss, as on a real file system.
//! - [`State::power_loss`] throws away everything not durable.
//!
//! Pure data: no FUSE, no I/O, tested on its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One file or directory.
#[derive(Clone, Debug)]
pub struct Inode {
    /// File or directory.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u16,
    /// Last change of contents or entries.
    pub mtime: SystemTime,
    /// A file's contents as readers see them now.
    data: Vec<u8>,
    /// A file's contents as of its last fsync.
    durable_data: Vec<u8>,
    /// The byte range written since the last fsync (None: nothing), so that an fsync copies
    /// only what changed: a write-ahead log grows by appends and is fsynced after each.
    dirty: Option<(usize, usize)>,
    /// A directory's entries as readers see them now.
    entries: BTreeMap<OsString, u64>,
    /// A directory's entries as of its last fsync.
    durable_entries: BTreeMap<OsString, u64>,
    /// Open handles (an unlinked file stays while open).
    open: u32,
}

impl Inode {
    fn new(kind: Kind, perm: u16) -> Self {
        Inode {
            kind,
            perm,
            mtime: SystemTime::now(),
            data: Vec::new(),
            durable_data: Vec::new(),
            dirty: None,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            open: 0,
        }
    }

    /// Notes that `lo..hi` changed since the last fsync.
    fn mark_dirty(&mut self, lo: usize, hi: usize) {
        self.dirty = Some(match self.dirty {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }

    /// The size readers see.
    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File => self.data.len() as u64,
            Kind::Dir => 4096,
        }
    }
}

/// Counts of what the model holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inodes held (live or durable).
    pub inodes: usize,
    /// File fsyncs.
    pub file_syncs: u64,
    /// Directory fsyncs.
    pub dir_syncs: u64,
    /// Power losses.
    pub power_losses: u64,
    /// Bytes of file contents thrown away by the last power loss (written but never fsynced).
    pub bytes_lost_last: u64,
}

/// Every inode, by number.
pub struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    stats: Stats,
}

impl Default for State {
    fn default() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(Kind::Dir, 0o755));
        State {
            inodes,
            next_ino: ROOT + 1,
            stats: Stats::default(),
        }
    }
}

/// An errno.
pub type Errno = i32;

impl State {
    /// The inode `ino`.
    pub fn get(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn get_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        let d = self.get_mut(ino)?;
        if d.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(d)
    }

    /// The inode named `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let d = self.get(parent)?;
        if d.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        d.entries.get(name).copied().ok_or(libc::ENOENT)
    }

    /// The entries of directory `ino`, in name order.
    pub fn entries(&self, ino: u64) -> Result<Vec<(OsString, u64, Kind)>, Errno> {
        let d = self.get(ino)?;
        if d.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(d.entries
            .iter()
            .filter_map(|(n, i)| Some((n.clone(), *i, self.inodes.get(i)?.kind)))
            .collect())
    }

    /// Creates `name` in `parent` (EEXIST if it exists).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
    ) -> Result<u64, Errno> {
        if self.lookup(parent, name).is_ok() {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(kind, perm));
        let d = self.dir_mut(parent)?;
        d.entries.insert(name.to_os_string(), ino);
        d.mtime = SystemTime::now();
        Ok(ino)
    }

    /// Removes the file `name` from `parent`.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if self.get(ino)?.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let d = self.dir_mut(parent)?;
        d.entries.remove(name);
        d.mtime = SystemTime::now();
        self.collect();
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let target = self.get(ino)?;
        if target.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        if !target.entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        let d = self.dir_mut(parent)?;
        d.entries.remove(name);
        d.mtime = SystemTime::now();
        self.collect();
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname`, replacing a file (or an empty directory)
    /// there. `noreplace`: EEXIST instead of replacing.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if let Ok(existing) = self.lookup(newparent, newname) {
            if existing == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            let e = self.get(existing)?;
            let moving = self.get(ino)?.kind;
            match (moving, e.kind) {
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::Dir) if !e.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        self.dir_mut(newparent)?;
        let d = self.dir_mut(parent)?;
        d.entries.remove(name);
        d.mtime = SystemTime::now();
        let nd = self.dir_mut(newparent)?;
        nd.entries.insert(newname.to_os_string(), ino);
        nd.mtime = SystemTime::now();
        self.collect();
        Ok(())
    }

    /// Reads up to `size` bytes of file `ino` at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let f = self.get(ino)?;
        if f.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.data.len());
        let end = start.saturating_add(size as usize).min(f.data.len());
        Ok(&f.data[start..end])
    }

    /// Writes `data` into file `ino` at `offset` (extending it with zeros as needed).
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let f = self.get_mut(ino)?;
        if f.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
        let end = start.checked_add(data.len()).ok_or(libc::EFBIG)?;
        if f.data.len() < end {
            // The zeros a write past the end leaves are part of what changed.
            let from = f.data.len().min(start);
            f.data.resize(end, 0);
            f.mark_dirty(from, end);
        }
        f.data[start..end].copy_from_slice(data);
        f.mark_dirty(start, end);
        f.mtime = SystemTime::now();
        u32::try_from(data.len()).map_err(|_| libc::EFBIG)
    }

    /// Sets the size of file `ino`.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let f = self.get_mut(ino)?;
        if f.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
        let old = f.data.len();
        f.data.resize(size, 0);
        if size > old {
            f.mark_dirty(old, size);
        }
        f.mtime = SystemTime::now();
        Ok(())
    }

    /// Sets the permission bits of `ino`.
    pub fn chmod(&mut self, ino: u64, perm: u16) -> Result<(), Errno> {
        self.get_mut(ino)?.perm = perm;
        Ok(())
    }

    /// `fsync`/`fdatasync` of file `ino` (or of a directory: its entries).
    pub fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        let n = self.get_mut(ino)?;
        match n.kind {
            Kind::File => {
                n.durable_data.resize(n.data.len(), 0);
                if let Some((lo, hi)) = n.dirty.take() {
                    let hi = hi.min(n.data.len());
                    if lo < hi {
                        n.durable_data[lo..hi].copy_from_slice(&n.data[lo..hi]);
                    }
                }
                self.stats.file_syncs += 1;
            }
            Kind::Dir => {
                n.durable_entries = n.entries.clone();
                self.stats.dir_syncs += 1;
                self.collect();
            }
        }
        Ok(())
    }

    /// An open handle of `ino` more (true) or less (false).
    pub fn handle(&mut self, ino: u64, open: bool) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            if open {
                n.open += 1;
            } else {
                n.open = n.open.saturating_sub(1);
            }
        }
        if !open {
            self.collect();
        }
    }

    /// Power is lost: everything not made durable by an fsync is gone. Returns the bytes of file
    /// contents thrown away.
    pub fn power_loss(&mut self) -> u64 {
        let mut lost = 0u64;
        for n in self.inodes.values_mut() {
            let differs = n.data != n.durable_data;
            if differs {
                lost += n.data.len().abs_diff(n.durable_data.len()).max(1) as u64;
            }
            n.data = n.durable_data.clone();
            n.dirty = None;
            n.entries = n.durable_entries.clone();
            n.open = 0;
        }
        self.collect();
        self.stats.power_losses += 1;
        self.stats.bytes_lost_last = lost;
        lost
    }

    /// Frees inodes that no path reaches, now or after a power loss, and that nobody holds
    /// open.
    fn collect(&mut self) {
        let mut keep: HashSet<u64> = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(n) = self.inodes.get(&ino) {
                stack.extend(n.entries.values().copied());
                stack.extend(n.durable_entries.values().copied());
            }
        }
        self.inodes
            .retain(|ino, n| keep.contains(ino) || n.open > 0);
    }

    /// What the model holds and has done.
    pub fn stats(&self) -> Stats {
        Stats {
            inodes: self.inodes.len(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn only_fsynced_contents_and_entries_survive_a_power_loss() {
        let mut s = State::default();
        let wal = s
            .create(ROOT, name("wal"), Kind::File, 0o644)
            .expect("create");
        s.write(wal, 0, b"entry-1").expect("write");
        s.fsync(wal).expect("fsync file");
        s.fsync(ROOT).expect("fsync dir");
        s.write(wal, 7, b" entry-2").expect("write");
        let tmp = s
            .create(ROOT, name("tmp"), Kind::File, 0o644)
            .expect("create");
        s.write(tmp, 0, b"never synced entry").expect("write");
        s.fsync(tmp).expect("the file, but not its directory entry");
        assert_eq!(s.read(wal, 0, 100).expect("read"), b"entry-1 entry-2");

        assert!(s.power_loss() > 0);
        assert_eq!(s.read(wal, 0, 100).expect("read"), b"entry-1");
        assert_eq!(
            s.lookup(ROOT, name("tmp")),
            Err(libc::ENOENT),
            "its entry was never synced"
        );
        assert_eq!(s.stats().inodes, 2, "the unreachable file is freed");
    }

    #[test]
    fn renames_and_unlinks_are_durable_only_once_the_directory_is_synced() {
        let mut s = State::default();
        let dir = s.create(ROOT, name("db"), Kind::Dir, 0o755).expect("mkdir");
        s.fsync(ROOT).expect("fsync root");
        let cur = s
            .create(dir, name("CURRENT"), Kind::File, 0o644)
            .expect("create");
        s.write(cur, 0, b"MANIFEST-1").expect("write");
        s.fsync(cur).expect("fsync");
        s.fsync(dir).expect("fsync dir");
        // CURRENT replaced by rename, as RocksDB does; the directory is not synced yet.
        let tmp = s
            .create(dir, name("CURRENT.tmp"), Kind::File, 0o644)
            .expect("create");
        s.write(tmp, 0, b"MANIFEST-2").expect("write");
        s.fsync(tmp).expect("fsync");
        s.rename(dir, name("CURRENT.tmp"), dir, name("CURRENT"), false)
            .expect("rename");
        let now = s.lookup(dir, name("CURRENT")).expect("lookup");
        assert_eq!(s.read(now, 0, 100).expect("read"), b"MANIFEST-2");
        s.power_loss();
        let after = s.lookup(dir, name("CURRENT")).expect("lookup");
        assert_eq!(
            s.read(after, 0, 100).expect("read"),
            b"MANIFEST-1",
            "rename not durable"
        );
        // Once the directory is synced, the rename survives.
        let tmp = s
            .create(dir, name("CURRENT.tmp"), Kind::File, 0o644)
            .expect("create");
        s.write(tmp, 0, b"MANIFEST-3").expect("write");
        s.fsync(tmp).expect("fsync");
        s.rename(dir, name("CURRENT.tmp"), dir, name("CURRENT"), false)
            .expect("rename");
        s.fsync(dir).expect("fsync dir");
        s.power_loss();
        let after = s.lookup(dir, name("CURRENT")).expect("lookup");
        assert_eq!(s.read(after, 0, 100).expect("read"), b"MANIFEST-3");
        assert_eq!(s.lookup(dir, name("CURRENT.tmp")), Err(libc::ENOENT));
        // An unlink not synced comes back.
        s.unlink(dir, name("CURRENT")).expect("unlink");
        s.power_loss();
        assert!(s.lookup(dir, name("CURRENT")).is_ok());
    }

    #[test]
    fn an_fsync_makes_every_change_since_the_last_one_durable() {
        let mut s = State::default();
        let f = s
            .create(ROOT, name("f"), Kind::File, 0o644)
            .expect("create");
        s.fsync(ROOT).expect("fsync dir");
        s.write(f, 0, b"aaaa").expect("write");
        s.fsync(f).expect("fsync");
        s.write(f, 2, b"BB").expect("overwrite");
        s.write(f, 10, b"CC").expect("write past the end");
        s.fsync(f).expect("fsync");
        s.truncate(f, 3).expect("shrink");
        s.fsync(f).expect("fsync");
        s.truncate(f, 6).expect("grow");
        s.write(f, 0, b"x").expect("write");
        s.power_loss();
        assert_eq!(s.read(f, 0, 100).expect("read"), b"aaB");
        s.write(f, 5, b"Z").expect("write past the end");
        s.fsync(f).expect("fsync");
        s.power_loss();
        assert_eq!(s.read(f, 0, 100).expect("read"), b"aaB\0\0Z");
    }

    #[test]
    fn directory_rules() {
        let mut s = State::default();
        let d = s.create(ROOT, name("d"), Kind::Dir, 0o755).expect("mkdir");
        s.create(d, name("f"), Kind::File, 0o644).expect("create");
        assert_eq!(s.create(d, name("f"), Kind::File, 0o644), Err(libc::EEXIST));
        assert_eq!(s.rmdir(ROOT, name("d")), Err(libc::ENOTEMPTY));
        assert_eq!(
            s.rename(d, name("f"), ROOT, name("d"), false),
            Err(libc::EISDIR)
        );
        let g = s
            .create(ROOT, name("g"), Kind::File, 0o644)
            .expect("create");
        assert_eq!(
            s.rename(ROOT, name("g"), d, name("f"), true),
            Err(libc::EEXIST)
        );
        s.rename(ROOT, name("g"), d, name("f"), false)
            .expect("replace");
        assert_eq!(s.lookup(d, name("f")), Ok(g));
        s.unlink(d, name("f")).expect("unlink");
        s.rmdir(ROOT, name("d")).expect("rmdir");
        assert_eq!(s.stats().inodes, 1);
    }

    #[test]
    fn an_open_unlinked_file_stays_until_closed() {
        let mut s = State::default();
        let f = s
            .create(ROOT, name("f"), Kind::File, 0o644)
            .expect("create");
        s.handle(f, true);
        s.unlink(ROOT, name("f")).expect("unlink");
        assert_eq!(s.write(f, 0, b"x"), Ok(1));
        s.handle(f, false);
        assert_eq!(s.get(f).err(), Some(libc::ENOENT));
    }
}
