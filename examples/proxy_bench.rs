//! Cygni's proxy on its own, for `scripts/bench-proxy.sh`: one app route
//! (`bench.localhost` and any Host given with `--host`) to one backend.
//!
//! ```text
//! proxy_bench --listen 127.0.0.1:PORT --backend 127.0.0.1:PORT
//!             [--host HOST] [--workers N] [--shared-runtime]
//! ```
//!
//! `--shared-runtime` serves on one multi-thread tokio runtime instead of
//! per-core `current_thread` runtimes, to measure the difference. Stops on
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use cygni::names::AppName;
use cygni::proxy::{serve_http, Challenges, ProxyConfig, RouteTable, Routes};
use tokio_util::sync::CancellationToken;

struct Args {
    listen: SocketAddr,
    backend: SocketAddr,
    hosts: Vec<String>,
    workers: usize,
    shared_runtime: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut backend = None;
    let mut hosts = vec!["bench.localhost".to_string()];
    let mut workers = 0;
    let mut shared_runtime = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--backend" => backend = Some(value()?.parse().map_err(|e| format!("--backend: {e}"))?),
            "--host" => hosts.push(value()?.to_ascii_lowercase()),
            "--workers" => workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--shared-runtime" => shared_runtime = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        backend: backend.ok_or("--backend is required")?,
        hosts,
        workers,
        shared_runtime,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("proxy_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.shared_runtime {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if args.workers > 0 {
            b.worker_threads(args.workers);
        }
        b.enable_all().build()
    } else {
        // The per-core workers bring their own runtimes; this one only waits.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy_bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(args.listen)?;
    let routes = Routes::builder()
        .app(
            AppName::parse("bench")?,
            args.hosts,
            vec![args.backend],
            false,
        )
        .build();
    let config = ProxyConfig {
        workers: args.workers,
        per_core_runtimes: !args.shared_runtime,
        ..ProxyConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_http(
        listener,
        Arc::new(RouteTable::new(routes)),
        Arc::new(Challenges::new()),
        config,
        shutdown.clone(),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
    server.await??;
    Ok(())
}
