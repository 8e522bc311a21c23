//! The lanes' HTTP connector: plain TCP connections (hyper-util's [`HttpConnector`]), each of
//! which can say when it is closed.
//!
//! A lane gives up on a request after its partner's timeout, but the partner may still be
//! working on it until it has seen the request's connection close, and hyper's pooled client
//! closes that connection later, in its own task. So a lane keeps a timed-out request's
//! in-flight place until [`Closed`] resolves. Each connection carries its [`Closed`] in its
//! [`Connected`] extras, where [`hyper_util::client::legacy::connect::capture_connection`]
//! finds it for a request.
//!
//! Closing is a lingering close: when hyper shuts a connection down, it sends its FIN, then
//! reads (and drops) what the partner still sends until the partner closes its side too, for
//! at most [`LINGER_MS`] and [`LINGER_MAX_BYTES`]; only then is the socket dropped and
//! [`Closed`] resolved. Dropping our socket alone tells the partner, but not when it has
//! listened: a partner that accepts the lane's next connection before it notices the close of
//! the last one would see one request too many in flight. A partner that closes its side has
//! stopped working on the request (or has answered it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;
use tower_service::Service;

/// Longest a closing connection waits for the partner to close its side.
pub const LINGER_MS: u64 = 10_000;
/// Most bytes a closing connection reads (and drops) while it waits for the partner to close.
pub const LINGER_MAX_BYTES: usize = 64 * 1024;

/// Resolves once its connection is closed.
#[derive(Debug, Clone)]
pub struct Closed(watch::Receiver<()>);

impl Closed {
    /// Waits until the connection is closed on both sides (or its linger ran out) and its
    /// socket is dropped.
    pub async fn wait(mut self) {
        // Nothing is ever sent: `changed` returns only with an error, once the sender (held by
        // the connection) is gone.
        while self.0.changed().await.is_ok() {}
    }

    /// The [`Closed`] of the connection `connected` describes, if it came from a
    /// [`Connector`].
    pub fn of(connected: &Connected) -> Option<Closed> {
        let mut extras = hyper::http::Extensions::new();
        connected.get_extras(&mut extras);
        extras.remove::<Closed>()
    }
}

/// [`HttpConnector`] whose connections carry a [`Closed`].
#[derive(Debug, Clone)]
pub struct Connector(pub HttpConnector);

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move {
            let io = connecting.await?;
            let (open, closed) = watch::channel(());
            Ok(Conn {
                io,
                _open: open,
                closed: Closed(closed),
                closing: None,
            })
        })
    }
}

/// A TCP connection that lingers when shut down and resolves its [`Closed`] when dropped.
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<TcpStream>,
    /// Dropped with the socket (declared after it, so dropped after it): that resolves every
    /// copy of `closed`.
    _open: watch::Sender<()>,
    closed: Closed,
    /// Once our FIN is sent: the end of the linger, and the bytes read since.
    closing: Option<(Pin<Box<Sleep>>, usize)>,
}

impl Conn {
    /// Reads and drops what the partner sends until it closes its side (or resets the
    /// connection), the linger runs out, or [`LINGER_MAX_BYTES`] were read.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((deadline, read)) = &mut self.closing else {
            return Poll::Ready(());
        };
        let mut buf = [0u8; 4096];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *read >= LINGER_MAX_BYTES {
                return Poll::Ready(());
            }
            let mut into = ReadBuf::new(&mut buf);
            match Pin::new(self.io.inner_mut()).poll_read(cx, &mut into) {
                Poll::Ready(Ok(())) if !into.filled().is_empty() => *read += into.filled().len(),
                Poll::Ready(_) => return Poll::Ready(()), // closed or reset
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.closed.clone())
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
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
        if self.closing.is_none() {
            std::task::ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
            let linger = tokio::time::sleep(std::time::Duration::from_millis(LINGER_MS));
            self.closing = Some((Box::pin(linger), 0));
        }
        self.poll_linger(cx).map(Ok)
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

    /// A connection from a [`Connector`] to a fresh listener, and the listener's end of it.
    async fn pair() -> (Conn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let conn = Connector(HttpConnector::new()).call(uri).await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (conn, peer)
    }

    #[tokio::test]
    async fn closed_resolves_when_the_connection_is_dropped() {
        let (conn, _peer) = pair().await;
        let closed = Closed::of(&conn.connected()).expect("a connector's connection");
        let mut waiting = std::pin::pin!(closed.wait());
        assert!(
            futures_util::poll!(waiting.as_mut()).is_pending(),
            "open yet"
        );
        drop(conn);
        waiting.await;
    }

    #[tokio::test]
    async fn a_shutdown_lasts_until_the_partner_has_closed_its_side() {
        let (mut conn, mut peer) = pair().await;
        let mut shutdown = std::pin::pin!(std::future::poll_fn(
            |cx| Pin::new(&mut conn).poll_shutdown(cx)
        ));
        assert!(
            futures_util::poll!(shutdown.as_mut()).is_pending(),
            "the partner has not closed"
        );
        // The partner sees our FIN, sends a late answer (dropped) and closes.
        assert_eq!(peer.read(&mut [0u8; 16]).await.unwrap(), 0);
        peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(
            futures_util::poll!(shutdown.as_mut()).is_pending(),
            "the partner has not closed"
        );
        drop(peer);
        shutdown.await.unwrap();
    }
}
