//! Name resolution off the worker threads.
//!
//! monoio's connect may resolve names synchronously, which would block a
//! worker. So host names are resolved here, on the thread that builds the
//! config and then on a refresher thread, and workers only ever read the
//! published addresses (one atomic load, no lock). A host that fails to
//! resolve keeps its last good addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

type AddrMap = HashMap<String, Arc<[IpAddr]>>;

pub struct Resolver {
    /// Host names to keep resolving.
    hosts: ArcSwap<Vec<String>>,
    /// The latest good addresses per host name.
    addrs: ArcSwap<AddrMap>,
}

impl Resolver {
    pub fn new() -> Arc<Resolver> {
        Arc::new(Resolver {
            hosts: ArcSwap::from_pointee(Vec::new()),
            addrs: ArcSwap::from_pointee(AddrMap::new()),
        })
    }

    /// Sets the host names to resolve and resolves the new ones now (blocking:
    /// call it from the main or control thread, never from a worker).
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = String>) {
        let mut list: Vec<String> = hosts
            .into_iter()
            .filter(|h| h.parse::<IpAddr>().is_err())
            .collect();
        list.sort();
        list.dedup();
        let known = self.addrs.load();
        let fresh: Vec<String> = list
            .iter()
            .filter(|h| !known.contains_key(*h))
            .cloned()
            .collect();
        self.hosts.store(Arc::new(list));
        self.resolve(&fresh);
    }

    fn resolve(&self, hosts: &[String]) {
        if hosts.is_empty() {
            return;
        }
        let mut next: AddrMap = (**self.addrs.load()).clone();
        for host in hosts {
            match (host.as_str(), 0u16).to_socket_addrs() {
                Ok(it) => {
                    let mut ips: Vec<IpAddr> = it.map(|a| a.ip()).collect();
                    ips.dedup();
                    if ips.is_empty() {
                        log::warn!(
                            "upstream host {host} resolved to no address; keeping the last known"
                        );
                    } else {
                        next.insert(host.clone(), ips.into());
                    }
                }
                Err(e) => {
                    log::warn!("cannot resolve upstream host {host}: {e}; keeping the last known")
                }
            }
        }
        self.addrs.store(Arc::new(next));
    }

    /// Re-resolves every host now.
    pub fn refresh(&self) {
        let hosts = self.hosts.load_full();
        self.resolve(&hosts);
    }

    /// Starts the refresher thread.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("bursar-dns".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                me.refresh();
            })
            .map(|_| ())
    }

    /// An address for `host:port`, rotating through the host's addresses by
    /// `spin`. IP literals need no lookup. Never blocks.
    #[inline]
    pub fn pick(&self, host: &str, port: u16, spin: usize) -> Option<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, port));
        }
        let map = self.addrs.load();
        let ips = map.get(host)?;
        Some(SocketAddr::new(ips[spin % ips.len()], port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_no_resolution_and_localhost_resolves() {
        let r = Resolver::new();
        assert_eq!(
            r.pick("127.0.0.1", 9, 0),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(r.pick("localhost", 9, 0), None, "not resolved until set");
        r.set_hosts(["localhost".to_string(), "10.0.0.1".to_string()]);
        let a = r.pick("localhost", 9, 0).expect("localhost resolves");
        assert!(a.ip().is_loopback());
        assert_eq!(r.hosts.load().len(), 1, "literals are not tracked");
    }
}
