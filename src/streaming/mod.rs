//! The streaming server behind Exec, Attach and PortForward (issue 7).
//!
//! So far: the SPDY/3.1 frame codec ([`spdy`]), a plain-HTTP listener that
//! upgrades `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`
//! requests ([`http`]), the remotecommand sessions for exec with or without
//! a TTY ([`exec`]) and for attach ([`attach`], through the container
//! monitor's attach socket), and the port-forward session ([`portforward`]).
//! The Exec, Attach and PortForward RPCs store their request under a
//! single-use random token ([`StreamingServer::register_exec`],
//! [`StreamingServer::register_attach`], [`StreamingServer::
//! register_port_forward`]) and answer the URL the client then upgrades.

pub mod attach;
pub mod exec;
pub mod http;
pub mod portforward;
pub mod session;
pub mod spdy;
pub mod spdy_transport;
pub mod websocket;

#[cfg(test)]
mod spdy_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pod::PodManager;

/// An unused token expires after this long.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// At most this many unused tokens are kept; the oldest goes first.
pub const MAX_TOKENS: usize = 1000;
/// At most this many streaming connections are served at once.
const MAX_CONNECTIONS: usize = 256;

/// What an Exec RPC asked for, kept until its URL is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Run the command on a terminal (then there is no stderr).
    pub tty: bool,
}

/// What an Attach RPC asked for, kept until its URL is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What a PortForward RPC asked for, kept until its URL is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_id: String,
    /// The only ports that may be forwarded; empty: any.
    pub ports: Vec<u16>,
}

/// Single-use tokens with a time to live and a bound on their number.
#[derive(Debug)]
pub struct TokenCache<T> {
    entries: HashMap<String, (Instant, T)>,
}

impl<T> Default for TokenCache<T> {
    fn default() -> Self {
        TokenCache {
            entries: HashMap::new(),
        }
    }
}

impl<T> TokenCache<T> {
    /// Stores `value` under a fresh random token and returns the token.
    pub fn insert(&mut self, value: T, now: Instant) -> String {
        self.entries
            .retain(|_, (created, _)| now.saturating_duration_since(*created) < TOKEN_TTL);
        while self.entries.len() >= MAX_TOKENS {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (created, _))| *created)
                .map(|(token, _)| token.clone());
            match oldest {
                Some(token) => self.entries.remove(&token),
                None => break,
            };
        }
        let token = random_token();
        self.entries.insert(token.clone(), (now, value));
        token
    }

    /// Takes the value of an unexpired token; a token works once.
    pub fn consume(&mut self, token: &str, now: Instant) -> Option<T> {
        let (created, value) = self.entries.remove(token)?;
        (now.saturating_duration_since(created) < TOKEN_TTL).then_some(value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// 128 random bits from the kernel, as 32 hex digits (URL-safe).
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let from_kernel = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !from_kernel {
        // Unreachable on Linux in practice; still unpredictable per process.
        use std::hash::{BuildHasher, RandomState};
        let a = RandomState::new().hash_one(Instant::now());
        let b = RandomState::new().hash_one(std::process::id());
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
    }
    hex::encode(bytes)
}

/// The streaming server: its address, the pending tokens and the pods.
pub struct StreamingServer {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    idle_timeout: Duration,
    exec_tokens: Mutex<TokenCache<ExecRequest>>,
    attach_tokens: Mutex<TokenCache<AttachRequest>>,
    portforward_tokens: Mutex<TokenCache<PortForwardRequest>>,
    pods: Arc<PodManager>,
}

impl StreamingServer {
    /// Binds `address:port` (port 0: any free one) and serves connections
    /// in the background for as long as the runtime runs.
    pub async fn start(
        config: &crate::config::StreamingConfig,
        pods: Arc<PodManager>,
    ) -> std::io::Result<Arc<StreamingServer>> {
        let tls = match &config.tls {
            Some(tls) => Some(load_tls(tls).await?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind((config.address, config.port)).await?;
        let addr = listener.local_addr()?;
        let server = Arc::new(StreamingServer {
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            idle_timeout: config.idle_timeout,
            exec_tokens: Mutex::new(TokenCache::default()),
            attach_tokens: Mutex::new(TokenCache::default()),
            portforward_tokens: Mutex::new(TokenCache::default()),
            pods,
        });
        tokio::spawn(accept_loop(listener, tls, server.clone()));
        Ok(server)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long a session may go without traffic.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Stores an exec request and returns the URL that runs it.
    pub fn register_exec(&self, request: ExecRequest) -> String {
        let token = self
            .exec_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, Instant::now());
        format!("{}://{}/exec/{token}", self.scheme, self.addr)
    }

    fn take_exec(&self, token: &str) -> Option<ExecRequest> {
        self.exec_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .consume(token, Instant::now())
    }

    /// Stores an attach request and returns the URL that serves it.
    pub fn register_attach(&self, request: AttachRequest) -> String {
        let token = self
            .attach_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, Instant::now());
        format!("{}://{}/attach/{token}", self.scheme, self.addr)
    }

    fn take_attach(&self, token: &str) -> Option<AttachRequest> {
        self.attach_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .consume(token, Instant::now())
    }

    /// Stores a port-forward request and returns the URL that serves it.
    pub fn register_port_forward(&self, request: PortForwardRequest) -> String {
        let token = self
            .portforward_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, Instant::now());
        format!("{}://{}/portforward/{token}", self.scheme, self.addr)
    }

    fn take_port_forward(&self, token: &str) -> Option<PortForwardRequest> {
        self.portforward_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .consume(token, Instant::now())
    }

    pub(crate) fn pods(&self) -> &Arc<PodManager> {
        &self.pods
    }
}

/// Reads the certificate chain and key and builds the TLS acceptor; errors
/// name the file to fix.
async fn load_tls(tls: &crate::config::StreamingTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let invalid = |path: &std::path::Path, what: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("streaming TLS: {}: {what}", path.display()),
        )
    };
    let read = |path: std::path::PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|e| invalid(&path, format!("cannot read it: {e}")))
    };
    let cert_pem = read(tls.cert_file.clone()).await?;
    let key_pem = read(tls.key_file.clone()).await?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&tls.cert_file, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(&tls.cert_file, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(&tls.key_file, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| invalid(&tls.key_file, format!("does not fit the certificate: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The TLS handshake must finish within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<StreamingServer>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "streaming server: too many connections; closing");
            continue;
        };
        let server = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => http::serve_connection(stream, server).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => http::serve_connection(stream, server).await,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "streaming server: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::info!(%peer, "streaming server: TLS handshake timed out")
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_random_and_expire() {
        let mut cache = TokenCache::default();
        let now = Instant::now();
        let a = cache.insert(1, now);
        let b = cache.insert(2, now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(cache.consume(&a, now), Some(1));
        assert_eq!(cache.consume(&a, now), None);
        assert_eq!(cache.consume("nope", now), None);
        assert_eq!(cache.consume(&b, now + TOKEN_TTL), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let mut cache = TokenCache::default();
        let start = Instant::now();
        let first = cache.insert(0, start);
        for i in 1..=MAX_TOKENS {
            cache.insert(i, start + Duration::from_millis(i as u64));
        }
        assert_eq!(cache.len(), MAX_TOKENS);
        assert_eq!(cache.consume(&first, start), None);
    }
}
