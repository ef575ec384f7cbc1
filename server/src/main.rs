//! The `keel` binary: `keel server` runs a node, `keel cluster` a local cluster.

use clap::Parser;
use keel_server::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let endpoints = cli.endpoints;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => keel_server::server::run(*args)
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string()),
            Command::Cluster(args) => keel_server::cluster::run(args)
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string()),
            Command::Demo(args) => keel_server::demo::run(&endpoints, args)
                .await
                .map(|ok| if ok { 0 } else { 3 })
                .map_err(|e| e.to_string()),
            Command::Restore(args) => keel_server::server::restore(args)
                .map(|msg| {
                    println!("{msg}");
                    0
                })
                .map_err(|e| e.to_string()),
            Command::Client(cmd) => Ok(keel_server::cli::run(&endpoints, cmd).await),
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
