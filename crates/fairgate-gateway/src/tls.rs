//! Trust anchors for https:// backends: reading a CA bundle from a PEM file. Kept apart from
//! [`crate::upstream`] so the config can check a file at load time without importing the pools.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Reads a PEM file of CA certificates; `Err` says why it is unusable.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| format!("`{}`: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(certs)
}
