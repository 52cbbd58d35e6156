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

    /// An idle connection for `key` that has not outlived the idle timeout.
    pub fn checkout(&mut self, key: &PoolKey) -> Option<UpstreamConn> {
        let list = self.idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            if c.idle_since.elapsed() < self.idle_timeout {
                c.reused = true;
                return Some(c);
            }
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
        rbuf: Vec::with_capacity(READ_BUFFER_BYTES_INITIAL),
        reused: false,
        key,
        idle_since: Instant::now(),
    })
}
