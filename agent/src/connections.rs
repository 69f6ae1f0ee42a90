//! Bounds on the connections the gRPC server accepts (docs/operations.md, "Limits"):
//!
//! - [`raise_open_files`]: the open-file soft limit is raised to the hard limit at start, so
//!   the cap below, not the kernel, decides when connections are refused;
//! - [`Gate`]: at most `--max-client-connections` accepted connections at once (default: the
//!   open-file limit less [`RESERVED_FILES`] kept for peers, the data dir and logs). Past it a
//!   new connection is closed at once, and the refusals are logged at most once per
//!   [`REFUSAL_LOG_INTERVAL`];
//! - [`Admitted`]: a connection that has not sent [`PREFACE_LEN`] bytes (the length of the
//!   HTTP/2 client preface) within [`PREFACE_TIMEOUT`] is closed: hyper's HTTP/2 server has no
//!   handshake timeout of its own, and a silent connection would otherwise hold its slot for
//!   good.
//!
//! HTTP/2's own bounds (streams per connection, keepalive pings) are set on the server
//! builder in [`crate::service::serve`], from [`crate::limits::Limits`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Open files kept out of the default connection cap: peer connections, sled's files, logs.
pub const RESERVED_FILES: u64 = 64;
/// The default cap when the open-file limit is unlimited.
const UNLIMITED_CAP: u64 = 1 << 20;
/// How long a new connection has to send its first [`PREFACE_LEN`] bytes.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// The length of the HTTP/2 client connection preface (`PRI * HTTP/2.0...`).
pub const PREFACE_LEN: usize = 24;
/// The least time between two log lines about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Raises the open-file soft limit to the hard limit; returns the limits before and after.
#[allow(unsafe_code)]
pub fn raise_open_files() -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = l.rlim_cur;
    if l.rlim_cur < l.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: l.rlim_max,
            rlim_max: l.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        l.rlim_cur = l.rlim_max;
    }
    Ok((before, l.rlim_cur))
}

/// The open-file soft limit of this process, if it can be read.
#[allow(unsafe_code)]
pub fn open_files_limit() -> Option<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in raise_open_files.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0).then_some(l.rlim_cur)
}

/// The default of `--max-client-connections` for an open-file limit of `files`.
pub fn default_cap(files: Option<u64>) -> usize {
    let cap = match files {
        Some(f) if f != libc::RLIM_INFINITY => f.saturating_sub(RESERVED_FILES).max(1),
        _ => UNLIMITED_CAP,
    };
    usize::try_from(cap.min(UNLIMITED_CAP)).unwrap_or(usize::MAX)
}

/// Admits accepted connections up to the cap; see the module docs.
pub struct Gate {
    slots: Arc<Semaphore>,
    cap: usize,
    /// Connections refused since the last log line, and when that line was written.
    refused: Mutex<(u64, Option<Instant>)>,
}

impl Gate {
    pub fn new(cap: usize) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            refused: Mutex::new((0, None)),
        }
    }

    /// The connection with its slot, or `None` (the connection is closed) when all slots
    /// are taken.
    pub fn admit(&self, tcp: TcpStream) -> Option<Admitted> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Admitted {
                tcp,
                _slot: slot,
                preface: Some(Box::pin(tokio::time::sleep(PREFACE_TIMEOUT))),
                read: 0,
            }),
            Err(_) => {
                self.note_refusal(tcp.peer_addr().ok());
                None
            }
        }
    }

    fn note_refusal(&self, from: Option<std::net::SocketAddr>) {
        let mut r = self.refused.lock().expect("refusals");
        r.0 += 1;
        if r.1.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
            tracing::warn!(
                refused = r.0,
                last_from = ?from,
                "{} connections open, the most --max-client-connections allows: closing new ones",
                self.cap
            );
            *r = (0, Some(Instant::now()));
        }
    }
}

/// An accepted connection holding its slot of the [`Gate`] until it closes.
pub struct Admitted {
    tcp: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Fires when the first [`PREFACE_LEN`] bytes are late; `None` once they came.
    preface: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Some(deadline) = this.preface.as_mut() {
            match &r {
                Poll::Ready(Ok(())) => {
                    this.read += buf.filled().len() - before;
                    if this.read >= PREFACE_LEN {
                        this.preface = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        r
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The TCP addresses, as for a plain `TcpStream`, so `Request::remote_addr` keeps working.
impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_default_cap_keeps_a_reserve() {
        assert_eq!(default_cap(Some(1024)), 960);
        assert_eq!(default_cap(Some(10)), 1);
        assert_eq!(default_cap(None), UNLIMITED_CAP as usize);
        assert_eq!(
            default_cap(Some(libc::RLIM_INFINITY)),
            UNLIMITED_CAP as usize
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files().unwrap();
        assert_eq!(open_files_limit(), Some(after));
    }

    async fn pair(l: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_gate_closes_connections_past_the_cap_and_frees_slots() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Gate::new(1);
        let (_c1, s1) = pair(&l).await;
        let first = gate.admit(s1).expect("the first connection is admitted");
        let (mut c2, s2) = pair(&l).await;
        assert!(gate.admit(s2).is_none());
        // The refused connection was closed: its client reads end of file.
        assert_eq!(c2.read(&mut [0; 1]).await.unwrap(), 0);
        drop(first);
        let (_c3, s3) = pair(&l).await;
        assert!(
            gate.admit(s3).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_preface_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Gate::new(2);
        let (_silent, s) = pair(&l).await;
        let mut silent = gate.admit(s).unwrap();
        let e = silent.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn the_deadline_ends_with_the_preface() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Gate::new(1);
        let (mut talker, s) = pair(&l).await;
        let mut talking = gate.admit(s).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut talker, &[b'P'; PREFACE_LEN])
            .await
            .unwrap();
        let mut got = [0; PREFACE_LEN];
        talking.read_exact(&mut got).await.unwrap();
        assert!(talking.preface.is_none());
    }
}
