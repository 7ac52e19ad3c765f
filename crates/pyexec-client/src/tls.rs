//! TLS 1.3 for the client, and what both ends share: the crypto provider, PEM loading
//! and trust anchors. The server's acceptor is the daemon's (`pyexec::tls`), built on
//! these same pieces.
//!
//! Only TLS 1.3 is enabled, with the ring provider chosen explicitly (rustls panics at
//! run time if two providers are compiled in and none is chosen). A TLS 1.2 client gets
//! the `protocol_version` alert during the handshake; a plaintext client gets a decode
//! error: neither ever reaches a session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use pyexec_protocol::ALPN;

/// What can be wrong with the TLS settings of either end.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {}: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("no system certificate bundle (set SSL_CERT_FILE, or give --ca FILE; looked in {})", SYSTEM_BUNDLES.join(", "))]
    NoSystemBundle,
}

/// The `--ca` value that means "the operating system's trusted CAs", for servers with a
/// certificate from a public CA (a file named `system` is `./system`).
pub const SYSTEM_CA: &str = "system";

/// Whether a `--ca` value asks for the system's CAs rather than naming a file.
pub fn is_system_ca(ca: &Path) -> bool {
    ca.as_os_str() == SYSTEM_CA
}

/// Where distributions keep their bundle of trusted CAs, in the order tried after
/// `SSL_CERT_FILE` (the variable OpenSSL and most TLS stacks honour).
pub const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Arch, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/ssl/cert.pem",                  // Alpine, BSDs
];

/// The system bundle `--ca system` uses.
pub fn system_bundle() -> Result<PathBuf, TlsError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return Ok(PathBuf::from(file));
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(TlsError::NoSystemBundle)
}

/// The one crypto provider both ends use, with AES-128-GCM preferred.
///
/// ring's default order puts AES-256-GCM first; AES-128-GCM has the same 128-bit
/// security level against everything but a quantum search and runs four fewer AES rounds
/// per block, which is most of what a flood of output costs both ends (the server seals
/// every record, the client opens it). The server still follows the client's order
/// (rustls' default), so a client that prefers another suite, e.g. ChaCha20-Poly1305
/// without AES instructions, gets it; `pyexec` asks for AES-128-GCM first.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(preferring(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256))
}

/// ring's provider with `first` moved to the front of its suites, the rest in order.
pub fn preferring(first: rustls::CipherSuite) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| s.suite() != first);
    provider
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The CAs in the PEM file `path`, as trust anchors.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The client's trust anchors: the CAs in `ca`, or with `SYSTEM_CA` those of the system's
/// bundle, skipping any the verifier cannot use (a system bundle may hold a few).
fn client_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    if !is_system_ca(ca) {
        return roots(ca);
    }
    let bundle = system_bundle()?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(&bundle)?);
    if added == 0 {
        return Err(TlsError::NoCertificate(bundle));
    }
    Ok(roots)
}

/// A client certificate and its key, for servers that require one.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Client side: TLS 1.3 only, trusting exactly the CAs in `ca` (or the system's, for
/// `SYSTEM_CA`), presenting `identity` when given.
pub fn client_config(
    ca: &Path,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(client_roots(ca)?);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(load_certs(&id.cert)?, load_key(&id.key)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
