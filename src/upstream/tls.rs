//! Upstream TLS: rustls with the ring provider, webpki roots and/or the
//! system's, ALPN http/1.1.

use std::sync::Arc;

use crate::config::TlsRoots;

pub fn client_config(roots: TlsRoots) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_with(roots, &[])
}

/// A client config trusting `roots` plus `extra` (a provider's private CA).
pub fn client_config_with(
    roots: TlsRoots,
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for cert in extra {
        store.add(cert.clone())?;
    }
    if matches!(roots, TlsRoots::Webpki | TlsRoots::Both) {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if matches!(roots, TlsRoots::System | TlsRoots::Both) {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            log::warn!("system root certificates: {e}");
        }
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        log::info!("system root certificates: {added} added, {ignored} ignored");
    }
    if store.is_empty() {
        anyhow::bail!("no root certificates for upstream TLS");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
