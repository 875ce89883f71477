//! The accept loop: connection limits, the header read timeout, HTTP/1.1 and h2c on one port,
//! each request told the address of the peer its connection came from.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower::ServiceExt as _;
use tower_api_key::ClientAddr;

/// What each connection may take: time to start sending, and a share of the server.
#[derive(Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// How long a client may take to send a request head (HTTP/1.1), or the first bytes of
    /// its connection (any protocol).
    pub(crate) header_read_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub(crate) max_connections: usize,
}

/// How often an idle HTTP/2 connection is pinged, and how long the answer may take: a peer
/// that is gone stops holding a connection slot.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to pause accepting after an error such as "too many open files", which would
/// otherwise repeat at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 and h2c connections until `stop` fires, then stops accepting and waits
/// for the open connections to finish their requests (the caller bounds that wait).
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: oneshot::Receiver<()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Warn once each time the limit is reached, not once per refused connection.
    let mut full = false;
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Refused, not queued: a queue would let a flood hold memory and time anyway.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !full {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: closing new connections until one ends"
                );
                full = true;
            }
            drop(stream);
            continue;
        };
        full = false;
        tokio::spawn(serve_connection(
            Arc::clone(&builder),
            stream,
            peer,
            app.clone(),
            graceful.watcher(),
            limits.header_read_timeout,
            slot,
        ));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// How many bytes a client must send within the header read timeout: the length of the
/// HTTP/2 preface, and less than any HTTP/1.1 request head with a `host` line.
const OPENING_BYTES: usize = 24;

/// Serves one connection, holding its slot until it ends. hyper's HTTP/1.1 header timeout
/// starts only once the protocol is known, so a client that sends nothing (or part of the
/// HTTP/2 preface) is cut off here.
///
/// Every request on it, HTTP/1.1 or gRPC, carries the peer's address as a [`ClientAddr`]:
/// what the API-key layer checks a key's allowed addresses against (or, with
/// `--trusted-proxies`, the proxy it reads `X-Forwarded-For` from).
async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    watcher: Watcher,
    opening_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let opened = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Opening {
        stream,
        received: 0,
        opened: Arc::clone(&opened),
    });
    let client = ClientAddr(peer.ip());
    let app = app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(client);
        request
    });
    let connection =
        watcher.watch(builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app)));
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = &mut connection => ended,
        () = tokio::time::sleep(opening_timeout) => {
            if !opened.load(Ordering::Relaxed) {
                tracing::debug!("closing a connection that sent too little in time");
                return;
            }
            connection.await
        }
    };
    if let Err(err) = ended {
        // Clients resetting or timing out are routine, not the server's fault.
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// A connection's socket, noting when the client has sent its first [`OPENING_BYTES`].
struct Opening {
    stream: TcpStream,
    received: usize,
    opened: Arc<AtomicBool>,
}

impl AsyncRead for Opening {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.received < OPENING_BYTES {
            self.received += buf.filled().len() - before;
            if self.received >= OPENING_BYTES {
                self.opened.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Opening {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
