//! The upstream client: per-worker keep-alive pools of plain or TLS
//! connections, connect and read timeouts, bounded reads.
//!
//! A pool belongs to one worker and is used from that worker's tasks only
//! (`RefCell`, never a lock). Addresses come from the [`resolver::Resolver`],
//! so connecting never resolves a name on a worker.

pub mod resolver;
pub mod response;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::config::UpstreamTarget;
use crate::error::ApiError;
use crate::limits::READ_BUFFER_BYTES_INITIAL;

/// A connection's transport.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Io {
    async fn read(&mut self, buf: SliceMut<Vec<u8>>) -> BufResult<usize, SliceMut<Vec<u8>>> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            Io::Plain(s) => {
                use monoio::buf::IoBuf;
                let len = buf.len();
                let sent = if crate::io::eager_writes() {
                    crate::io::send_now(std::os::fd::AsRawFd::as_raw_fd(s), &buf)
                } else {
                    0
                };
                if sent == len {
                    return (Ok(len), buf);
                }
                let (res, slice) = s.write_all(buf.slice(sent..)).await;
                (res.map(|n| n + sent), slice.into_inner())
            }
            Io::Tls(s) => s.write_all(buf).await,
        }
    }
}

/// Identifies interchangeable connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub tls: bool,
    /// TLS server name / Host; two virtual hosts on one address differ.
    pub host: Arc<str>,
}

/// One upstream connection and its read buffer.
pub struct UpstreamConn {
    io: Io,
    /// The TCP socket under `io` (under the TLS session too), owned by it.
    fd: RawFd,
    /// Bytes read and not yet consumed.
    pub rbuf: Vec<u8>,
    /// True when the connection came from the pool (it may have gone stale).
    pub reused: bool,
    pub key: PoolKey,
    idle_since: Instant,
}

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(usize),
    Eof,
}

impl UpstreamConn {
    /// Whether a connection that sat idle in the pool may still be lent:
    /// not when the upstream has closed or reset it, nor, in plain HTTP,
    /// when it sent bytes nobody asked for (the stream is out of sync, as
    /// `Pool::checkin` judges too). Bytes pending on a TLS connection with
    /// no close behind them may be a session ticket or a key update, which
    /// rustls reads with the next response; a `close_notify` whose FIN has
    /// not arrived yet is read then as an EOF at once, which `forward`
    /// retries as stale. Costs one system call (`crate::io::idle_socket`).
    fn usable_after_idle(&self) -> bool {
        match (crate::io::idle_socket(self.fd), &self.io) {
            (crate::io::IdleSocket::Quiet, _) => true,
            (crate::io::IdleSocket::Readable, Io::Tls(_)) => true,
            (crate::io::IdleSocket::Readable, Io::Plain(_)) => false,
            (crate::io::IdleSocket::Closed, _) => false,
        }
    }

    /// Reads more bytes into `rbuf` (at most `max_total` buffered), within `wait`.
    pub async fn read_more(
        &mut self,
        max_total: usize,
        wait: Duration,
    ) -> Result<ReadOutcome, UpstreamIoError> {
        let len = self.rbuf.len();
        if len >= max_total {
            return Err(UpstreamIoError::TooLarge);
        }
        if self.rbuf.capacity() == len {
            let want = len.max(READ_BUFFER_BYTES_INITIAL).min(max_total - len);
            self.rbuf.reserve_exact(want);
        }
        let cap = self.rbuf.capacity().min(max_total);
        let buf = std::mem::take(&mut self.rbuf).slice_mut(len..cap);
        match monoio::time::timeout(wait, self.io.read(buf)).await {
            Ok((res, buf)) => {
                self.rbuf = buf.into_inner();
                match res {
                    Ok(0) => Ok(ReadOutcome::Eof),
                    Ok(n) => Ok(ReadOutcome::Data(n)),
                    Err(e) => Err(UpstreamIoError::Io(e)),
                }
            }
            Err(_) => Err(UpstreamIoError::Timeout),
        }
    }

    /// Writes all of `buf`; gives the buffer back for a retry.
    pub async fn write_all(
        &mut self,
        buf: Vec<u8>,
        wait: Duration,
    ) -> (Result<(), UpstreamIoError>, Option<Vec<u8>>) {
        match monoio::time::timeout(wait, self.io.write_all(buf)).await {
            Ok((Ok(_), buf)) => (Ok(()), Some(buf)),
            Ok((Err(e), buf)) => (Err(UpstreamIoError::Io(e)), Some(buf)),
            Err(_) => (Err(UpstreamIoError::Timeout), None),
        }
    }
}

#[derive(Debug)]
pub enum UpstreamIoError {
    Io(io::Error),
    Timeout,
    TooLarge,
}

/// How long a connection must have sat idle before `Pool::checkout` looks
/// at its socket (`UpstreamConn::usable_after_idle`) before lending it.
/// The look finds, without sending anything, the connections an upstream
/// closed at its keep-alive timeout, the common stale case; servers' timeouts
/// are a second or more (gunicorn 2 s, Node and uvicorn 5 s, nginx 75 s).
/// It costs a system call (~0.76 µs of CPU, `crate::io::idle_socket`, by
/// `cargo bench --bench upstream`; against the worker's ~12 µs a request at
/// load, docs/benchmarks.md), so a connection wanted again sooner is lent
/// unlooked-at. Under load that is
/// nearly every one (counted with strace, one worker, 4 client connections:
/// 15 looks in 3,000 requests at 500/s; every request at 4/s). An upstream
/// that closed a connection anyway (a restart) is found by the write, and
/// the request re-sent only within `limits::UPSTREAM_STALE_RETRY_WINDOW`.
pub const POOL_CHECK_IDLE_MIN: Duration = Duration::from_millis(100);

/// A worker's idle upstream connections.
pub struct Pool {
    /// foldhash, not SipHash: a checkout and a checkin per request, of keys
    /// from the config and DNS.
    idle: HashMap<PoolKey, Vec<UpstreamConn>, foldhash::fast::RandomState>,
    idle_per_key_max: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(idle_per_key_max: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: HashMap::default(),
            idle_per_key_max,
            idle_timeout,
        }
    }

    /// An idle connection for `key` that has not outlived the idle timeout
    /// and, when it sat idle `POOL_CHECK_IDLE_MIN` or longer, is still open.
    /// Connections found expired or closed are dropped.
    pub fn checkout(&mut self, key: &PoolKey) -> Option<UpstreamConn> {
        let list = self.idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            let idle = c.idle_since.elapsed();
            if idle >= self.idle_timeout {
                continue;
            }
            if idle >= POOL_CHECK_IDLE_MIN && !c.usable_after_idle() {
                continue;
            }
            c.reused = true;
            return Some(c);
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn checkin(&mut self, mut conn: UpstreamConn) {
        if !conn.rbuf.is_empty() || self.idle_per_key_max == 0 {
            return; // unsolicited bytes: the connection is out of sync
        }
        conn.idle_since = Instant::now();
        // An idle connection keeps its read buffer for its next response,
        // but not one grown for a large body or a long stream.
        conn.rbuf.shrink_to(READ_BUFFER_BYTES_INITIAL);
        let list = self.idle.entry(conn.key.clone()).or_default();
        if list.len() >= self.idle_per_key_max {
            // Drop the oldest: it is the likeliest to have gone stale.
            list.remove(0);
        }
        list.push(conn);
    }

    /// Idle connections across all upstreams.
    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// Drops connections idle past the timeout.
    pub fn evict_expired(&mut self) {
        let timeout = self.idle_timeout;
        for list in self.idle.values_mut() {
            list.retain(|c| c.idle_since.elapsed() < timeout);
        }
        self.idle.retain(|_, l| !l.is_empty());
    }
}

/// Opens a new connection (TCP, then TLS if the target wants it) within
/// `wait`. A free function so no pool borrow is held across the await.
pub async fn connect(
    tls: &monoio_rustls::TlsConnector,
    key: PoolKey,
    target: &UpstreamTarget,
    wait: Duration,
) -> Result<UpstreamConn, ApiError> {
    let started = Instant::now();
    let tcp = match monoio::time::timeout(wait, TcpStream::connect_addr(key.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(ApiError::bad_gateway(
                "upstream_unreachable",
                format!("cannot connect to the upstream {}: {e}", target.host_header),
            ))
        }
        Err(_) => {
            return Err(ApiError::gateway_timeout(format!(
                "connecting to the upstream {} timed out",
                target.host_header
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let io = if target.tls {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|_| {
            ApiError::bad_gateway(
                "upstream_tls",
                format!("invalid TLS server name {}", target.host),
            )
        })?;
        let left = wait.saturating_sub(started.elapsed());
        match monoio::time::timeout(left, tls.connect(name, tcp)).await {
            Ok(Ok(s)) => Io::Tls(Box::new(s)),
            Ok(Err(e)) => {
                return Err(ApiError::bad_gateway(
                    "upstream_tls",
                    format!(
                        "TLS handshake with the upstream {} failed: {e}",
                        target.host_header
                    ),
                ))
            }
            Err(_) => {
                return Err(ApiError::gateway_timeout(format!(
                    "TLS handshake with the upstream {} timed out",
                    target.host_header
                )))
            }
        }
    } else {
        Io::Plain(tcp)
    };
    Ok(UpstreamConn {
        io,
        fd,
        rbuf: Vec::with_capacity(READ_BUFFER_BYTES_INITIAL),
        reused: false,
        key,
        idle_since: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A plain connection to a `std` listener and the upstream's end of it.
    async fn conn_pair(listener: &std::net::TcpListener) -> (UpstreamConn, std::net::TcpStream) {
        let addr = listener.local_addr().unwrap();
        let tcp = TcpStream::connect_addr(addr).await.unwrap();
        let (theirs, _) = listener.accept().unwrap();
        let conn = UpstreamConn {
            fd: tcp.as_raw_fd(),
            io: Io::Plain(tcp),
            rbuf: Vec::new(),
            reused: false,
            key: PoolKey {
                addr,
                tls: false,
                host: Arc::from("up"),
            },
            idle_since: Instant::now(),
        };
        (conn, theirs)
    }

    #[test]
    fn checkout_skips_connections_the_upstream_closed_or_wrote_to_while_idle() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut pool = Pool::new(8, Duration::from_secs(30));
            // Oldest first: open, closed by the upstream, sent unsolicited bytes.
            let (open, _open_peer) = conn_pair(&listener).await;
            let (closed, closed_peer) = conn_pair(&listener).await;
            let (chatty, mut chatty_peer) = conn_pair(&listener).await;
            let (open_fd, key) = (open.fd, open.key.clone());
            pool.checkin(open);
            pool.checkin(closed);
            pool.checkin(chatty);
            drop(closed_peer);
            chatty_peer.write_all(b"HTTP/1.1 408 ").unwrap();
            monoio::time::sleep(POOL_CHECK_IDLE_MIN + Duration::from_millis(50)).await;
            let got = pool.checkout(&key).expect("the open connection");
            assert_eq!(got.fd, open_fd, "lent a closed or out-of-sync connection");
            assert!(got.reused);
            assert_eq!(pool.idle_count(), 0);
            assert!(pool.checkout(&key).is_none());
        });
    }

    #[test]
    fn a_connection_back_sooner_than_the_check_is_lent_unlooked_at() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut pool = Pool::new(8, Duration::from_secs(30));
            let (conn, peer) = conn_pair(&listener).await;
            let key = conn.key.clone();
            pool.checkin(conn);
            drop(peer);
            monoio::time::sleep(Duration::from_millis(50)).await;
            // Closed, but (as the clock is set) back in the pool sooner than
            // POOL_CHECK_IDLE_MIN: no system call is spent on it; the write
            // finds out, and forward retries it.
            pool.idle.get_mut(&key).unwrap()[0].idle_since =
                Instant::now() + Duration::from_secs(60);
            let got = pool.checkout(&key).expect("lent without a look");
            assert!(got.reused);
        });
    }
}
