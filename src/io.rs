//! Small I/O helpers at the runtime seam.
//!
//! `send_now` writes what a socket accepts immediately with a non-blocking
//! `send(2)` (`MSG_DONTWAIT`: it never waits, whatever the socket's mode).
//! A response or an upstream request usually fits the socket buffer whole, so
//! this saves the completion round trip through the ring (submit, wait, reap)
//! that an awaited write costs on io_uring; what does not fit goes the
//! ordinary asynchronous way.
//!
//! Only while the thread is lightly loaded: with many requests in flight the
//! ring batches many writes into one `io_uring_enter`, and a system call per
//! write would cost more CPU than the round trip saves (measured: 12.1 vs 16.8
//! µs of CPU per request at 32 connections; docs/benchmarks.md). The worker
//! says which regime it is in with [`set_eager_writes`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

/// In-flight requests on a worker at or below which writes go out eagerly.
pub const EAGER_WRITE_INFLIGHT_MAX: i64 = 2;

thread_local! {
    static EAGER_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Tells this thread's writes whether to try `send_now` first.
#[inline]
pub fn set_eager_writes(eager: bool) {
    EAGER_WRITES.with(|c| c.set(eager));
}

#[inline]
pub fn eager_writes() -> bool {
    EAGER_WRITES.with(|c| c.get())
}

/// Writes as much of `buf` as the socket takes now; 0 when it takes nothing
/// or fails (the asynchronous write that follows sees and reports the error).
pub fn send_now(fd: RawFd, buf: &[u8]) -> usize {
    loop {
        // SAFETY: `buf` is a live slice for the call's duration; `fd` is an open
        // socket owned by the caller's stream.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return n as usize;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 0;
        }
    }
}

/// What a look at an idle connection's socket finds, without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleSocket {
    /// Nothing to read and no close seen: as far as this host knows, the
    /// peer still has the connection open.
    Quiet,
    /// Bytes are waiting to be read; the peer has not closed its side.
    Readable,
    /// The peer closed its side (its FIN arrived, whatever bytes precede
    /// it), reset the connection, or the socket has an error.
    Closed,
}

/// Looks at an idle socket with one non-blocking `poll(2)` (timeout 0;
/// `POLLRDHUP` sees the peer's FIN even behind unread bytes, which
/// `recv(MSG_PEEK)` cannot). Reads nothing and changes no readiness state
/// the runtime's driver relies on. It costs ~0.76 µs of CPU on an idle
/// loopback socket (`cargo bench --bench upstream`, docs/benchmarks.md; a
/// `recv(MSG_PEEK)` costs about the same), so callers keep it off the hot
/// path. A failed `poll` answers `Quiet`: the caller's next read or write
/// finds out.
pub fn idle_socket(fd: RawFd) -> IdleSocket {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid `pollfd` for the call's duration; `fd` is an
        // open socket owned by the caller's stream.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n >= 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return IdleSocket::Quiet;
        }
    }
    if p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        IdleSocket::Closed
    } else if p.revents & libc::POLLIN != 0 {
        IdleSocket::Readable
    } else {
        IdleSocket::Quiet
    }
}

/// Writes all of `buf` within `wait`: first without waiting, then the rest
/// asynchronously. The outer error is a timeout (the buffer is gone with the
/// cancelled write); the inner result is the write's.
pub async fn write_all_fast(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    wait: Duration,
) -> io::Result<(io::Result<()>, Vec<u8>)> {
    let sent = if eager_writes() {
        send_now(stream.as_raw_fd(), &buf)
    } else {
        0
    };
    if sent == buf.len() {
        return Ok((Ok(()), buf));
    }
    match monoio::time::timeout(wait, stream.write_all(buf.slice(sent..))).await {
        Ok((res, slice)) => Ok((res.map(|_| ()), slice.into_inner())),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        (ours, theirs)
    }

    /// Polls until the state settles (loopback delivery is asynchronous).
    fn settled(fd: RawFd, want: IdleSocket) -> IdleSocket {
        for _ in 0..200 {
            let got = idle_socket(fd);
            if got == want {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        idle_socket(fd)
    }

    #[test]
    fn an_idle_socket_is_seen_quiet_readable_or_closed() {
        let (ours, mut theirs) = pair();
        assert_eq!(idle_socket(ours.as_raw_fd()), IdleSocket::Quiet);
        theirs.write_all(b"x").unwrap();
        assert_eq!(
            settled(ours.as_raw_fd(), IdleSocket::Readable),
            IdleSocket::Readable
        );
        // The FIN behind an unread byte is still a close.
        theirs.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            settled(ours.as_raw_fd(), IdleSocket::Closed),
            IdleSocket::Closed
        );

        let (ours, theirs) = pair();
        drop(theirs);
        assert_eq!(
            settled(ours.as_raw_fd(), IdleSocket::Closed),
            IdleSocket::Closed
        );
        // Looking consumed nothing: the read still sees the EOF.
        let mut b = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &ours, &mut b).unwrap(), 0);
    }
}
