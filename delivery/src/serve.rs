//! Serving HTTP/1.1 (keep-alive) on a listener with a cap on open connections and a bounded
//! graceful drain: the engine's API and `partner-sim` both run on it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::net::TcpListener;

/// A listener's limits and the name its log lines carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; the next is accepted once one closes.
    pub max_connections: usize,
    /// How long open requests may run on after shutdown before they are cut.
    pub drain: Duration,
    /// Names the server in log lines.
    pub name: &'static str,
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets open requests finish
/// for at most `limits.drain` and returns.
pub async fn http1<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(server = limits.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await; // e.g. out of fds: back off
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server = limits.name,
            "connections still open after the drain period; closing"
        );
    }
}
