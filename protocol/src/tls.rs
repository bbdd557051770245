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
    #[error("certificate name {0:?} names no role: use tracker-N, proxy-NAME or admin")]
    NoRole(String),
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

/// Writes a file readable by its owner only (private keys, tokens),
/// durably (`durable::write`).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    crate::durable::write(path, data, 0o600).map_err(io_err(path))
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    fs::write(path, data).map_err(io_err(path))
}

/// What a certificate of the cluster CA is for. The role is written into
/// the certificate as a DNS subject alternative name under
/// [`ROLE_DOMAIN`] (a reserved `.invalid` name that never resolves), so a
/// server can check it with webpki and without parsing X.509 itself.
/// Nodes have no CA certificate at all: their self-signed key is their
/// peer id (see [`NodeIdentity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Tracker member N: may send Raft messages as member N.
    Member(u64),
    /// A proxy: may call the tracker API and report node addresses.
    Proxy,
    /// The admin tool: may change the membership.
    Admin,
}

/// The domain under which roles are written into certificates.
pub const ROLE_DOMAIN: &str = "role.quorrent.invalid";

impl Role {
    /// The role a certificate name stands for: `tracker-N` is member N,
    /// `proxy` and `proxy-*` a proxy, `admin` the admin tool.
    pub fn for_name(name: &str) -> Option<Role> {
        if let Some(n) = name.strip_prefix("tracker-") {
            return n.parse().ok().filter(|n| *n > 0).map(Role::Member);
        }
        if name == "proxy" || name.strip_prefix("proxy-").is_some_and(|r| !r.is_empty()) {
            return Some(Role::Proxy);
        }
        (name == "admin").then_some(Role::Admin)
    }

    /// The DNS names that mark this role in a certificate.
    fn marks(self) -> Vec<String> {
        match self {
            Role::Member(n) => vec![format!("member.{ROLE_DOMAIN}"), format!("member-{n}.{ROLE_DOMAIN}")],
            Role::Proxy => vec![format!("proxy.{ROLE_DOMAIN}")],
            Role::Admin => vec![format!("admin.{ROLE_DOMAIN}")],
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Member(n) => write!(f, "member {n}"),
            Role::Proxy => f.write_str("proxy"),
            Role::Admin => f.write_str("admin"),
        }
    }
}

fn has_mark(cert: &CertificateDer<'_>, mark: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(mark) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Whether `cert` carries `role`. Only meaningful for a certificate that
/// already verified against the cluster CA (the TLS handshake did that).
pub fn has_role(cert: &CertificateDer<'_>, role: Role) -> bool {
    role.marks().iter().all(|m| has_mark(cert, m))
}

/// What a (CA-verified) certificate is, for checks and log lines: a
/// member (of unknown id until [`has_role`] is asked for one), a proxy,
/// the admin, or none of them.
pub fn role_kind(cert: &CertificateDer<'_>) -> &'static str {
    if has_mark(cert, &format!("member.{ROLE_DOMAIN}")) {
        "member"
    } else if has_mark(cert, &format!("proxy.{ROLE_DOMAIN}")) {
        "proxy"
    } else if has_mark(cert, &format!("admin.{ROLE_DOMAIN}")) {
        "admin"
    } else {
        "no role"
    }
}

/// The first certificate a QUIC peer presented, if any.
pub fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

/// Where the certificate generator keeps the CA: `ca_dir/ca.key` (the
/// only file that can sign certificates; no running process reads it)
/// and the public `ca.pem`, which is also copied into every certificate
/// folder.
pub struct CaPaths {
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl CaPaths {
    pub fn in_dir(ca_dir: &Path) -> CaPaths {
        CaPaths {
            key: ca_dir.join("ca.key"),
            cert: ca_dir.join("ca.pem"),
        }
    }
}

/// Makes the local CA in `ca_dir` if it is missing, then a certificate in
/// `dir` for each name that lacks one, or whose certificate lacks its role
/// (`NAME.pem` and `NAME.key`, key mode 0600; see [`Role::for_name`]).
/// Each certificate is valid for the name itself, `localhost`, 127.0.0.1,
/// ::1 and every entry of `hosts` (IP addresses or DNS names of the
/// machines it runs on), and for both server and client authentication.
/// `dir/ca.pem` is the CA certificate that running processes trust; the
/// CA key stays in `ca_dir` (0700). A CA key left in `dir` by an older
/// version is moved to `ca_dir`. Returns the names it created.
pub fn generate(dir: &Path, ca_dir: &Path, names: &[String], hosts: &[String]) -> Result<Vec<String>, TlsError> {
    let certs: Vec<CertSpec> = names
        .iter()
        .map(|n| CertSpec {
            name: n.clone(),
            hosts: Vec::new(),
        })
        .collect();
    generate_each(dir, ca_dir, &certs, hosts)
}

/// One certificate to make: its name (which gives its role) and the hosts
/// (IP addresses, DNS names) of the machine it is used on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub name: String,
    pub hosts: Vec<String>,
}

/// Every subject name a certificate is made valid for: its name,
/// localhost, 127.0.0.1, ::1, its own hosts, then `common` (in that order,
/// without repeats).
fn subject_names(spec: &CertSpec, common: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let fixed = [spec.name.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in fixed
        .into_iter()
        .chain(spec.hosts.iter().cloned())
        .chain(common.iter().cloned())
    {
        if !all.contains(&h) {
            all.push(h);
        }
    }
    all
}

/// As [`generate`], with hosts of each certificate's own (its machine's
/// addresses) besides the `common` ones that every certificate gets. An
/// existing certificate is kept when it has its role and is valid for
/// each of those names; else it is issued again (new key, same CA).
pub fn generate_each(
    dir: &Path,
    ca_dir: &Path,
    certs: &[CertSpec],
    common: &[String],
) -> Result<Vec<String>, TlsError> {
    use std::os::unix::fs::PermissionsExt;

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
    let roles = certs
        .iter()
        .map(|c| Role::for_name(&c.name).ok_or_else(|| TlsError::NoRole(c.name.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::create_dir_all(ca_dir).map_err(io_err(ca_dir))?;
    fs::set_permissions(ca_dir, fs::Permissions::from_mode(0o700)).map_err(io_err(ca_dir))?;
    let ca = CaPaths::in_dir(ca_dir);
    let old_key = dir.join("ca.key");
    if old_key.exists() && !ca.key.exists() && ca_dir.canonicalize().ok() != dir.canonicalize().ok() {
        fs::rename(&old_key, &ca.key).map_err(io_err(&ca.key))?;
        if !ca.cert.exists() {
            fs::copy(dir.join("ca.pem"), &ca.cert).map_err(io_err(&ca.cert))?;
        }
    }
    let (ca_cert, ca_key) = if ca.key.exists() {
        let pem = fs::read_to_string(&ca.key).map_err(io_err(&ca.key))?;
        let key = KeyPair::from_pem(&pem)?;
        // Re-creating the CA's parameters with its own key gives an issuer
        // that signs exactly as the stored ca.pem (same name, same key).
        (ca_params().self_signed(&key)?, key)
    } else if dir.join("ca.pem").exists() {
        return Err(TlsError::Empty { path: ca.key.clone() });
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_private(&ca.key, key.serialize_pem().as_bytes())?;
        write_public(&ca.cert, cert.pem().as_bytes())?;
        (cert, key)
    };
    let ca_pem_in_dir = dir.join("ca.pem");
    if !ca_pem_in_dir.exists() {
        fs::copy(&ca.cert, &ca_pem_in_dir).map_err(io_err(&ca_pem_in_dir))?;
    }
    let mut made = Vec::new();
    for (spec, role) in certs.iter().zip(roles) {
        let name = &spec.name;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let mut sans = subject_names(spec, common);
        if key_path.exists() {
            if let Ok(id) = load_identity(dir, name) {
                // A certificate without its role (older version) or
                // without one of the hosts asked for now is re-issued.
                if has_role(&id.chain[0], role) && sans.iter().all(|h| has_mark(&id.chain[0], h)) {
                    continue;
                }
            }
        }
        let key = KeyPair::generate()?;
        sans.extend(role.marks());
        let mut params = CertificateParams::new(sans)?;
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
    check_private(&key_path)?;
    let pem = fs::read(&key_path).map_err(io_err(&key_path))?;
    let key = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(TlsError::Empty { path: key_path }),
        Err(e) => return Err(pem_err(&key_path)(e)),
    };
    Ok(Identity { chain, key })
}

/// Refuses a private key file that others than its owner may read.
fn check_private(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "private key is readable by others (mode {:o}); run `chmod 600 {}`",
                    mode & 0o777,
                    path.display()
                ),
            ),
        });
    }
    Ok(())
}

/// Loads `dir/ca.pem` as the only trust root.
pub fn load_ca(dir: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    load_ca_file(&dir.join("ca.pem"))
}

/// The certificates of a CA file (PEM) as trust roots; an error names the
/// file.
pub fn load_ca_file(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let path = path.to_owned();
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
        let ca = dir.path().join("ca");
        let made = generate(dir.path(), &ca, &["tracker-1".into(), "proxy-1".into()], &[]).unwrap();
        assert_eq!(made.len(), 2);
        assert!(generate(dir.path(), &ca, &["tracker-1".into()], &[])
            .unwrap()
            .is_empty());
        assert!(!dir.path().join("ca.key").exists(), "the CA key is kept apart");
        for f in ["ca/ca.key", "tracker-1.key", "proxy-1.key"] {
            let mode = fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others");
        }
        let id = load_identity(dir.path(), "tracker-1").unwrap();
        let roots = load_ca(dir.path()).unwrap();
        server_crypto(&id, &[b"x"], ClientAuth::Required(roots.clone())).unwrap();
        client_crypto(roots, Some(&id), b"x").unwrap();
    }

    #[test]
    fn roles_are_written_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let names = ["tracker-2", "proxy-1", "admin"].map(String::from);
        generate(dir.path(), &ca, &names, &["10.0.0.7".into(), "tracker.example".into()]).unwrap();
        let cert = |n: &str| load_identity(dir.path(), n).unwrap().chain[0].clone();
        let (member, proxy, admin) = (cert("tracker-2"), cert("proxy-1"), cert("admin"));
        assert!(has_role(&member, Role::Member(2)));
        assert!(!has_role(&member, Role::Member(1)));
        assert!(!has_role(&member, Role::Admin));
        assert!(has_role(&proxy, Role::Proxy) && !has_role(&proxy, Role::Member(2)));
        assert!(!has_role(&proxy, Role::Admin));
        assert!(has_role(&admin, Role::Admin) && !has_role(&admin, Role::Proxy));
        assert_eq!(
            (role_kind(&member), role_kind(&proxy), role_kind(&admin)),
            ("member", "proxy", "admin")
        );
        // The extra hosts are in the certificate.
        let ee = webpki::EndEntityCert::try_from(&member).unwrap();
        for h in ["10.0.0.7", "tracker.example"] {
            ee.verify_is_valid_for_subject_name(&ServerName::try_from(h).unwrap())
                .unwrap();
        }
        // Unknown names are refused; a key others can read is refused.
        assert!(generate(dir.path(), &ca, &["bob".into()], &[]).is_err());
        let key = dir.path().join("admin.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_identity(dir.path(), "admin").err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    /// A certificate folder from before roles (CA key inside, no role
    /// marks) is upgraded: the key moves out, certificates are re-issued.
    #[test]
    fn old_certificate_folder_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        generate(dir.path(), &ca, &["tracker-1".into()], &[]).unwrap();
        fs::rename(ca.join("ca.key"), dir.path().join("ca.key")).unwrap();
        let made = generate(dir.path(), &ca, &["tracker-1".into()], &[]).unwrap();
        assert!(made.is_empty(), "a certificate with its role is kept");
        assert!(ca.join("ca.key").exists() && !dir.path().join("ca.key").exists());
    }

    /// Each certificate gets its own machine's hosts (from the cluster's
    /// configuration) and the common ones; asking again for a host a
    /// certificate lacks re-issues it with the same CA; and a client that
    /// dials the IP verifies the server by it.
    #[tokio::test]
    async fn per_certificate_hosts_and_reissue() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let spec = |name: &str, hosts: &[&str]| CertSpec {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let first = [
            spec("tracker-1", &["127.0.0.2", "t1.example.org"]),
            spec("proxy-1", &["10.9.0.21"]),
        ];
        let made = generate_each(dir.path(), &ca, &first, &["common.example".into()]).unwrap();
        assert_eq!(made.len(), 2);
        let ca_pem = fs::read(dir.path().join("ca.pem")).unwrap();
        let cert = |n: &str| load_identity(dir.path(), n).unwrap().chain[0].clone();
        let valid = |n: &str, h: &str| has_mark(&cert(n), h);
        for h in [
            "127.0.0.2",
            "t1.example.org",
            "common.example",
            "localhost",
            "127.0.0.1",
            "::1",
        ] {
            assert!(valid("tracker-1", h), "tracker-1 lacks {h}");
        }
        assert!(valid("proxy-1", "10.9.0.21") && !valid("proxy-1", "127.0.0.2"));
        assert!(
            !valid("tracker-1", "10.9.0.21"),
            "hosts stay with their own certificate"
        );
        assert!(has_role(&cert("tracker-1"), Role::Member(1)));

        // The same request again changes nothing; a new host re-issues
        // only the certificate that lacks it, under the same CA.
        assert!(generate_each(dir.path(), &ca, &first, &["common.example".into()])
            .unwrap()
            .is_empty());
        let more = [
            spec("tracker-1", &["127.0.0.2", "t1.example.org"]),
            spec("proxy-1", &["10.9.0.21", "10.9.0.22"]),
        ];
        let made = generate_each(dir.path(), &ca, &more, &["common.example".into()]).unwrap();
        assert_eq!(made, vec!["proxy-1".to_string()]);
        assert!(valid("proxy-1", "10.9.0.22") && valid("proxy-1", "10.9.0.21"));
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_pem, "the CA is kept");

        // A real handshake: the client names the server by its IP.
        let roots = load_ca(dir.path()).unwrap();
        let id = load_identity(dir.path(), "tracker-1").unwrap();
        let server = quic_server(
            server_crypto(&id, &[b"t"], ClientAuth::None).unwrap(),
            quinn::TransportConfig::default(),
        )
        .unwrap();
        let sep = quinn::Endpoint::server(server, "127.0.0.2:0".parse().unwrap()).unwrap();
        let addr = sep.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let c = sep.accept().await.unwrap().await;
            (c.is_ok(), sep)
        });
        let client = quic_client(
            client_crypto(roots, None, b"t").unwrap(),
            quinn::TransportConfig::default(),
        )
        .unwrap();
        let cep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = cep.connect_with(client.clone(), addr, "127.0.0.2").unwrap().await;
        assert!(conn.is_ok(), "verifying by IP 127.0.0.2: {:?}", conn.err());
        assert!(accept.await.unwrap().0);
        // An IP the certificate does not name is refused.
        let sep2 = quinn::Endpoint::server(
            quic_server(
                server_crypto(&id, &[b"t"], ClientAuth::None).unwrap(),
                quinn::TransportConfig::default(),
            )
            .unwrap(),
            "127.0.0.3:0".parse().unwrap(),
        )
        .unwrap();
        let addr2 = sep2.local_addr().unwrap();
        tokio::spawn(async move {
            if let Some(i) = sep2.accept().await {
                let _ = i.await;
            }
        });
        let refused = cep.connect_with(client, addr2, "127.0.0.3").unwrap().await;
        assert!(refused.is_err(), "127.0.0.3 is not in the certificate");
    }

    #[test]
    fn node_identity_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(dir.path()).unwrap();
        let b = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id, b.peer_id);
    }
}
