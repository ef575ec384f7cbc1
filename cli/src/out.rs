//! Standard output for the commands: `outln!` instead of `println!`.
//!
//! `println!` panics when standard output is a pipe whose reader has gone (`keel status |
//! head -1`): a panic message and exit code 101 for what is not an error. Here a write that
//! finds the pipe closed ends the process quietly, with success: whoever closed it has read
//! what it wanted. Any other write error is reported on standard error (exit code 1).

use std::io::Write;

/// Writes formatted text to standard output; see the module's doc for a closed pipe.
pub fn write(args: std::fmt::Arguments<'_>) {
    if let Err(e) = try_write(args) {
        std::process::exit(failed(&e));
    }
}

/// Writes formatted text to standard output, for a command that must clean up before it ends
/// when nobody reads it (a held lock is given back first).
pub fn try_write(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush())
}

/// The exit code after a write to standard output failed: 0 when its reader has gone (see the
/// module's doc), else 1, with the error reported on standard error.
pub fn failed(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return 0;
    }
    eprintln!("keel: cannot write to standard output: {e}");
    1
}

/// `println!` that ends the process quietly when standard output is closed.
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
