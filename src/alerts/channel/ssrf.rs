//! The SSRF guard: a channel's destination is resolved once, every address is
//! classified, and the connection goes to exactly the addresses checked (no
//! second resolution a DNS rebinding could answer differently).
//!
//! A destination is refused when ANY of its addresses is not a public unicast
//! address (a name that resolves to one public and one private address is
//! refused: which one a client picks is not ours to predict), unless the
//! channel sets `allow_private = true`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Most addresses kept from one resolution (ureq's resolver holds 16; more
/// than a handful is never needed to reach a receiver).
pub const MAX_RESOLVED_ADDRS: usize = 16;

/// Why a destination was not connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The name did not resolve (worth a retry: DNS may recover).
    Unresolved(String),
    /// An address is not public and `allow_private` is off (permanent).
    Private(String),
}

/// Whether `ip` is anything other than a public unicast address: loopback,
/// private, shared (CGNAT), link-local (the cloud metadata address
/// 169.254.169.254 among them), unspecified, multicast, broadcast, reserved,
/// documentation or benchmarking ranges, and IPv6 forms that embed one of
/// those IPv4 addresses (IPv4-mapped, IPv4-compatible, NAT64, 6to4).
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_non_public_v4(v4),
        IpAddr::V6(v6) => is_non_public_v6(v6),
    }
}

fn is_non_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", 0.0.0.0/8 (unspecified among it)
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (64..=127).contains(&b)) // shared address space (CGNAT), 100.64/10
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..=31).contains(&b)) // private
        || (a == 192 && b == 168) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0/24
        || (a == 192 && b == 0 && c == 2) // documentation TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18/15
        || (a == 198 && b == 51 && c == 100) // documentation TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // documentation TEST-NET-3
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn is_non_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // An IPv4 address carried inside: judged as that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_non_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // IPv4-compatible ::a.b.c.d (deprecated; ::, ::1 handled above).
    if s[..6] == [0; 6] {
        return is_non_public_v4(embedded(s[6], s[7]));
    }
    // NAT64 well-known prefix 64:ff9b::/96: a gateway forwards to the v4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_non_public_v4(embedded(s[6], s[7]));
    }
    // 6to4 2002:V4ADDR::/48.
    if s[0] == 0x2002 {
        return is_non_public_v4(embedded(s[1], s[2]));
    }
    (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast ff00::/8
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments 2001::/23 (Teredo among them)
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
}

/// Longest wait for a name to resolve. The system resolver has no timeout
/// of its own we can set, so a lookup past this is abandoned (its thread
/// ends when the resolver gives up) and the attempt is retried later.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `host:port` resolved, an IP literal directly, a name on a helper thread
/// waited for at most [`RESOLVE_TIMEOUT`].
fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    let spawned = std::thread::Builder::new()
        .name("bursar-alerts-dns".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|it| it.take(MAX_RESOLVED_ADDRS).collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            // The receiver may have given up: nothing to do then.
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a resolver thread: {e}"));
    }
    match rx.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())),
    }
}

/// Resolves `host:port` once and returns the addresses to connect to, or why
/// not. `host` is a name or an IP literal (IPv6 without brackets).
pub fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs = match lookup(host, port) {
        Ok(a) => a,
        Err(e) => return Err(Refusal::Unresolved(format!("cannot resolve {host}: {e}"))),
    };
    if addrs.is_empty() {
        return Err(Refusal::Unresolved(format!(
            "{host} resolves to no address"
        )));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| is_non_public(a.ip())) {
            return Err(Refusal::Private(format!(
                "destination {host} resolves to a private address ({}); set allow_private = true to permit it",
                bad.ip()
            )));
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_table() {
        let table: &[(&str, bool)] = &[
            // public
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("34.117.59.81", false),
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("172.15.255.255", false),
            ("172.32.0.0", false),
            ("192.167.1.1", false),
            ("192.0.1.1", false),
            ("198.17.1.1", false),
            ("198.20.0.0", false),
            ("223.255.255.255", false),
            ("11.0.0.1", false),
            ("2606:4700:4700::1111", false),
            ("2a00:1450:4001:80b::200e", false),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::808:808", false),
            ("2002:808:808::1", false),
            // non-public v4
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("100.64.0.1", true),
            ("100.127.255.254", true),
            ("169.254.169.254", true),
            ("169.254.0.1", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.0.1", true),
            ("192.0.0.8", true),
            ("192.0.2.1", true),
            ("192.88.99.1", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("240.0.0.1", true),
            ("255.255.255.255", true),
            // non-public v6
            ("::", true),
            ("::1", true),
            ("fc00::1", true),
            ("fd12:3456:789a::1", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("2001:db8::1", true),
            ("3fff::1", true),
            ("100::1", true),
            ("2001::1", true),
            ("64:ff9b:1::1", true),
            // v4 embedded in v6
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:192.168.1.1", true),
            ("::127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::7f00:1", true),
            ("2002:a00:1::1", true),
            ("2002:7f00:1::", true),
        ];
        for (s, expected) in table {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(is_non_public(ip), *expected, "{s}");
        }
    }

    #[test]
    fn a_loopback_destination_is_refused_unless_allowed() {
        match resolve_checked("127.0.0.1", 80, false) {
            Err(Refusal::Private(m)) => {
                assert!(m.contains("private address"), "{m}");
                assert!(m.contains("allow_private = true"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve_checked("::1", 80, false),
            Err(Refusal::Private(_))
        ));
        assert!(matches!(
            resolve_checked("localhost", 80, false),
            Err(Refusal::Private(_))
        ));
        let ok = resolve_checked("127.0.0.1", 8080, true).unwrap();
        assert_eq!(ok, vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn an_unresolvable_name_is_unresolved_not_private() {
        assert!(matches!(
            resolve_checked("no-such-host.invalid", 443, false),
            Err(Refusal::Unresolved(_))
        ));
    }
}
