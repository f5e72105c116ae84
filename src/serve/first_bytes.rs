//! A deadline for a connection's first request bytes. hyper waits forever
//! for the HTTP/2 preface (and, after a TLS handshake, for anything at all),
//! so connections that open and stay silent would pile up until the
//! connection cap or the descriptor limit. The deadline is met once the
//! peer has sent a preface's worth of bytes or the server has answered
//! (an HTTP/1.1 request can be shorter than a preface); after that the
//! HTTP/1.1 header-read timeout, HTTP/2 keep-alive and the idle timeout
//! take over.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// The HTTP/2 connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

pin_project! {
    pub struct FirstBytes<IO> {
        #[pin]
        io: IO,
        // `None` once the deadline is met.
        deadline: Option<Pin<Box<Sleep>>>,
        wanted: usize,
    }
}

// === impl FirstBytes ===

impl<IO> FirstBytes<IO> {
    pub(super) fn new(io: IO, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            wanted: PREFACE_LEN,
        }
    }
}

impl<IO: AsyncRead> AsyncRead for FirstBytes<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.io.poll_read(cx, buf);
        let Some(deadline) = this.deadline else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                *this.wanted = this.wanted.saturating_sub(buf.filled().len() - before);
                if *this.wanted == 0 {
                    *this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                ready!(deadline.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the handshake timeout",
                )))
            }
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for FirstBytes<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = ready!(this.io.poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            *this.deadline = None;
        }
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = ready!(this.io.poll_write_vectored(cx, bufs));
        if matches!(written, Ok(n) if n > 0) {
            *this.deadline = None;
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (_peer, ours) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(ours, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let err = io.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_preface_is_not_enough() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(ours, Duration::from_secs(10));
        peer.write_all(b"PRI * HTTP").await.unwrap();
        assert_eq!(io.read(&mut [0; 64]).await.unwrap(), 10);
        let err = io.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_preface_or_an_answer_disarms_it() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(ours, Duration::from_secs(10));
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(io.read(&mut [0; 64]).await.unwrap(), 24);
        let late = tokio::time::timeout(Duration::from_secs(60), io.read(&mut [0; 8])).await;
        assert!(late.is_err(), "still waiting, without an error");

        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(ours, Duration::from_secs(10));
        peer.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let _ = io.read(&mut [0; 64]).await.unwrap();
        io.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap();
        let late = tokio::time::timeout(Duration::from_secs(60), io.read(&mut [0; 8])).await;
        assert!(late.is_err(), "still waiting, without an error");
    }
}
