//! Certificate generation for `pyexecd gen-certs`: a private CA, a server certificate, and
//! client certificates for mutual TLS.
//!
//! Generated in Rust with rcgen so that a fresh machine needs no openssl. Keys are
//! ECDSA P-256; private keys are written with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot read the CA from {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("client name '{0}' must be letters, digits, '.', '_' or '-' (at most 64)")]
    BadName(String),
}

/// Where `generate` put its files.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        CertPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    fn all(&self) -> [&PathBuf; 4] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
        ]
    }
}

/// Names every server certificate carries, so that a client on the same machine works
/// whichever way it spells the address.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Writes a new CA and a server certificate for `DEFAULT_HOSTS` plus `hosts` into `dir`.
pub fn generate(dir: &Path, hosts: &[String], force: bool) -> Result<CertPaths, CertError> {
    let paths = CertPaths::in_dir(dir);
    if !force {
        if let Some(existing) = paths.all().into_iter().find(|p| p.exists()) {
            return Err(CertError::Exists(existing.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_owned(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "pyexec CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "pyexec");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::days(1);
    ca.not_after = now + Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;

    let (server_cert, server_key) = server_certificate(hosts, &Issuer::new(ca, &ca_key))?;

    write(&paths.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(&paths.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write(&paths.server_cert, server_cert.pem().as_bytes(), 0o644)?;
    write(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(paths)
}

/// A server certificate for `DEFAULT_HOSTS` plus `hosts`, signed by `issuer`.
fn server_certificate(
    hosts: &[String],
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair), CertError> {
    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|s| s.to_string()).collect();
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    leaf(
        CertificateParams::new(names)?,
        "pyexecd",
        ExtendedKeyUsagePurpose::ServerAuth,
        issuer,
    )
}

/// A certificate with subject `CN=<cn>` for one purpose (server or client), with a fresh
/// key, valid from yesterday for 825 days, signed by `issuer`.
/// `params` carries the subject alternative names, if any.
fn leaf(
    mut params: CertificateParams,
    cn: &str,
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair), CertError> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate()?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(825);
    Ok((params.signed_by(&key, issuer)?, key))
}

/// Reads the CA in `dir`, to issue more certificates with it.
fn load_ca(dir: &Path) -> Result<(String, KeyPair), CertError> {
    let ca = CertPaths::in_dir(dir);
    let ca_err = |reason: String| CertError::Ca {
        path: dir.to_owned(),
        reason,
    };
    let pem = std::fs::read_to_string(&ca.ca_cert).map_err(|e| ca_err(e.to_string()))?;
    let key_pem = std::fs::read_to_string(&ca.ca_key).map_err(|e| ca_err(e.to_string()))?;
    Ok((pem, KeyPair::from_pem(&key_pem)?))
}

/// Replaces the server certificate and key in `dir` with new ones from the same CA: a
/// renewal clients do not notice (they trust the CA, which stays). The files are replaced
/// whole (written aside, then renamed), so a SIGHUP never sees half of one.
pub fn renew_server(dir: &Path, hosts: &[String]) -> Result<CertPaths, CertError> {
    let paths = CertPaths::in_dir(dir);
    let (ca_pem, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let (cert, key) = server_certificate(hosts, &issuer)?;
    let aside = |p: &Path| {
        let mut name = p.as_os_str().to_owned();
        name.push(".new");
        PathBuf::from(name)
    };
    write(&aside(&paths.server_cert), cert.pem().as_bytes(), 0o644)?;
    write(
        &aside(&paths.server_key),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    for path in [&paths.server_key, &paths.server_cert] {
        std::fs::rename(aside(path), path).map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}

/// Where `issue_client` puts a client's certificate and key.
pub fn client_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{name}.pem")),
        dir.join(format!("client-{name}.key")),
    )
}

/// Issues a client certificate with subject `CN=<name>`, signed by the CA in `dir`.
pub fn issue_client(dir: &Path, name: &str, force: bool) -> Result<(PathBuf, PathBuf), CertError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(CertError::BadName(name.to_string()));
    }
    let (ca_pem, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let (cert_path, key_path) = client_paths(dir, name);
    if !force {
        if let Some(existing) = [&cert_path, &key_path].into_iter().find(|p| p.exists()) {
            return Err(CertError::Exists(existing.clone()));
        }
    }
    let (cert, key) = leaf(
        CertificateParams::default(),
        name,
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
    )?;
    write(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_and_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate(dir.path(), &["pyexec.example".into()], false).unwrap();
        // The rustls configs accept what was written: key matches cert, CA parses.
        crate::tls::server_config(&paths.server_cert, &paths.server_key, None).unwrap();
        crate::tls::client_config(&paths.ca_cert, None).unwrap();
        let mode = std::fs::metadata(&paths.server_key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let again = generate(dir.path(), &[], false).unwrap_err();
        assert!(matches!(again, CertError::Exists(_)), "{again}");
        generate(dir.path(), &[], true).unwrap();
    }

    #[test]
    fn client_certificates_are_signed_by_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate(dir.path(), &[], false).unwrap();
        let (cert, key) = issue_client(dir.path(), "alice", false).unwrap();
        let identity = crate::tls::Identity { cert, key };
        crate::tls::client_config(&paths.ca_cert, Some(&identity)).unwrap();
        crate::tls::server_config(&paths.server_cert, &paths.server_key, Some(&paths.ca_cert))
            .unwrap();
        assert!(matches!(
            issue_client(dir.path(), "alice", false),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            issue_client(dir.path(), "../x", false),
            Err(CertError::BadName(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue_client(empty.path(), "bob", false),
            Err(CertError::Ca { .. })
        ));
    }

    #[test]
    fn renewal_keeps_the_ca_and_replaces_the_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate(dir.path(), &[], false).unwrap();
        let ca_before = std::fs::read(&paths.ca_cert).unwrap();
        let cert_before = std::fs::read(&paths.server_cert).unwrap();
        renew_server(dir.path(), &["new.example".into()]).unwrap();
        assert_eq!(std::fs::read(&paths.ca_cert).unwrap(), ca_before);
        assert_ne!(std::fs::read(&paths.server_cert).unwrap(), cert_before);
        crate::tls::server_config(&paths.server_cert, &paths.server_key, None).unwrap();
        assert!(!dir.path().join("server.pem.new").exists());
    }
}
