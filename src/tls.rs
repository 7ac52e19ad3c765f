//! TLS 1.3 for the server: its acceptor (optionally requiring client certificates) and
//! the identity of a verified client. The rest (the crypto provider, PEM loading, trust
//! anchors, the client's connector) is shared with the client, in `pyexec_client::tls`,
//! and re-exported here.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

pub use pyexec_client::tls::*;

use crate::protocol::ALPN;

/// The ALPN identifier with which a TLS client (a browser) asks for HTTPS, the
/// playground, instead of frames.
pub const HTTP_ALPN: &[u8] = b"http/1.1";

/// Server side: TLS 1.3 only. With `client_ca`, every client must present a certificate
/// signed by that CA (mutual TLS); without, clients are anonymous.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(path) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path)?), provider())
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // One port, two protocols: frames for `pyexec/1` (listed first, so a client offering
    // both gets frames), HTTPS for `http/1.1`. A client offering neither (say `h2` alone)
    // gets a `no_application_protocol` alert; one offering no ALPN gets frames.
    config.alpn_protocols = vec![ALPN.to_vec(), HTTP_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The subject of a verified client certificate, as `CN=alice, O=example`: the identity
/// logged for a session and used for per-client limits.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<String> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConfig, ClientConnection, ServerConnection};

    /// Runs a handshake between the two configs in memory; the suite they agree on.
    fn negotiate(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> rustls::CipherSuite {
        let name = "localhost".try_into().unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        let suite = c.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(Some(suite), s.negotiated_cipher_suite().map(|s| s.suite()));
        suite
    }

    #[test]
    fn our_client_gets_aes_128_and_the_server_follows_a_client_that_prefers_another() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::certs::generate(dir.path(), &[], false).unwrap();
        let server = server_config(&paths.server_cert, &paths.server_key, None).unwrap();
        let client = client_config(&paths.ca_cert, None).unwrap();
        assert_eq!(
            negotiate(client.clone(), server.clone()),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );

        // A client that asks for ChaCha20 first (no AES instructions) gets it.
        let chacha_first = preferring(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let mut chacha = ClientConfig::builder_with_provider(Arc::new(chacha_first))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&paths.ca_cert).unwrap())
            .with_no_client_auth();
        chacha.alpn_protocols = vec![ALPN.to_vec()];
        assert_eq!(
            negotiate(Arc::new(chacha), server),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
    }
}
