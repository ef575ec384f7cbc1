//! The `keel` binary: `keel server` runs a node; `keel cluster` starts a local cluster;
//! `keel get`, `put`, ... and `keel demo` talk to one through `keel-client`.
//!
//! # Layout
//! - `args.rs`: the command line; `opts.rs`: the options the subcommands share (endpoints,
//!   token, TLS; the local cluster's flags);
//! - `commands.rs`: the client commands; `coord.rs`: `keel lease`, `keel lock`, `keel elect`;
//! - `demo/`: the correctness demonstrations;
//! - `launcher.rs`: the local cluster of child processes (`keel cluster`, `keel demo --local`);
//! - `certs.rs`: `keel certs`, a private CA and certificates (rcgen);
//! - `join.rs`: how `keel server --join` joins a cluster (through the client library).

#![warn(missing_docs)]

// Standard output that may be closed early (`keel status | head -1`): the command ends quietly
// with success instead of panicking on the broken pipe.
#[macro_use]
mod out;
mod args;
mod certs;
mod commands;
mod coord;
mod demo;
mod join;
mod launcher;
mod opts;
mod watch;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = matches!(&cli.command, Command::Server(a) if a.log_format == keel_server::config::LogFormat::Json);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().with_current_span(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Server(a) = &cli.command {
        if a.worker_threads > 0 {
            builder.worker_threads(usize::from(a.worker_threads));
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let endpoints = cli.endpoints;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => keel_server::node::run(*args, &join::ClientJoin)
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string()),
            Command::Cluster(args) => launcher::run(args)
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string()),
            Command::Demo(args) => demo::run(&endpoints, args)
                .await
                .map(|ok| if ok { 0 } else { 3 })
                .map_err(|e| e.to_string()),
            Command::Restore(args) => keel_server::node::restore(args)
                .map(|msg| {
                    outln!("{msg}");
                    0
                })
                .map_err(|e| e.to_string()),
            Command::Certs(args) => certs::run(&args)
                .map(|written| {
                    for w in written {
                        outln!("wrote {w}");
                    }
                    0
                })
                .map_err(|e| e.to_string()),
            Command::Client(cmd) => Ok(commands::run(&endpoints, cmd).await),
            Command::CronWorker(args) => demo::cron::worker(&endpoints.list(), args)
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string()),
            Command::Lease(args) => Ok(coord::lease(&endpoints, args).await),
            Command::Lock(args) => Ok(coord::lock(&endpoints, args).await),
            Command::Elect(args) => Ok(coord::elect(&endpoints, args).await),
            Command::Watch(args) => Ok(watch::run(&endpoints, args).await),
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("keel: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
