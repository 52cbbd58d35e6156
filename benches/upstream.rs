//! What the upstream pool's look at an idle connection costs: one
//! non-blocking `poll(2)` (`io::idle_socket`) on an idle loopback socket,
//! beside a `recv(MSG_PEEK)` for comparison. `Pool::checkout` pays it only
//! for a connection idle `POOL_CHECK_IDLE_MIN` or longer.
//! Run: `cargo bench --bench upstream`.

use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

fn benches(c: &mut criterion::Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let fd = client.as_raw_fd();
    assert_eq!(
        bursar::io::idle_socket(fd),
        bursar::io::IdleSocket::Quiet,
        "an open, idle connection"
    );
    let mut g = c.benchmark_group("pool_look");
    g.bench_function("idle_socket_poll", |b| {
        b.iter(|| bursar::io::idle_socket(black_box(fd)))
    });
    g.bench_function("recv_msg_peek", |b| {
        let mut byte = [0u8; 1];
        b.iter(|| {
            // SAFETY: a valid socket and a one-byte buffer that outlives the call.
            unsafe {
                libc::recv(
                    black_box(fd),
                    byte.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            }
        })
    });
    g.finish();
}

criterion::criterion_group!(group, benches);
criterion::criterion_main!(group);
