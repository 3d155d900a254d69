//! TLS for an export reached over the network: a certificate authority made for the export
//! alone signs its server certificate and the one client certificate it accepts. The
//! client's key, written to the export's directory readable by its owner only, is the
//! export's secret: whoever holds it may read the point, and nobody else can even reach the
//! export's name. The CA's key is never written; it is dropped once both are signed, so no
//! other certificate can be made for the export. The directory uses the layout qemu
//! (`tls-creds-x509,dir=DIR,endpoint=client`) and libnbd (`tls-certificates=DIR`) read:
//! `ca-cert.pem`, `client-cert.pem`, `client-key.pem`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Error, ErrorKind, Result};

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Other,
        format!("making the export's TLS certificates: {e}"),
    )
}

fn write_new(path: &Path, body: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path.display(), e))?;
    f.write_all(body.as_bytes())
        .map_err(|e| Error::io(path.display(), e))
}

/// Makes the certificates, writes the client's files into `dir` (which must not exist) and
/// returns the server's configuration: TLS 1.2 or 1.3, the client certificate required.
/// `names` are the host names and addresses clients may connect by.
pub(crate) fn make(dir: &Path, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kura export CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(tls_error)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_error)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.to_vec()).map_err(tls_error)?;
    server.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(tls_error)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(tls_error)?;

    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    client
        .distinguished_name
        .push(DnType::CommonName, "kura export client");
    client.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(tls_error)?;
    let client_cert = client.signed_by(&client_key, &issuer).map_err(tls_error)?;
    drop(issuer);

    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir.display(), e))?;
    use std::os::unix::fs::DirBuilderExt;
    write_new(&dir.join("ca-cert.pem"), &ca_cert.pem())?;
    write_new(&dir.join("client-cert.pem"), &client_cert.pem())?;
    write_new(&dir.join("client-key.pem"), &client_key.serialize_pem())?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).map_err(tls_error)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(tls_error)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone()], key)
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}
