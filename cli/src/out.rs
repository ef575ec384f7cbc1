//! Standard output for the commands: `outln!` instead of `println!`.
//!
//! `println!` panics when standard output is a pipe whose reader has gone (`keel status |
//! head -1`): a panic message and exit code 101 for what is not an error. Here a write that
//! finds the pipe closed ends the process quietly, with success: whoever closed it has read
//! what it wanted. Any other write error is reported on standard error (exit code 1).

use std::io::Write;

/// Writes formatted text to standard output; see the module's doc for a closed pipe.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let done = stdout.write_fmt(args).and_then(|()| stdout.flush());
    match done {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("keel: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
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
