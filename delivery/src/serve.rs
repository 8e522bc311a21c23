//! Serving HTTP/1.1 (keep-alive) on a listener with a cap on open connections and a bounded
//! graceful drain: the engine's API and `partner-sim` both run on it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// A listener's limits and the name its log lines carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; the next is accepted once one closes.
    pub max_connections: usize,
    /// How long open requests may run on after shutdown before they are cut.
    pub drain: Duration,
    /// How long a client may take to send a request's headers, counted from when the
    /// connection is ready for one (so it also bounds an idle keep-alive connection); past it
    /// the connection is closed. Without it, half-sent or idle connections would hold their
    /// places until `max_connections` of them stop the accept loop.
    pub header_read_timeout: Duration,
    /// Names the server in log lines.
    pub name: &'static str,
}

/// The [`Limits::header_read_timeout`] of the engine and `partner-sim`.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

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
    http1_per_connection(listener, move || (service.clone(), ()), limits, shutdown).await;
}

/// [`http1`] with a service made for each connection by `connection`, together with a value
/// dropped just before the connection's socket is closed. hyper drops a connection's socket
/// before the handler of a request still running on it, so the value is the way to act on a
/// client going away before the client can see the close: `partner-sim` stops counting the
/// connection's request in flight there.
pub async fn http1_per_connection<F, S, B, G>(
    listener: TcpListener,
    mut connection: F,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    F: FnMut() -> (S, G),
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    G: Send + Unpin + 'static,
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
        let (service, before_close) = connection();
        let io = Socket {
            _before_close: before_close,
            io: TokioIo::new(stream),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, service);
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

/// A connection's socket, with a value dropped just before it.
struct Socket<G> {
    /// Declared before `io`, so dropped before it.
    _before_close: G,
    io: TokioIo<TcpStream>,
}

impl<G: Unpin> Read for Socket<G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<G: Unpin> Write for Socket<G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether the server closes `stream` within `within` (reading whatever it answers).
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    /// L4: a half-sent request, or a connection that sends nothing, held its connection place
    /// for good.
    #[tokio::test]
    async fn half_sent_and_idle_connections_are_closed_after_the_header_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        });
        let limits = Limits {
            max_connections: 4,
            drain: Duration::from_secs(1),
            header_read_timeout: Duration::from_millis(300),
            name: "test",
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http1(listener, service, limits, async {
            let _ = stopped.await;
        }));

        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"POST /v1/draw HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut half, Duration::from_secs(5)).await,
            "half-sent request"
        );
        assert!(
            closed_within(&mut idle, Duration::from_secs(5)).await,
            "idle connection"
        );

        // A whole request is still answered.
        let mut whole = tokio::net::TcpStream::connect(addr).await.unwrap();
        whole
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        whole.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");

        let _ = stop.send(());
        server.await.unwrap();
    }
}
