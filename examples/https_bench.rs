//! Cygni's HTTPS proxy on its own, for `scripts/bench-https.sh`: one app
//! route (`bench.localhost`, plus any `--host`) to one backend, one
//! certificate (PEM chain and key from files) served for every route host.
//!
//! ```text
//! https_bench --listen 127.0.0.1:PORT --backend 127.0.0.1:PORT
//!             --cert chain.pem --key key.pem [--host HOST] [--workers N]
//! ```
//!
//! The TLS configuration is the daemon's (`cygni::proxy::tls::server_config`):
//! TLS 1.2/1.3, aws-lc-rs, ALPN h2 + http/1.1, session cache and tickets.
//! Stops on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cygni::names::AppName;
use cygni::proxy::tls::{certified_key, server_config};
use cygni::proxy::{serve_https, CertStore, Challenges, ProxyConfig, RouteTable, Routes};
use tokio_util::sync::CancellationToken;

struct Args {
    listen: SocketAddr,
    backend: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    hosts: Vec<String>,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut backend, mut cert, mut key) = (None, None, None, None);
    let mut hosts = vec!["bench.localhost".to_string()];
    let mut workers = 0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--backend" => backend = Some(value()?.parse().map_err(|e| format!("--backend: {e}"))?),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--host" => hosts.push(value()?.to_ascii_lowercase()),
            "--workers" => workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        backend: backend.ok_or("--backend is required")?,
        cert: cert.ok_or("--cert is required")?,
        key: key.ok_or("--key is required")?,
        hosts,
        workers,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("https_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The per-core workers bring their own runtimes; this one only waits.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("https_bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("https_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let chain = std::fs::read_to_string(&args.cert)?;
    let key = std::fs::read_to_string(&args.key)?;
    let store = Arc::new(CertStore::new());
    for host in &args.hosts {
        store.insert(host, certified_key(host, &chain, &key)?);
    }
    let tls = server_config(store)?;
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
        ..ProxyConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_https(
        listener,
        Arc::new(RouteTable::new(routes)),
        Arc::new(Challenges::new()),
        tls,
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
