//! TLS with rustls (ring provider): termination on the `tls` listener,
//! origination to backends that only speak AMQPS, and the client side of
//! `https://` management URLs ([`management`], used by `mgmt`).
//!
//! Certificates are read from PEM files when warren starts and again on
//! [`Tls::reload`]; a reload builds every new rustls config first and swaps them
//! in only when all of them are good, so a bad file leaves the running ones in
//! place. Each handshake takes the config current at its start (an `ArcSwap`
//! load), so open connections are never touched by a reload.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

use crate::config::{
    split_host_port, BackendConfig, BackendTlsConfig, Config, Endpoint, ManagementTls,
    TlsListenConfig,
};

/// Errors building a TLS config; each names the file (and the config key) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: cannot read: {source}")]
    Read {
        key: String,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: {message}")]
    Bad {
        key: String,
        file: PathBuf,
        message: String,
    },
    #[error("{message}")]
    Invalid { key: String, message: String },
}

impl TlsError {
    /// The config key the error is about, e.g. `tls.cert` or `backends[1].tls.ca`.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Bad { key, .. }
            | TlsError::Invalid { key, .. } => key,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM files (certificate chains, CA bundles, keys) larger than this are refused.
pub(crate) const MAX_PEM_FILE: u64 = 1024 * 1024;

fn read(key: &str, file: &Path) -> Result<Vec<u8>, TlsError> {
    crate::config::read_limited(file, MAX_PEM_FILE).map_err(|source| TlsError::Read {
        key: key.to_string(),
        file: file.to_path_buf(),
        source,
    })
}

fn bad(key: &str, file: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Bad {
        key: key.to_string(),
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub(crate) fn load_certs(key: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(key, file, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            key,
            file,
            "expected at least one `BEGIN CERTIFICATE` PEM block",
        ));
    }
    for c in &certs {
        if x509_parser::parse_x509_certificate(c).is_err() {
            return Err(bad(key, file, "a PEM block is not an X.509 certificate"));
        }
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(key: &str, file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => bad(
            key,
            file,
            "expected a `BEGIN PRIVATE KEY` (or RSA / EC PRIVATE KEY) PEM block",
        ),
        e => bad(key, file, format!("invalid PEM: {e}")),
    })
}

fn load_roots(key: &str, file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(key, file)? {
        roots
            .add(c)
            .map_err(|e| bad(key, file, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Seconds since the Unix epoch at which a DER certificate stops being valid.
pub(crate) fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// The subject's common name of a DER certificate (a client certificate's,
/// for the user of an AMQP `EXTERNAL` login).
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = c.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Builds the listener's rustls config from its files.
pub(crate) fn server_config(t: &TlsListenConfig) -> Result<(ServerConfig, Option<i64>), TlsError> {
    server_config_of(&t.cert, &t.key, t.client_ca.as_deref(), "tls")
}

/// A listener's rustls config from its certificate, key and optional client
/// CA files; `at` is the config key they sit under (`tls`, `listeners[1].tls`).
fn server_config_of(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    at: &str,
) -> Result<(ServerConfig, Option<i64>), TlsError> {
    let (cert_key, key_key, ca_key) = (
        format!("{at}.cert"),
        format!("{at}.key"),
        format!("{at}.client_ca"),
    );
    let certs = load_certs(&cert_key, cert)?;
    let private = load_key(&key_key, key)?;
    let expiry = not_after(&certs[0]);
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&cert_key, cert, e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = load_roots(&ca_key, ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(&ca_key, ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, private).map_err(|e| {
        bad(
            &key_key,
            key,
            format!("does not fit the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok((config, expiry))
}

/// How warren reaches one backend over TLS.
pub(crate) struct Origin {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

/// Builds a backend's TLS client config. `i` is its index in `backends`.
pub(crate) fn origin(
    i: usize,
    b: &BackendConfig,
    t: &BackendTlsConfig,
) -> Result<(Origin, Option<i64>), TlsError> {
    let key_of = |k: &str| format!("backends[{i}].tls.{k}");
    let name = match &t.server_name {
        Some(n) => n.clone(),
        None => split_host_port(&b.address)
            .map(|(h, _)| h.to_string())
            .unwrap_or_default(),
    };
    let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::Invalid {
        key: key_of("server_name"),
        message: format!("expected a DNS name or an IP address, got `{name}`"),
    })?;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            key: key_of("ca"),
            message: e.to_string(),
        })?;
    let builder = if t.verify {
        let Some(ca) = &t.ca else {
            return Err(TlsError::Invalid {
                key: key_of("ca"),
                message: "expected a CA file (PEM) to verify the node's certificate with, \
                          or `verify: false`"
                    .into(),
            });
        };
        builder.with_root_certificates(load_roots(&key_of("ca"), ca)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let (config, expiry) = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let certs = load_certs(&key_of("cert"), cert)?;
            let expiry = not_after(&certs[0]);
            let k = load_key(&key_of("key"), key)?;
            let config = builder.with_client_auth_cert(certs, k).map_err(|e| {
                bad(
                    &key_of("key"),
                    key,
                    format!("does not fit the certificate in {}: {e}", cert.display()),
                )
            })?;
            (config, expiry)
        }
        (None, None) => (builder.with_no_client_auth(), None),
        _ => {
            return Err(TlsError::Invalid {
                key: key_of("cert"),
                message: "expected both `cert` and `key` for a client certificate, or neither"
                    .into(),
            })
        }
    };
    Ok((
        Origin {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        },
        expiry,
    ))
}

/// The system's trust store (`rustls-native-certs`: the file or directory
/// OpenSSL would use, e.g. /etc/ssl/certs from Debian's ca-certificates), read
/// once per process: the certificates it holds, or why there are none.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
            if added > 0 {
                return Ok(Arc::new(roots));
            }
            let why = match found.errors.first() {
                Some(e) => format!(": {e}"),
                None => String::new(),
            };
            Err(format!(
                "the system's trust store has no certificate{why} (install the ca-certificates \
                 package, or set `management_tls.ca`)"
            ))
        })
        .clone()
}

/// How warren reaches one `https://` management URL: the node's certificate
/// checked against `t.ca` (or the system's trust store) and `t.server_name` (or
/// the URL's host, also sent as SNI unless it is an IP address), with `t`'s
/// client certificate if any. `url_key` is the config key of the URL.
pub(crate) fn management(
    ep: &Endpoint,
    t: &ManagementTls,
    url_key: &str,
) -> Result<Origin, TlsError> {
    let (name, name_key) = match &t.server_name {
        Some(n) => (n.value.clone(), n.key.as_str()),
        None => (ep.host.clone(), url_key),
    };
    let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::Invalid {
        key: name_key.to_string(),
        message: format!("expected a DNS name or an IP address, got `{name}`"),
    })?;
    let roots = match &t.ca {
        Some(ca) => Arc::new(load_roots(&ca.key, &ca.value)?),
        None => system_roots().map_err(|message| TlsError::Invalid {
            key: url_key.to_string(),
            message: format!(
                "an https:// URL without `management_tls.ca` is verified against the \
                 system's trust store, but {message}"
            ),
        })?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            key: url_key.to_string(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match &t.client {
        Some((cert, key)) => {
            let certs = load_certs(&cert.key, &cert.value)?;
            let k = load_key(&key.key, &key.value)?;
            builder.with_client_auth_cert(certs, k).map_err(|e| {
                bad(
                    &key.key,
                    &key.value,
                    format!(
                        "does not fit the certificate in {}: {e}",
                        cert.value.display()
                    ),
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    // The management API speaks HTTP/1.1 to warren (one request per connection).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Origin {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// `verify: false`: any certificate is accepted, but the handshake signatures are
/// still checked, so the session is encrypted to whoever holds the key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Everything TLS a running warren holds: the listener's config (if it has a TLS
/// listener) and one client config per backend with `tls`.
pub(crate) struct Tls {
    /// `None` without a TLS listener; a reload may add or remove it.
    server: ArcSwapOption<Listener>,
    /// The listeners of `listeners:` with `tls`, by name.
    named: ArcSwap<HashMap<String, Arc<Listener>>>,
    origins: ArcSwap<HashMap<String, Arc<Origin>>>,
    /// notAfter (Unix seconds) per certificate label, for the expiry gauge.
    expiry: Mutex<Vec<(ExpiryLabel, i64)>>,
}

/// Which certificate an expiry figure is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExpiryLabel {
    /// The TLS listener's server certificate.
    Listener,
    /// The server certificate of a listener of `listeners:`.
    Named(String),
    /// The client certificate warren presents to a backend.
    Backend(String),
}

impl std::fmt::Display for ExpiryLabel {
    /// As the expiry metric labels it: `listener`, or `backend_client` of a backend.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpiryLabel::Listener => f.write_str("listener"),
            ExpiryLabel::Named(name) => write!(f, "listener {name}"),
            ExpiryLabel::Backend(name) => write!(f, "backend_client of {name}"),
        }
    }
}

/// What a handshake on the TLS listener uses, swapped whole on reload.
struct Listener {
    config: Arc<ServerConfig>,
}

struct Built {
    server: Option<Listener>,
    named: HashMap<String, Arc<Listener>>,
    origins: HashMap<String, Arc<Origin>>,
    expiry: Vec<(ExpiryLabel, i64)>,
}

fn build(config: &Config) -> Result<Built, TlsError> {
    let mut expiry = Vec::new();
    let server = match &config.tls {
        Some(t) => {
            let (sc, exp) = server_config(t)?;
            if let Some(e) = exp {
                expiry.push((ExpiryLabel::Listener, e));
            }
            Some(Listener {
                config: Arc::new(sc),
            })
        }
        None => None,
    };
    let mut named = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            let at = format!("listeners[{i}].tls");
            let (sc, exp) = server_config_of(&t.cert, &t.key, t.client_ca.as_deref(), &at)?;
            if let Some(e) = exp {
                expiry.push((ExpiryLabel::Named(l.name.clone()), e));
            }
            named.insert(
                l.name.clone(),
                Arc::new(Listener {
                    config: Arc::new(sc),
                }),
            );
        }
    }
    let mut origins = HashMap::new();
    for (i, b) in config.backends.iter().enumerate() {
        if let Some(t) = &b.tls {
            let (o, exp) = origin(i, b, t)?;
            if let Some(e) = exp {
                expiry.push((ExpiryLabel::Backend(b.name.clone()), e));
            }
            origins.insert(b.name.clone(), Arc::new(o));
        }
    }
    Ok(Built {
        server,
        named,
        origins,
        expiry,
    })
}

/// Checks every TLS file a config names, without keeping anything (for
/// validation): the listener's, the backends' and those of `https://`
/// management URLs (`mgmt` builds its own from the config in force).
pub(crate) fn check(config: &Config) -> Result<(), TlsError> {
    build(config)?;
    for (i, b) in config.backends.iter().enumerate() {
        let Some(ep) = b
            .management
            .as_deref()
            .and_then(|m| Endpoint::parse(m).ok())
        else {
            continue;
        };
        if !ep.tls {
            continue;
        }
        let t = ManagementTls::resolve(
            config.health.management_tls.as_ref(),
            b.management_tls.as_ref(),
            i,
        )
        .map_err(|(key, message)| TlsError::Invalid { key, message })?;
        management(&ep, &t, &format!("backends[{i}].management"))?;
    }
    Ok(())
}

impl Tls {
    /// Reads every certificate and key `config` names.
    pub(crate) fn load(config: &Config) -> Result<Tls, TlsError> {
        let b = build(config)?;
        let tls = Tls {
            server: ArcSwapOption::from_pointee(b.server),
            named: ArcSwap::from_pointee(b.named),
            origins: ArcSwap::from_pointee(b.origins),
            expiry: Mutex::new(b.expiry),
        };
        tls.warn_expired();
        tls.record_expiry();
        Ok(tls)
    }

    /// Re-reads every certificate, key and CA file of `config` (the listener's and
    /// the backends'). Open connections keep the config they started with. On an
    /// error nothing changes. Adding or removing `tls` adds or removes the
    /// listener's config here; the listening socket itself is `reload`'s business.
    pub(crate) fn reload(&self, config: &Config) -> Result<(), TlsError> {
        let b = build(config)?;
        self.server.store(b.server.map(Arc::new));
        self.named.store(Arc::new(b.named));
        self.origins.store(Arc::new(b.origins));
        if let Ok(mut e) = self.expiry.lock() {
            *e = b.expiry;
        }
        self.warn_expired();
        self.record_expiry();
        tracing::info!("TLS certificates reloaded");
        Ok(())
    }

    /// The TLS client config for `backend`, if it is reached over TLS.
    pub(crate) fn origin(&self, backend: &str) -> Option<Arc<Origin>> {
        self.origins.load().get(backend).cloned()
    }

    /// Runs the server side of a handshake on an accepted connection, bounded by
    /// `timeout`; counts and logs the outcome.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let listener = self.server.load_full()?;
        Self::handshake(listener, tcp, peer, timeout).await
    }

    /// [`Tls::accept`] on the listener of `listeners:` named `name`.
    pub(crate) async fn accept_named(
        &self,
        name: &str,
        tcp: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let listener = self.named.load().get(name).cloned()?;
        Self::handshake(listener, tcp, peer, timeout).await
    }

    async fn handshake(
        listener: Arc<Listener>,
        tcp: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&listener.config));
        let result = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(r) => r.map_err(|e| classify(&e)),
            Err(_) => Err(Failure {
                reason: "timeout",
                detail: format!("no handshake within {timeout:?}"),
            }),
        };
        match result {
            Ok(s) => {
                crate::telemetry::metrics::tls_handshake(Side::Client.as_str(), "ok");
                Some(s)
            }
            Err(f) => {
                crate::telemetry::metrics::tls_handshake(Side::Client.as_str(), f.reason);
                if f.is_certificate() {
                    tracing::warn!(%peer, reason = f.reason, error = %f.detail, "TLS handshake failed: client certificate rejected");
                } else {
                    tracing::debug!(%peer, reason = f.reason, error = %f.detail, "TLS handshake failed");
                }
                None
            }
        }
    }

    /// Sets the expiry gauges to the seconds left until each certificate's notAfter
    /// (negative once expired). Called on load, reload and every /metrics scrape.
    pub(crate) fn record_expiry(&self) {
        let now = now_unix();
        if let Ok(e) = self.expiry.lock() {
            for (label, not_after) in e.iter() {
                let backend = match label {
                    ExpiryLabel::Listener => None,
                    // Warned about when expired; the gauge has the listener of
                    // the one-listener form only.
                    ExpiryLabel::Named(_) => continue,
                    ExpiryLabel::Backend(name) => Some(name.as_str()),
                };
                crate::telemetry::metrics::tls_certificate_expiry(
                    backend,
                    (not_after - now) as f64,
                );
            }
        }
    }

    fn warn_expired(&self) {
        let now = now_unix();
        if let Ok(e) = self.expiry.lock() {
            for (label, not_after) in e.iter() {
                if *not_after <= now {
                    tracing::warn!(certificate = %label, "TLS certificate has expired");
                }
            }
        }
    }
}

/// Which side of warren a handshake was with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// A client on the TLS listener.
    Client,
    /// A backend warren connected to.
    Backend,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// A failed handshake: a bounded reason for metrics and the full text for logs.
#[derive(Debug)]
pub(crate) struct Failure {
    pub reason: &'static str,
    pub detail: String,
}

impl Failure {
    /// A certificate was missing or refused (by us or by the peer).
    pub(crate) fn is_certificate(&self) -> bool {
        matches!(
            self.reason,
            "no_certificate" | "bad_certificate" | "peer_rejected_certificate"
        )
    }
}

/// Sorts a handshake error into a bounded set of reasons.
pub(crate) fn classify(e: &io::Error) -> Failure {
    use rustls::Error as E;
    let detail = e.to_string();
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let reason = match tls {
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::AlertReceived(a)) => match a {
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateExpired
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::UnsupportedCertificate
            | rustls::AlertDescription::AccessDenied => "peer_rejected_certificate",
            _ => "alert",
        },
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_)
            | E::DecryptError,
        ) => "protocol",
        Some(_) => "other",
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "closed",
            io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        },
    };
    Failure { reason, detail }
}

/// The client side of a handshake with a backend, bounded by `timeout`; counted.
pub(crate) async fn connect(
    origin: &Origin,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let result = match tokio::time::timeout(
        timeout,
        origin.connector.connect(origin.server_name.clone(), tcp),
    )
    .await
    {
        Ok(r) => r.map_err(|e| classify(&e)),
        Err(_) => Err(Failure {
            reason: "timeout",
            detail: format!("no handshake within {timeout:?}"),
        }),
    };
    crate::telemetry::metrics::tls_handshake(
        Side::Backend.as_str(),
        match &result {
            Ok(_) => "ok",
            Err(f) => f.reason,
        },
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// A temporary directory removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "warren-tls-unit-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&d).expect("temp dir");
            Dir(d)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write");
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed(year: i32) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.not_after = rcgen::date_time_ymd(year, 1, 1);
        let cert = p.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificates_common_name_is_read() {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "orders-api");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()).as_deref(), Some("orders-api"));
        let (pem, _) = self_signed(2030);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        // rcgen's default subject: `rcgen self signed cert`.
        assert!(common_name(&der).is_some());
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    fn listener(cert: PathBuf, key: PathBuf) -> TlsListenConfig {
        TlsListenConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert,
            key,
            client_ca: None,
            accept_proxy: None,
        }
    }

    #[test]
    fn loads_a_certificate_and_reads_its_expiry() {
        let d = Dir::new("ok");
        let (c, k) = self_signed(2031);
        let t = listener(d.write("c.pem", &c), d.write("k.pem", &k));
        let (_, expiry) = server_config(&t).expect("loads");
        // 2031-01-01T00:00:00Z
        assert_eq!(expiry, Some(1_924_992_000));
    }

    #[test]
    fn a_missing_file_is_named() {
        let d = Dir::new("missing");
        let (_, k) = self_signed(2031);
        let cert = d.0.join("nope.pem");
        let t = listener(cert.clone(), d.write("k.pem", &k));
        let e = server_config(&t).expect_err("error");
        assert_eq!(e.key(), "tls.cert");
        assert!(e.to_string().contains(&cert.display().to_string()), "{e}");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_named() {
        let d = Dir::new("nocert");
        let (_, k) = self_signed(2031);
        let cert = d.write("c.pem", "hello\n");
        let e = server_config(&listener(cert.clone(), d.write("k.pem", &k))).expect_err("error");
        assert_eq!(e.key(), "tls.cert");
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
    }

    #[test]
    fn an_oversized_file_is_refused_by_name() {
        let d = Dir::new("oversized");
        let (c, k) = self_signed(2031);
        // A real key followed by more than MAX_PEM_FILE bytes of padding.
        let padded = format!("{k}{}", "x".repeat(MAX_PEM_FILE as usize));
        let key = d.write("k.pem", &padded);
        let e = server_config(&listener(d.write("c.pem", &c), key.clone())).expect_err("error");
        assert_eq!(e.key(), "tls.key");
        let text = e.to_string();
        assert!(
            text.contains(&key.display().to_string()) && text.contains("larger than"),
            "{text}"
        );
        assert!(
            !text.contains("xxxx") && !text.contains("PRIVATE"),
            "{text}"
        );
    }

    #[test]
    fn a_key_that_does_not_fit_is_named() {
        let d = Dir::new("mismatch");
        let (c, _) = self_signed(2031);
        let (_, other_key) = self_signed(2031);
        let key = d.write("k.pem", &other_key);
        let e = server_config(&listener(d.write("c.pem", &c), key.clone())).expect_err("error");
        assert_eq!(e.key(), "tls.key");
        assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    }

    #[test]
    fn a_backend_needs_a_ca_while_verifying() {
        let b = BackendConfig {
            name: "a".into(),
            address: "node1:5671".into(),
            management: None,
            management_tls: None,
            tls: None,
            send_proxy: None,
            ports: Default::default(),
        };
        let t = BackendTlsConfig {
            ca: None,
            server_name: None,
            verify: true,
            cert: None,
            key: None,
        };
        let e = origin(3, &b, &t).err().expect("error");
        assert_eq!(e.key(), "backends[3].tls.ca");
        let t = BackendTlsConfig { verify: false, ..t };
        let (o, _) = origin(3, &b, &t).expect("verify off needs no CA");
        assert_eq!(o.server_name.to_str(), "node1");
    }

    /// `config` with `text` after a plain listener, parsed, then its files checked.
    fn check_yaml(text: &str) -> Result<(), TlsError> {
        let c = Config::from_yaml(
            &format!("listen: 127.0.0.1:5672\n{text}"),
            Path::new("t.yaml"),
        )
        .expect("valid config");
        check(&c)
    }

    #[test]
    fn management_tls_files_are_checked_by_key() {
        let d = Dir::new("mgmt");
        let (c, k) = self_signed(2031);
        let (_, other_key) = self_signed(2031);
        let ca = d.write("ca.pem", &c);
        let cert = d.write("c.pem", &c);
        let key = d.write("k.pem", &k);
        let wrong_key = d.write("wrong.pem", &other_key);
        let empty = d.write("empty.pem", "no certificate here\n");
        let url = "management: 'https://127.0.0.1:15671'";
        let p = |p: &PathBuf| p.display().to_string();
        check_yaml(&format!(
            "health: {{management_tls: {{ca: '{}', cert: '{}', key: '{}'}}}}\nbackends: [{{name: a, address: 'h:1', {url}, management_tls: {{server_name: localhost}}}}]\n",
            p(&ca), p(&cert), p(&key)
        ))
        .expect("valid files");
        for (tls, key_named, says) in [
            (
                format!(
                    "health: {{management_tls: {{ca: '{}'}}}}",
                    p(&d.0.join("nope.pem"))
                ),
                "health.management_tls.ca",
                "cannot read",
            ),
            (
                format!("health: {{management_tls: {{ca: '{}'}}}}", p(&empty)),
                "health.management_tls.ca",
                "BEGIN CERTIFICATE",
            ),
            (
                format!(
                    "health: {{management_tls: {{ca: '{}', cert: '{}', key: '{}'}}}}",
                    p(&ca),
                    p(&cert),
                    p(&wrong_key)
                ),
                "health.management_tls.key",
                "does not fit the certificate",
            ),
        ] {
            let e = check_yaml(&format!(
                "{tls}\nbackends: [{{name: a, address: 'h:1', {url}}}]\n"
            ))
            .expect_err(&tls);
            assert_eq!(e.key(), key_named, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        // A server_name that is no name, from the backend's own settings.
        let e = check_yaml(&format!(
            "backends: [{{name: a, address: 'h:1', {url}, management_tls: {{ca: '{}', server_name: 'not a name'}}}}]\n",
            p(&ca)
        ))
        .expect_err("bad name");
        assert_eq!(e.key(), "backends[0].management_tls.server_name");
    }

    #[test]
    fn handshake_errors_are_sorted() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(classify(&e).reason, "no_certificate");
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify(&e).reason, "bad_certificate");
        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(classify(&e).reason, "closed");
    }
}
