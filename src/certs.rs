//! Certificate generation for `pyexecd gen-certs`: a private CA and a server certificate.
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

    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|s| s.to_string()).collect();
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names)?;
    server.distinguished_name = rcgen::DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "pyexecd");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = now - Duration::days(1);
    server.not_after = now + Duration::days(825);
    let server_cert = server.signed_by(&server_key, &Issuer::new(ca, &ca_key))?;

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
        crate::tls::server_config(&paths.server_cert, &paths.server_key).unwrap();
        crate::tls::client_config(&paths.ca_cert).unwrap();
        let mode = std::fs::metadata(&paths.server_key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let again = generate(dir.path(), &[], false).unwrap_err();
        assert!(matches!(again, CertError::Exists(_)), "{again}");
        generate(dir.path(), &[], true).unwrap();
    }
}
