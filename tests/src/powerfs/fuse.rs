//! The FUSE side: kernel requests turned into operations on the [`State`] model. Every open
//! file is opened with direct I/O and every attribute and entry is given a time-to-live of zero,
//! so that the kernel caches nothing and every read sees the model (after a power loss too).

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::consts::FOPEN_DIRECT_IO;
use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use super::state::{Inode, Kind, State};

/// Nothing is cached by the kernel.
const TTL: Duration = Duration::ZERO;
/// `fallocate` mode: keep the size.
const FALLOC_FL_KEEP_SIZE: i32 = 1;
/// `renameat2` flag: do not replace.
const RENAME_NOREPLACE: u32 = 1;

/// The file system the kernel talks to; shares its model with the test's handle.
pub struct PowerFs {
    /// The model.
    pub state: Arc<Mutex<State>>,
    /// The owner of every file (the mounting user).
    pub uid: u32,
    /// The group of every file.
    pub gid: u32,
}

impl PowerFs {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a test thread panicked while holding it; the model is plain
        // data and still consistent enough to unmount.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(&self, ino: u64, n: &Inode) -> FileAttr {
        FileAttr {
            ino,
            size: n.size(),
            blocks: n.size().div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: UNIX_EPOCH,
            kind: match n.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            },
            perm: n.perm,
            nlink: match n.kind {
                Kind::File => 1,
                Kind::Dir => 2,
            },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn reply_entry(&self, st: &State, ino: u64, reply: ReplyEntry) {
        match st.get(ino) {
            Ok(n) => reply.entry(&TTL, &self.attr(ino, n), 0),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PowerFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let st = self.state();
        match st.lookup(parent, name) {
            Ok(ino) => self.reply_entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let st = self.state();
        match st.get(ino) {
            Ok(n) => reply.attr(&TTL, &self.attr(ino, n)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state();
        let result = (|| {
            if let Some(size) = size {
                st.truncate(ino, size)?;
            }
            if let Some(mode) = mode {
                st.chmod(ino, (mode & 0o7777) as u16)?;
            }
            Ok(())
        })();
        match result.and_then(|()| st.get(ino).map(|n| self.attr(ino, n))) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(libc::EPERM);
            return;
        }
        let mut st = self.state();
        match st.create(parent, name, Kind::File, (mode & !umask & 0o7777) as u16) {
            Ok(ino) => self.reply_entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state();
        match st.create(parent, name, Kind::Dir, (mode & !umask & 0o7777) as u16) {
            Ok(ino) => self.reply_entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.state().unlink(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.state().rmdir(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & !RENAME_NOREPLACE != 0 {
            reply.error(libc::EINVAL);
            return;
        }
        let noreplace = flags & RENAME_NOREPLACE != 0;
        match self
            .state()
            .rename(parent, name, newparent, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut st = self.state();
        match st.get(ino) {
            Ok(_) => {
                st.handle(ino, true);
                reply.opened(ino, FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state();
        match st.create(parent, name, Kind::File, (mode & !umask & 0o7777) as u16) {
            Ok(ino) => {
                st.handle(ino, true);
                match st.get(ino) {
                    Ok(n) => reply.created(&TTL, &self.attr(ino, n), 0, ino, FOPEN_DIRECT_IO),
                    Err(e) => reply.error(e),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let st = self.state();
        match st.read(ino, offset.max(0) as u64, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino, offset.max(0) as u64, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handle(ino, false);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        match self.state().fsync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state().get(ino).map(|n| n.kind) {
            Ok(Kind::Dir) => reply.opened(ino, 0),
            Ok(Kind::File) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.state().entries(ino) {
            Ok(e) => e,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let dots = [
            (OsStr::new(".").to_os_string(), ino, Kind::Dir),
            (OsStr::new("..").to_os_string(), ino, Kind::Dir),
        ];
        for (i, (name, child, kind)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset.max(0) as usize)
        {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(child, (i + 1) as i64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _d: bool, reply: ReplyEmpty) {
        match self.state().fsync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let blocks = 1 << 24;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        match self.state().get(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        let result = match mode {
            FALLOC_FL_KEEP_SIZE => st.get(ino).map(|_| ()),
            0 => {
                let end = offset.max(0).saturating_add(length.max(0)) as u64;
                match st.get(ino).map(|n| n.size()) {
                    Ok(size) if size < end => st.truncate(ino, end),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            _ => Err(libc::EOPNOTSUPP),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
