//! TLS and certificates: the local CA in `certs/`, the certificates of
//! trackers, proxies and the admin tool, node identities (self-signed key
//! pairs whose public key *is* the peer id), and the rustls/quinn
//! configurations built from them.
//!
//! Trust model: trackers and proxies present certificates of the local CA;
//! Raft traffic between trackers requires a client certificate of that CA
//! (mutual TLS). Nodes trust the CA for the proxy. Between nodes there is
//! no CA: a node dialling a peer checks that the key it meets hashes to the
//! peer id the tracker gave.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::ids::PeerId;

/// Errors of loading or making certificates and TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: malformed PEM: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: no certificate or key found in the PEM file")]
    Empty { path: PathBuf },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto: {0}")]
    Quic(String),
}

fn pem_err(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The crypto provider everywhere: ring (pure Rust build, fast here).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes a file readable by its owner only (private keys, tokens).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    fs::write(path, data).map_err(io_err(path))
}

/// Makes the local CA in `dir` if it is missing, then a certificate for
/// each name that lacks one (`NAME.pem` and `NAME.key`, key mode 0600).
/// Each certificate is valid for the name itself, `localhost`, 127.0.0.1
/// and ::1, and for both server and client authentication. Returns the
/// names it created.
pub fn generate(dir: &Path, names: &[String]) -> Result<Vec<String>, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    fn ca_params() -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "quorrent local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let (ca_cert, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
        let pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let key = KeyPair::from_pem(&pem)?;
        // Re-creating the CA's parameters with its own key gives an issuer
        // that signs exactly as the stored ca.pem (same name, same key).
        (ca_params().self_signed(&key)?, key)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        write_public(&ca_cert_path, cert.pem().as_bytes())?;
        (cert, key)
    };
    let mut made = Vec::new();
    for name in names {
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec![name.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()])?;
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        made.push(name.clone());
    }
    Ok(made)
}

/// A certificate chain with its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Loads `dir/NAME.pem` and `dir/NAME.key`.
pub fn load_identity(dir: &Path, name: &str) -> Result<Identity, TlsError> {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let pem = fs::read(&cert_path).map_err(io_err(&cert_path))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(&cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::Empty { path: cert_path });
    }
    let pem = fs::read(&key_path).map_err(io_err(&key_path))?;
    let key = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(TlsError::Empty { path: key_path }),
        Err(e) => return Err(pem_err(&key_path)(e)),
    };
    Ok(Identity { chain, key })
}

/// Loads `dir/ca.pem` as the only trust root.
pub fn load_ca(dir: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let path = dir.join("ca.pem");
    let pem = fs::read(&path).map_err(io_err(&path))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(pem_err(&path))?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty { path });
    }
    Ok(Arc::new(roots))
}

/// Whether a server asks its clients for a certificate of the CA.
pub enum ClientAuth {
    /// Any client (nodes to the proxy, proxies to tracker API).
    None,
    /// Clients may present a CA certificate; one that presents another
    /// is refused at the handshake. Used on the tracker API, where the
    /// proxy's certificate makes its `origin` field trusted.
    Optional(Arc<RootCertStore>),
    /// Only clients with a CA certificate (Raft, mutual TLS).
    Required(Arc<RootCertStore>),
}

/// A rustls server configuration for one ALPN.
pub fn server_crypto(id: &Identity, alpn: &[&[u8]], auth: ClientAuth) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::server::WebPkiClientVerifier;
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
        ),
        ClientAuth::Required(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
        ),
    };
    let mut cfg = builder.with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// A rustls client configuration trusting `roots`, presenting `id` if given.
pub fn client_crypto(
    roots: Arc<RootCertStore>,
    id: Option<&Identity>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match id {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Wraps a rustls server configuration for quinn.
pub fn quic_server(
    crypto: rustls::ServerConfig,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let qc = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(qc));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Wraps a rustls client configuration for quinn.
pub fn quic_client(
    crypto: rustls::ClientConfig,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(qc));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A node's own key pair and self-signed certificate; its peer id is the
/// BLAKE3 hash of the public key.
pub struct NodeIdentity {
    pub identity: Identity,
    pub peer_id: PeerId,
}

impl NodeIdentity {
    /// Loads `dir/node.key` and `dir/node.pem`, or makes them at first
    /// start (key mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let key_path = dir.join("node.key");
        if !key_path.exists() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(vec!["quorrent-peer".into()])?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "quorrent peer");
            let cert = params.self_signed(&key)?;
            write_public(&dir.join("node.pem"), cert.pem().as_bytes())?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
        }
        let identity = load_identity(dir, "node")?;
        let peer_id = peer_id_of(&identity.chain[0]).map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(NodeIdentity { identity, peer_id })
    }
}

/// The peer id a certificate's public key stands for.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(cert)?;
    Ok(PeerId::from_spki(ee.subject_public_key_info().as_ref()))
}

/// Client-side verifier for the peer protocol: accepts the server only if
/// its certificate's public key hashes to the expected peer id, and checks
/// the handshake signature with that key.
#[derive(Debug)]
pub struct PeerVerifier {
    expected: PeerId,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    pub fn new(expected: PeerId) -> Arc<Self> {
        Arc::new(PeerVerifier {
            expected,
            provider: provider(),
        })
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = peer_id_of(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        if got != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Client configuration for dialling one peer whose id we know.
pub fn peer_client_crypto(expected: PeerId, own: &Identity, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(expected))
        .with_client_auth_cert(own.chain.clone(), own.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_is_idempotent_and_keys_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = generate(dir.path(), &["tracker-1".into(), "proxy-1".into()]).unwrap();
        assert_eq!(made.len(), 2);
        assert!(generate(dir.path(), &["tracker-1".into()]).unwrap().is_empty());
        for f in ["ca.key", "tracker-1.key", "proxy-1.key"] {
            let mode = fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others");
        }
        let id = load_identity(dir.path(), "tracker-1").unwrap();
        let roots = load_ca(dir.path()).unwrap();
        server_crypto(&id, &[b"x"], ClientAuth::Required(roots.clone())).unwrap();
        client_crypto(roots, Some(&id), b"x").unwrap();
    }

    #[test]
    fn node_identity_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(dir.path()).unwrap();
        let b = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id, b.peer_id);
    }
}
