//! TLS for RTMPS: the listeners' certificates (several by SNI, reloaded without dropping a
//! session) and the outbound sessions' verification (system roots, a CA file, an optional
//! fingerprint pin, or an explicit opt-out for testing).
//!
//! A leaf: it imports nothing from the crate. It builds rustls configurations; `conn` drives the
//! sans-IO rustls connections between a socket and an RTMP session (design.md, invariant 1).
//!
//! # Provider
//! rustls with the *ring* provider. aws-lc-rs is rustls' default but its build wants cmake (and
//! nasm on some targets), which the project's build machines do not have; ring builds with a C
//! compiler only. Both offer the same modern suites.
//!
//! # Protocols and suites
//! TLS 1.3 and TLS 1.2 only, with ring's suites as rustls ships them: AES-GCM and
//! ChaCha20-Poly1305 with ECDHE key exchange (no CBC, no RSA key exchange, no SHA-1 MACs).
//!
//! # Reload
//! Certificates are read from disk only off the shards: at start-up by the controlling thread
//! and afterwards by the [`CertReloader`] thread, which looks at the files' modification times
//! every interval and on request (SIGHUP, [`CertReloader::request`]). A new set is checked whole
//! (every chain parses, every key loads and matches its certificate) before it replaces the old
//! one behind the [`CertResolver`]'s lock, which shards only read for the pointer at each new
//! handshake; sessions already up keep the keys they started with. A bad set is refused with a
//! log line and the previous one stays.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// Largest certificate or key file read (a chain is a few kilobytes): a path pointing at
/// something else by mistake is refused, not read whole.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The crypto provider every TLS configuration here uses (see the module doc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One certificate of a TLS listener: a PEM chain (leaf first), its PEM private key, and the
/// server names (SNI) it answers for. The first certificate of a listener is also its default,
/// for clients that send no name or a name no certificate lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

/// A certificate set as loaded: the default and the ones by name.
#[derive(Debug)]
struct CertStore {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if len > MAX_PEM_BYTES {
        return Err(format!("{}: {len} bytes, more than a PEM file should be", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and checks one certificate and its key.
fn load_one(spec: &CertSpec, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let pem = read_pem(&spec.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", spec.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", spec.cert.display()));
    }
    let key_pem = read_pem(&spec.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", spec.key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", spec.key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    // Parses the leaf certificate and compares its public key with the private key's: garbage
    // in the certificate file, or a key of another certificate, is refused here.
    certified
        .keys_match()
        .map_err(|e| format!("{} with {}: {e}", spec.cert.display(), spec.key.display()))?;
    Ok(Arc::new(certified))
}

fn load_store(specs: &[CertSpec], provider: &CryptoProvider) -> Result<CertStore, String> {
    let mut loaded = Vec::with_capacity(specs.len());
    for spec in specs {
        loaded.push((spec, load_one(spec, provider)?));
    }
    let Some((_, default)) = loaded.first() else {
        return Err("a TLS listener needs at least one certificate".into());
    };
    let default = default.clone();
    let mut by_name = HashMap::new();
    for (spec, key) in &loaded {
        for name in &spec.names {
            by_name.entry(name.to_ascii_lowercase()).or_insert_with(|| key.clone());
        }
    }
    Ok(CertStore { default, by_name })
}

/// Picks the certificate for each handshake by SNI: an exact name, then a `*.` wildcard one
/// label up, then the default. Shards call it; the reloader replaces what is behind the lock.
#[derive(Debug)]
pub struct CertResolver {
    store: RwLock<Arc<CertStore>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl CertResolver {
    fn current(&self) -> Option<Arc<CertStore>> {
        // A poisoned lock only means a writer panicked between two pointer stores: the pointer
        // is still whole.
        Some(match self.store.read() {
            Ok(store) => store.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }

    fn replace(&self, store: CertStore) {
        let store = Arc::new(store);
        match self.store.write() {
            Ok(mut slot) => *slot = store,
            Err(poisoned) => *poisoned.into_inner() = store,
        }
    }

    /// (reloads that replaced the certificates, reloads refused).
    pub fn reload_counts(&self) -> (u64, u64) {
        (self.reloads.load(Ordering::Relaxed), self.reload_failures.load(Ordering::Relaxed))
    }

    /// The certificate a client asking for `name` gets.
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let store = self.current()?;
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(key) = store.by_name.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = store.by_name.get(&format!("*.{parent}")) {
                    return Some(key.clone());
                }
            }
        }
        Some(store.default.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A TLS listener's configuration: built once, its certificates swapped behind the resolver.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub resolver: Arc<CertResolver>,
    specs: Vec<CertSpec>,
}

impl ServerTls {
    /// Loads `specs` (off the shards: this reads files) and builds the listener's configuration.
    pub fn load(specs: Vec<CertSpec>) -> Result<ServerTls, String> {
        let provider = provider();
        let store = load_store(&specs, &provider)?;
        let resolver = Arc::new(CertResolver {
            store: RwLock::new(Arc::new(store)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(ServerTls { config: Arc::new(config), resolver, specs })
    }

    /// Loads the files again; on success the next handshakes use them, on failure the old set
    /// stays and the reason is returned (and logged, and counted).
    pub fn reload(&self) -> Result<(), String> {
        match load_store(&self.specs, &provider()) {
            Ok(store) => {
                self.resolver.replace(store);
                self.resolver.reloads.fetch_add(1, Ordering::Relaxed);
                info!(certificates = self.specs.len(), "TLS certificates reloaded");
                Ok(())
            }
            Err(reason) => {
                self.resolver.reload_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%reason, "TLS certificate reload refused: keeping the previous certificates");
                Err(reason)
            }
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        self.specs.iter().flat_map(|s| [s.cert.clone(), s.key.clone()]).collect()
    }
}

/// (modification time, length) of each file, `None` for a file that cannot be read now.
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// The thread that reloads a listener's certificates when their files change or when asked.
#[derive(Debug)]
pub struct CertReloader {
    requested: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CertReloader {
    /// Watches `tls`'s files every `interval` (a zero interval: only on request).
    pub fn start(tls: ServerTls, interval: Duration) -> std::io::Result<CertReloader> {
        let requested = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requested, stop) = (requested.clone(), stop.clone());
            std::thread::Builder::new().name("tls-reload".into()).spawn(move || {
                let files = tls.files();
                let mut seen = stamps(&files);
                let mut since_check = Duration::ZERO;
                const TICK: Duration = Duration::from_millis(100);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    since_check += TICK;
                    let asked = requested.swap(false, Ordering::Relaxed);
                    let look = !interval.is_zero() && since_check >= interval;
                    if !asked && !look {
                        continue;
                    }
                    since_check = Duration::ZERO;
                    let now = stamps(&files);
                    // A file being rewritten may read as garbage once; its next write changes
                    // the stamp again and is tried again.
                    if asked || now != seen {
                        seen = now;
                        let _ = tls.reload();
                    }
                }
            })?
        };
        Ok(CertReloader { requested, stop, thread: Some(thread) })
    }

    /// Asks for a reload at the next tick (SIGHUP).
    pub fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// The flag a signal handler sets to ask for a reload.
    pub fn request_flag(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }
}

impl Drop for CertReloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How an outbound session checks the server it connects to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// Trust only the CA certificates of this PEM file; default: the Mozilla root set.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing with self-signed ones only): the connection is
    /// encrypted but not authenticated. A pin still applies.
    pub insecure_skip_verify: bool,
    /// SHA-256 of the server's leaf certificate (DER), which must match besides the chain.
    pub pin_sha256: Option<[u8; 32]>,
}

/// Parses a SHA-256 fingerprint written as 64 hex digits, colons allowed (`AB:CD:...`).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(format!("{text:?}: a SHA-256 fingerprint is 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{text:?}: not hex"))?;
    }
    Ok(out)
}

/// SHA-256 of a certificate, as pins are written (lowercase hex).
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert).iter().map(|b| format!("{b:02x}")).collect()
}

/// The verifier: the chain against the roots (unless opted out), then the pin.
struct Verifier {
    inner: Option<Arc<dyn ServerCertVerifier>>,
    provider: Arc<CryptoProvider>,
    pin: Option<[u8; 32]>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("verifies_chain", &self.inner.is_some())
            .field("pinned", &self.pin.is_some())
            .finish()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        if let Some(pin) = &self.pin {
            if Sha256::digest(end_entity.as_ref()).as_slice() != pin {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for outbound sessions (reads the CA file: call it off the shards).
pub fn client_config(options: &ClientTlsOptions) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let inner: Option<Arc<dyn ServerCertVerifier>> = if options.insecure_skip_verify {
        None
    } else {
        let mut roots = RootCertStore::empty();
        match &options.ca_file {
            Some(path) => {
                let pem = read_pem(path)?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no CA certificate in it", path.display()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("certificate verifier: {e}"))?;
        Some(verifier)
    };
    let verifier = Verifier { inner, provider: provider.clone(), pin: options.pin_sha256 };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A short stable name for why a TLS handshake or session failed, for counters and logs.
pub fn failure_kind(error: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match error {
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "not_tls",
        E::PeerIncompatible(_) | E::NoCertificatesPresented => "incompatible",
        E::InvalidCertificate(rustls::CertificateError::Expired)
        | E::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. }) => {
            "certificate_expired"
        }
        E::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure) => {
            "certificate_pin"
        }
        E::InvalidCertificate(_) => "certificate_untrusted",
        E::AlertReceived(_) => "alert_received",
        E::DecryptError | E::PeerMisbehaved(_) => "peer_misbehaved",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_fingerprint(&hex).unwrap()[31], 0xff);
        let colons: Vec<String> = (0..32).map(|i| format!("{i:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap()[5], 5);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_missing_or_garbage_certificate_is_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("rtmp-relay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, b"not a certificate").unwrap();
        let spec = CertSpec { cert: garbage.clone(), key: garbage.clone(), names: vec![] };
        let err = ServerTls::load(vec![spec]).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");
        let missing =
            CertSpec { cert: dir.join("none.pem"), key: dir.join("none.key"), names: vec![] };
        assert!(ServerTls::load(vec![missing]).unwrap_err().contains("none.pem"));
        assert!(ServerTls::load(vec![]).is_err(), "a listener needs a certificate");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sni_picks_by_name_then_wildcard_then_default() {
        let dir = std::env::temp_dir().join(format!("rtmp-relay-sni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut specs = Vec::new();
        for (i, names) in [vec![], vec!["a.example".to_string()], vec!["*.b.example".to_string()]]
            .into_iter()
            .enumerate()
        {
            let made = rcgen::generate_simple_self_signed(vec![format!("host{i}.test")]).unwrap();
            let cert = dir.join(format!("{i}.pem"));
            let key = dir.join(format!("{i}.key"));
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
            specs.push(CertSpec { cert, key, names });
        }
        let tls = ServerTls::load(specs).unwrap();
        let leaf = |name: Option<&str>| tls.resolver.pick(name).unwrap().cert[0].clone();
        let (default, a, b) = (leaf(None), leaf(Some("A.example")), leaf(Some("x.b.example")));
        assert_ne!(default, a);
        assert_ne!(default, b);
        assert_ne!(a, b);
        assert_eq!(leaf(Some("unknown.test")), default);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
