//! Certificates made at test time (rcgen), written to a temporary directory, and a blocking
//! TLS client for looking at what a listener presents.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("rtmp-relay-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `names` written as `<stem>.pem` / `<stem>.key` in `dir`;
/// returns (cert path, key path, the certificate's DER).
pub fn self_signed(dir: &TempDir, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names).expect("certificate");
    let (cert, key) = (dir.path(&format!("{stem}.pem")), dir.path(&format!("{stem}.key")));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (cert, key, made.cert.der().to_vec())
}

/// A test CA (`ca.pem`) and a leaf it signed for 127.0.0.1 and localhost (`leaf.pem`,
/// `leaf.key`); returns (CA path, leaf cert path, leaf key path).
pub fn ca_and_leaf(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("leaf params");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf cert");
    let (ca, cert, key) = (dir.path("ca.pem"), dir.path("leaf.pem"), dir.path("leaf.key"));
    std::fs::write(&ca, ca_cert.pem()).expect("write ca");
    std::fs::write(&cert, leaf.pem()).expect("write leaf");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
    (ca, cert, key)
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A blocking TLS client connection that accepts any certificate.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `addr` with SNI `name` and completes the handshake.
pub fn tls_connect(addr: SocketAddr, name: &str) -> TlsStream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(super::WAIT)).expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
    }
    stream
}

/// The leaf certificate a TLS stream's server presented.
pub fn leaf(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().expect("certificates")[0].to_vec()
}

/// Whether an RTMP handshake still works over `stream`: sends C0+C1 and reads S0+S1.
pub fn rtmp_answers(stream: &mut TlsStream) -> bool {
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    if stream.write_all(&c0c1).and_then(|_| stream.flush()).is_err() {
        return false;
    }
    let mut s0s1 = [0u8; 1537];
    stream.read_exact(&mut s0s1).is_ok() && s0s1[0] == 3
}

/// Copies `from` over `to` (a certificate replaced in place, as an operator or certbot does).
pub fn replace(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy");
    // Modification times have a granularity: make sure the watcher sees a change.
    std::thread::sleep(Duration::from_millis(20));
}
