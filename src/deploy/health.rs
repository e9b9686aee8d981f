//! Health checks for new `web` instances: the route switches to them only
//! once each one passes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::HealthCheck;

/// One probe: does the instance answer as the check asks?
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    let mut stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("not accepting connections on {addr} ({e})")),
        Err(_) => return Err(format!("connecting to {addr} timed out")),
    };
    let Some(path) = &check.path else {
        return settled(&mut stream, addr).await;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: cygni-healthcheck\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        // The status line is all we need.
        while n < buf.len() {
            let r = stream.read(&mut buf[n..]).await?;
            if r == 0 || buf[..n + r].contains(&b'\n') {
                n += r;
                break;
            }
            n += r;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let head = match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(format!("GET {path}: {e}")),
        Err(_) => return Err(format!("GET {path} timed out")),
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET {path} answered {code}")),
        None => Err(format!("GET {path} did not answer HTTP")),
    }
}

/// A bare accept is not enough for the TCP check: a proxy in front of the
/// app (the Docker engine's userland proxy on a published port) accepts
/// even when nothing listens behind it, and then closes at once. Silence
/// for a moment (the app waits for a request), or a banner, means an app.
async fn settled(stream: &mut TcpStream, addr: SocketAddr) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(200), stream.peek(&mut byte)).await {
        Err(_) => Ok(()),
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "not accepting connections on {addr} (closed at once: nothing listens behind it)"
        )),
        Ok(Err(e)) => Err(format!("not accepting connections on {addr} ({e})")),
    }
}
