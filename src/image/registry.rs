//! A client for the registry HTTP API v2, just enough to pull images: resolve
//! a reference to the image manifest for one platform (fetching and verifying
//! its config on the way), then stream layer blobs to disk.
//!
//! Every manifest and blob is checked against its digest; nothing unverified
//! is handed back.
//!
//! **Endpoints.** For registry R the client tries each mirror configured for R
//! in order, then R itself over https. For R marked `insecure`, or on a
//! loopback host (as Docker does), it tries https without certificate checks,
//! then plain http if that fails to connect. A mirror that fails in any way is
//! skipped; R's own answer is final. Credentials go only to R (and the token
//! service it names), never to mirrors, which are asked anonymously.
//!
//! **Auth.** A 401 with a Bearer challenge gets a token from the challenge's
//! realm (anonymous, Basic credentials, or an OAuth2 refresh-token grant for an
//! identity token), cached per endpoint, repository and credentials until it
//! expires; a Basic challenge is answered with Basic credentials. A
//! `RegistryToken` is sent as the bearer token directly.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::AsyncWriteExt;

use super::reference::{Reference, is_valid_digest};

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_TYPES_DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Manifests are small; a bigger one is a broken or hostile registry (the
/// same cap as containerd).
const MANIFEST_MAX: usize = 4 << 20;
/// Image configs are small too; they are kept in memory.
const CONFIG_MAX: u64 = 32 << 20;
/// How much of an error answer to read for its message.
const ERROR_BODY_MAX: usize = 16 << 10;
const TOKEN_BODY_MAX: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A stalled connection is abandoned after this long without a byte.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-request cap for small objects (manifests, configs, tokens); blobs
/// have none, since big layers can take long.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The token spec's default and minimum lifetime.
const TOKEN_MIN_TTL: u64 = 60;
/// Renew a little before expiry so a token does not lapse in flight.
const TOKEN_MARGIN: u64 = 10;
const BLOB_WRITE_BUFFER: usize = 256 << 10;

/// How to reach one registry, keyed in [`RegistryClient::new`] by the registry
/// name as references spell it (`docker.io`, `127.0.0.1:5000`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryHost {
    /// Mirror base URLs tried in order before the registry, e.g.
    /// `http://127.0.0.1:5000` or `https://mirror.example/prefix` (the API is
    /// at `<url>/v2/`). A URL without a scheme means https.
    pub mirrors: Vec<String>,
    /// Skip certificate checks for this registry and its mirrors, and let the
    /// registry fall back to plain http.
    pub insecure: bool,
}

/// Credentials for one registry (from the CRI `AuthConfig`).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token service for access
    /// tokens.
    IdentityToken(String),
    /// A bearer token sent to the registry as is.
    RegistryToken(String),
}

// Secrets stay out of logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// A content descriptor: what a manifest says about a blob it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2; they share this shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    /// The manifest's media type, filled in from the Content-Type header when
    /// the JSON omits it.
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OS/architecture pair as image indexes describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was built for, in OCI terms.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// How well `candidate` fits: `None` if it cannot run here; among fits
    /// the exact variant wins, then an unspecified one, then any other
    /// (variants are honoured loosely, as registries label them unevenly).
    fn fit(&self, candidate: &Platform) -> Option<u8> {
        if !candidate.os.eq_ignore_ascii_case(&self.os)
            || !candidate
                .architecture
                .eq_ignore_ascii_case(&self.architecture)
        {
            return None;
        }
        let want = self.variant.as_deref().unwrap_or("");
        let have = candidate.variant.as_deref().unwrap_or("");
        Some(if want.eq_ignore_ascii_case(have) {
            3
        } else if have.is_empty() {
            2
        } else {
            1
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

/// The endpoint that served an image, to fetch its blobs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Registry name as in the reference (`docker.io`).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Base URL; the API is at `<endpoint>/v2/`.
    pub endpoint: String,
    /// A mirror rather than the registry itself (gets no credentials).
    pub mirror: bool,
    pub skip_tls_verify: bool,
}

impl Source {
    /// How errors name this endpoint: the registry's own name, or the
    /// mirror's URL.
    fn label(&self) -> String {
        if self.mirror {
            self.endpoint.clone()
        } else {
            self.registry.clone()
        }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}",
            self.endpoint, self.repository
        )
    }
}

/// A reference resolved to one platform's image.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The endpoint that answered.
    pub source: Source,
    /// Digest of what the reference pointed to (the index, if it was one):
    /// the CRI repo digest.
    pub target_digest: String,
    /// Digest of the platform's image manifest.
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub manifest_bytes: Vec<u8>,
    /// The image config blob, digest-verified.
    pub config_bytes: Vec<u8>,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: not found at {registry}: {message}")]
    NotFound {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{registry} refused access: {message}")]
    Unauthorized { registry: String, message: String },
    #[error("cannot reach registry {registry} (tried {}): {source_text}", endpoints.join(", "))]
    Unreachable {
        registry: String,
        endpoints: Vec<String>,
        source_text: String,
    },
    /// Any other unsuccessful HTTP answer (5xx, 429 rate limits, …).
    #[error("{registry} answered {reference} with HTTP {status}: {message}")]
    Status {
        reference: String,
        registry: String,
        status: u16,
        message: String,
    },
    #[error("content of {digest} does not match its digest (got {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("{digest}: received {received} of {expected} bytes: {detail}")]
    Truncated {
        digest: String,
        expected: u64,
        received: u64,
        detail: String,
    },
    #[error("{digest}: the registry sent more than the {expected} bytes the manifest declares")]
    Oversized { digest: String, expected: u64 },
    #[error("invalid manifest for {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("{reference}: unsupported media type {media_type:?}: {hint}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
        hint: String,
    },
    #[error(
        "{reference} has no image for {wanted}; available: {}",
        list_or_none(available)
    )]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry client configuration: {0}")]
    Config(String),
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

impl RegistryError {
    /// The image, repository, tag or blob does not exist (gRPC NotFound).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }

    /// Credentials missing, wrong or insufficient.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, RegistryError::Unauthorized { .. })
    }

    /// Transient: the network or the registry may do better later (gRPC
    /// Unavailable).
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Truncated { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The registry served content that is wrong or that rcri cannot use.
    pub fn is_bad_content(&self) -> bool {
        matches!(
            self,
            RegistryError::DigestMismatch { .. }
                | RegistryError::Oversized { .. }
                | RegistryError::InvalidManifest { .. }
                | RegistryError::UnsupportedMediaType { .. }
                | RegistryError::NoMatchingPlatform { .. }
        )
    }

    fn is_unreachable(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
    }

    /// Appends a note (which other endpoints were tried) where the variant
    /// carries a free-text message.
    fn with_note(self, note: &str) -> Self {
        if note.is_empty() {
            return self;
        }
        match self {
            RegistryError::NotFound {
                reference,
                registry,
                message,
            } => RegistryError::NotFound {
                reference,
                registry,
                message: format!("{message} ({note})"),
            },
            RegistryError::Unauthorized { registry, message } => RegistryError::Unauthorized {
                registry,
                message: format!("{message} ({note})"),
            },
            RegistryError::Status {
                reference,
                registry,
                status,
                message,
            } => RegistryError::Status {
                reference,
                registry,
                status,
                message: format!("{message} ({note})"),
            },
            other => other,
        }
    }
}

#[derive(Debug)]
struct HostConfig {
    /// (base URL, host is loopback)
    mirrors: Vec<(String, bool)>,
    insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AuthKey {
    endpoint: String,
    repository: String,
    /// sha256 of the credentials, so one pod's token never serves another's
    /// credentials.
    credentials: String,
}

#[derive(Debug, Clone)]
enum CachedAuth {
    Bearer {
        token: String,
        expires: Instant,
    },
    /// The endpoint asked for Basic auth before; send it up front.
    Basic,
}

struct Inner {
    hosts: BTreeMap<String, HostConfig>,
    verifying: reqwest::Client,
    /// Accepts any certificate: for insecure and loopback registries.
    trusting: reqwest::Client,
    auth: Mutex<HashMap<AuthKey, CachedAuth>>,
}

/// Registry client; cheap to clone (shared connection pools and token cache).
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("hosts", &self.inner.hosts)
            .finish_non_exhaustive()
    }
}

/// One GET to a registry endpoint.
struct Get<'a> {
    source: &'a Source,
    url: String,
    accept: Option<&'a str>,
    /// What is asked for, to name it in errors (reference or digest).
    what: &'a str,
    /// Already `None` for mirrors.
    creds: Option<&'a Credentials>,
    timeout: Option<Duration>,
}

impl RegistryClient {
    /// Builds a client. Fails on a malformed mirror URL or when the TLS
    /// set-up (the system's root certificates) is unusable.
    pub fn new(hosts: BTreeMap<String, RegistryHost>) -> Result<Self, RegistryError> {
        let mut configs = BTreeMap::new();
        for (name, host) in hosts {
            let mirrors = host
                .mirrors
                .iter()
                .map(|m| {
                    normalize_mirror(m).map_err(|e| RegistryError::Config(format!("{name}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            configs.insert(
                name,
                HostConfig {
                    mirrors,
                    insecure: host.insecure,
                },
            );
        }
        let build = |trust_all: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("rcri/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_IDLE_TIMEOUT)
                .danger_accept_invalid_certs(trust_all)
                .build()
                .map_err(|e| RegistryError::Config(format!("HTTP client: {}", error_chain(&e))))
        };
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                hosts: configs,
                verifying: build(false)?,
                trusting: build(true)?,
                auth: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Resolves `r` to the image manifest for this host's platform.
    pub async fn resolve(
        &self,
        r: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        self.resolve_platform(r, creds, &Platform::host()).await
    }

    /// Resolves `r` to the image manifest for `platform`, trying mirrors
    /// first, and fetches the image config.
    pub async fn resolve_platform(
        &self,
        r: &Reference,
        creds: Option<&Credentials>,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let mut failures: Vec<(Source, RegistryError)> = Vec::new();
        for source in self.endpoints(r) {
            match self.resolve_at(&source, r, creds, platform).await {
                Ok(resolved) => return Ok(resolved),
                Err(e) => {
                    // The registry's own answer is final, unless it could
                    // not be reached (then the http variant is next).
                    let next = source.mirror || e.is_unreachable();
                    tracing::debug!(endpoint = %source.endpoint, error = %e, "resolve attempt failed");
                    failures.push((source, e));
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(combine_failures(r, failures))
    }

    /// Streams one blob into `dest`, which must not exist yet, checking its
    /// size and digest; returns the size. The file is fsynced on success and
    /// removed on any failure (or if the future is dropped).
    pub async fn fetch_blob(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        dest: &Path,
        creds: Option<&Credentials>,
    ) -> Result<u64, RegistryError> {
        let digest = &descriptor.digest;
        let mut hasher =
            Hasher::for_digest(digest).ok_or_else(|| RegistryError::InvalidManifest {
                reference: format!("{}/{}", source.registry, source.repository),
                reason: format!("invalid blob digest {digest:?}"),
            })?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(|e| io_error(format!("create {}", dest.display()), e))?;
        // Created by us from here on, so ours to remove on failure.
        let mut guard = RemoveOnDrop(Some(dest.to_path_buf()));

        let mut resp = self
            .send(&Get {
                source,
                url: source.url("blobs", digest),
                accept: None,
                what: digest,
                creds: if source.mirror { None } else { creds },
                timeout: None,
            })
            .await?;
        let expected = descriptor.size;
        if resp.content_length().is_some_and(|len| len > expected) {
            return Err(RegistryError::Oversized {
                digest: digest.clone(),
                expected,
            });
        }
        let mut out = tokio::io::BufWriter::with_capacity(BLOB_WRITE_BUFFER, file);
        let mut received: u64 = 0;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return Err(RegistryError::Truncated {
                        digest: digest.clone(),
                        expected,
                        received,
                        detail: error_chain(&e),
                    });
                }
            };
            received += chunk.len() as u64;
            if received > expected {
                return Err(RegistryError::Oversized {
                    digest: digest.clone(),
                    expected,
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| io_error(format!("write {}", dest.display()), e))?;
        }
        if received < expected {
            return Err(RegistryError::Truncated {
                digest: digest.clone(),
                expected,
                received,
                detail: "the body ended early".to_string(),
            });
        }
        let actual = hasher.digest();
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                digest: digest.clone(),
                actual,
            });
        }
        out.flush()
            .await
            .map_err(|e| io_error(format!("write {}", dest.display()), e))?;
        out.into_inner()
            .sync_all()
            .await
            .map_err(|e| io_error(format!("fsync {}", dest.display()), e))?;
        guard.0 = None;
        Ok(received)
    }

    /// Mirrors first, then the registry itself (https; https without
    /// certificate checks then http when insecure or on loopback).
    fn endpoints(&self, r: &Reference) -> Vec<Source> {
        let host = self.inner.hosts.get(&r.registry);
        let insecure = host.is_some_and(|h| h.insecure);
        let source = |endpoint: String, mirror: bool, skip_tls_verify: bool| Source {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            endpoint,
            mirror,
            skip_tls_verify,
        };
        let mut out: Vec<Source> = host
            .map(|h| h.mirrors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|(base, loopback)| source(base.clone(), true, insecure || *loopback))
            .collect();
        let api = r.api_registry_host();
        if insecure || is_loopback(api) {
            out.push(source(format!("https://{api}"), false, true));
            out.push(source(format!("http://{api}"), false, true));
        } else {
            out.push(source(format!("https://{api}"), false, false));
        }
        out
    }

    async fn resolve_at(
        &self,
        source: &Source,
        r: &Reference,
        creds: Option<&Credentials>,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let creds = if source.mirror { None } else { creds };
        let reference = r.to_string();
        let target = r
            .digest
            .as_deref()
            .or(r.tag.as_deref())
            .unwrap_or(super::reference::DEFAULT_TAG);
        let (bytes, content_type) = self.get_manifest(source, target, &reference, creds).await?;
        let target_digest = match &r.digest {
            Some(d) => {
                verify_digest(d, &bytes)?;
                d.clone()
            }
            None => sha256_digest(&bytes),
        };

        let (manifest_digest, manifest_bytes, manifest) =
            match classify(&bytes, &content_type, &reference)? {
                Parsed::Manifest(m) => (target_digest.clone(), bytes, m),
                Parsed::Index(entries) => {
                    let entry = select_platform(&entries, platform).ok_or_else(|| {
                        RegistryError::NoMatchingPlatform {
                            reference: reference.clone(),
                            wanted: platform.to_string(),
                            available: entries
                                .iter()
                                .filter_map(|e| e.platform.as_ref())
                                .filter(|p| p.os != "unknown")
                                .map(Platform::to_string)
                                .collect(),
                        }
                    })?;
                    if !is_valid_digest(&entry.digest) {
                        return Err(invalid(
                            &reference,
                            format!("index entry has invalid digest {:?}", entry.digest),
                        ));
                    }
                    let (child, child_type) = self
                        .get_manifest(source, &entry.digest, &reference, creds)
                        .await?;
                    verify_digest(&entry.digest, &child)?;
                    if child.len() as u64 != entry.size {
                        return Err(invalid(
                            &reference,
                            format!(
                                "index gives {} bytes for {}, the manifest has {}",
                                entry.size,
                                entry.digest,
                                child.len()
                            ),
                        ));
                    }
                    match classify(&child, &child_type, &reference)? {
                        Parsed::Manifest(m) => (entry.digest.clone(), child, m),
                        Parsed::Index(_) => {
                            return Err(invalid(
                                &reference,
                                format!("index entry {} is another index", entry.digest),
                            ));
                        }
                    }
                }
            };
        check_manifest(&manifest, &reference)?;
        let config_bytes = self
            .fetch_small_blob(source, &manifest.config, creds)
            .await?;
        Ok(Resolved {
            source: source.clone(),
            target_digest,
            manifest_digest,
            manifest,
            manifest_bytes,
            config_bytes,
        })
    }

    /// Fetches a manifest; returns its bytes and Content-Type. A
    /// Docker-Content-Digest header is checked against the bytes.
    async fn get_manifest(
        &self,
        source: &Source,
        target: &str,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let accept = [
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self
            .send(&Get {
                source,
                url: source.url("manifests", target),
                accept: Some(&accept),
                what: reference,
                creds,
                timeout: Some(SMALL_REQUEST_TIMEOUT),
            })
            .await?;
        let headers = resp.headers().clone();
        let content_type = header_str(&headers, CONTENT_TYPE.as_str()).unwrap_or_default();
        let (bytes, complete) =
            read_limited(resp, MANIFEST_MAX)
                .await
                .map_err(|e| RegistryError::Unreachable {
                    registry: source.label(),
                    endpoints: vec![source.endpoint.clone()],
                    source_text: format!("reading manifest: {}", error_chain(&e)),
                })?;
        if !complete {
            return Err(invalid(
                reference,
                format!("manifest is larger than {MANIFEST_MAX} bytes"),
            ));
        }
        if let Some(claimed) = header_str(&headers, "docker-content-digest") {
            // Cross-check only when we can compute the same algorithm.
            if let Some(mut h) = Hasher::for_digest(&claimed) {
                h.update(&bytes);
                let actual = h.digest();
                if actual != claimed {
                    return Err(RegistryError::DigestMismatch {
                        digest: claimed,
                        actual,
                    });
                }
            }
        }
        Ok((bytes, content_type))
    }

    /// Fetches a small blob (the image config) into memory, verified.
    async fn fetch_small_blob(
        &self,
        source: &Source,
        desc: &Descriptor,
        creds: Option<&Credentials>,
    ) -> Result<Vec<u8>, RegistryError> {
        let digest = &desc.digest;
        if desc.size > CONFIG_MAX {
            return Err(invalid(
                &format!("{}/{}", source.registry, source.repository),
                format!(
                    "config {digest} declares {} bytes, more than the {CONFIG_MAX} accepted",
                    desc.size
                ),
            ));
        }
        let resp = self
            .send(&Get {
                source,
                url: source.url("blobs", digest),
                accept: None,
                what: digest,
                creds,
                timeout: Some(SMALL_REQUEST_TIMEOUT),
            })
            .await?;
        // Bounded by CONFIG_MAX above, so it fits in usize.
        let limit = usize::try_from(desc.size).unwrap_or(usize::MAX);
        let (bytes, complete) =
            read_limited(resp, limit)
                .await
                .map_err(|e| RegistryError::Truncated {
                    digest: digest.clone(),
                    expected: desc.size,
                    received: 0,
                    detail: error_chain(&e),
                })?;
        if !complete {
            return Err(RegistryError::Oversized {
                digest: digest.clone(),
                expected: desc.size,
            });
        }
        if (bytes.len() as u64) < desc.size {
            return Err(RegistryError::Truncated {
                digest: digest.clone(),
                expected: desc.size,
                received: bytes.len() as u64,
                detail: "the body ended early".to_string(),
            });
        }
        verify_digest(digest, &bytes)?;
        Ok(bytes)
    }

    /// Sends a GET, answering one auth challenge; any non-2xx answer becomes
    /// an error.
    async fn send(&self, q: &Get<'_>) -> Result<Response, RegistryError> {
        let key = AuthKey {
            endpoint: q.source.endpoint.clone(),
            repository: q.source.repository.clone(),
            credentials: fingerprint(q.creds),
        };
        let preset = match q.creds {
            Some(Credentials::RegistryToken(t)) => Some(format!("Bearer {t}")),
            _ => self.cached_auth(&key, q.creds),
        };
        let resp = self.attempt(q, preset.as_deref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check_status(resp, q).await;
        }
        let label = q.source.label();
        let refused = |what: String, body: String| RegistryError::Unauthorized {
            registry: label.clone(),
            message: format!("{what}: {body}"),
        };
        if matches!(q.creds, Some(Credentials::RegistryToken(_))) {
            let body = error_text(resp).await;
            return Err(refused("the registry token was rejected".into(), body));
        }
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let header = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(q.source, q.creds, bearer, &key).await?;
            format!("Bearer {token}")
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            match q.creds {
                Some(Credentials::Basic { username, password }) => {
                    self.store_auth(key.clone(), CachedAuth::Basic);
                    basic_header(username, password)
                }
                Some(_) => {
                    let body = error_text(resp).await;
                    return Err(refused(
                        "the registry wants a username and password, but the credentials are a token".into(),
                        body,
                    ));
                }
                None => {
                    let body = error_text(resp).await;
                    return Err(refused(
                        "the registry requires credentials and none were supplied".into(),
                        body,
                    ));
                }
            }
        } else {
            let body = error_text(resp).await;
            return Err(refused(
                "HTTP 401 without a usable WWW-Authenticate challenge".into(),
                body,
            ));
        };
        let resp = self.attempt(q, Some(&header)).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.forget_auth(&key);
            let body = error_text(resp).await;
            let what = if q.creds.is_none() {
                "anonymous access refused (no credentials were supplied; the repository may not exist or may need them)"
            } else {
                "the credentials were refused"
            };
            return Err(refused(what.into(), body));
        }
        check_status(resp, q).await
    }

    async fn attempt(&self, q: &Get<'_>, auth: Option<&str>) -> Result<Response, RegistryError> {
        let mut req = self.http(q.source.skip_tls_verify).get(&q.url);
        if let Some(accept) = q.accept {
            req = req.header(ACCEPT, accept);
        }
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        if let Some(t) = q.timeout {
            req = req.timeout(t);
        }
        req.send()
            .await
            .map_err(|e| transport_error(q.source, &q.source.endpoint, &e))
    }

    fn http(&self, skip_tls_verify: bool) -> &reqwest::Client {
        if skip_tls_verify {
            &self.inner.trusting
        } else {
            &self.inner.verifying
        }
    }

    /// Gets a bearer token from the challenge's realm and caches it.
    async fn fetch_token(
        &self,
        source: &Source,
        creds: Option<&Credentials>,
        challenge: &Challenge,
        key: &AuthKey,
    ) -> Result<String, RegistryError> {
        let label = source.label();
        let refused = |message: String| RegistryError::Unauthorized {
            registry: label.clone(),
            message,
        };
        let realm = challenge
            .param("realm")
            .ok_or_else(|| refused("Bearer challenge without a realm".into()))?;
        let realm_url = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| refused(format!("Bearer challenge with unusable realm {realm:?}")))?;
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", source.repository));
        let service = challenge.param("service");
        let http = self.http(source.skip_tls_verify);
        let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let send = |req: reqwest::RequestBuilder| async move {
            req.timeout(SMALL_REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| transport_error(source, realm, &e))
        };

        let resp = match creds {
            Some(Credentials::IdentityToken(token)) => {
                // OAuth2 refresh-token grant, per the distribution token spec.
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                    ("client_id", "rcri"),
                ]);
                let resp = send(http.post(realm_url.clone()).form(&form)).await?;
                if matches!(
                    resp.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) {
                    // Token services without OAuth2 POST take the identity
                    // token as the password of the special user "<token>".
                    let req = http.get(realm_url).query(&query);
                    send(req.basic_auth("<token>", Some(token))).await?
                } else {
                    resp
                }
            }
            Some(Credentials::Basic { username, password }) => {
                query.push(("account", username.as_str()));
                let req = http.get(realm_url).query(&query);
                send(req.basic_auth(username, Some(password))).await?
            }
            _ => send(http.get(realm_url).query(&query)).await?,
        };

        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = error_text(resp).await;
            let who = if creds.is_some() {
                "the credentials"
            } else {
                "anonymous access"
            };
            return Err(refused(format!(
                "token service {realm} refused {who} for {scope}: {body}"
            )));
        }
        if !status.is_success() {
            let body = error_text(resp).await;
            return Err(RegistryError::Status {
                reference: format!("a token for {scope}"),
                registry: realm.to_string(),
                status: status.as_u16(),
                message: body,
            });
        }
        let (body, _) = read_limited(resp, TOKEN_BODY_MAX)
            .await
            .map_err(|e| transport_error(source, realm, &e))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            refused(format!(
                "token service {realm} answered unreadable JSON: {e}"
            ))
        })?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| refused(format!("token service {realm} answered without a token")))?;
        let ttl = answer
            .expires_in
            .unwrap_or(TOKEN_MIN_TTL)
            .max(TOKEN_MIN_TTL)
            - TOKEN_MARGIN;
        self.store_auth(
            key.clone(),
            CachedAuth::Bearer {
                token: token.clone(),
                expires: Instant::now() + Duration::from_secs(ttl),
            },
        );
        tracing::debug!(endpoint = %source.endpoint, %scope, "got a registry token");
        Ok(token)
    }

    fn auth_cache(&self) -> std::sync::MutexGuard<'_, HashMap<AuthKey, CachedAuth>> {
        // The cache holds no invariant a panicking holder could break.
        self.inner.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached_auth(&self, key: &AuthKey, creds: Option<&Credentials>) -> Option<String> {
        match self.auth_cache().get(key)? {
            CachedAuth::Bearer { token, expires } if *expires > Instant::now() => {
                Some(format!("Bearer {token}"))
            }
            CachedAuth::Basic => match creds {
                Some(Credentials::Basic { username, password }) => {
                    Some(basic_header(username, password))
                }
                _ => None,
            },
            CachedAuth::Bearer { .. } => None,
        }
    }

    fn store_auth(&self, key: AuthKey, auth: CachedAuth) {
        let now = Instant::now();
        let mut cache = self.auth_cache();
        // Dropping expired tokens here keeps the cache bounded.
        cache.retain(|_, v| !matches!(v, CachedAuth::Bearer { expires, .. } if *expires <= now));
        cache.insert(key, auth);
    }

    fn forget_auth(&self, key: &AuthKey) {
        self.auth_cache().remove(key);
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The distribution spec's error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
    fs_layers: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<Platform>,
}

enum Parsed {
    Manifest(ImageManifest),
    Index(Vec<IndexEntry>),
}

fn invalid(reference: &str, reason: String) -> RegistryError {
    RegistryError::InvalidManifest {
        reference: reference.to_string(),
        reason,
    }
}

/// Parses a manifest or index, telling them apart by media type (from the
/// JSON, else the Content-Type header, else the shape).
fn classify(bytes: &[u8], content_type: &str, reference: &str) -> Result<Parsed, RegistryError> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(reference, format!("unreadable manifest JSON: {e}")))?;
    let header_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let media_type = raw
        .media_type
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or(header_type);
    if MEDIA_TYPES_DOCKER_SCHEMA1.contains(&media_type.as_str())
        || raw.schema_version == Some(1)
        || raw.fs_layers.is_some()
    {
        return Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type,
            hint: "Docker image manifest schema 1 is deprecated and not supported; \
                   push the image again with a current Docker or OCI tool"
                .to_string(),
        });
    }
    let is_index = match media_type.as_str() {
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => true,
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => false,
        // Older OCI content may omit mediaType; go by shape.
        "" | "application/json" | "application/octet-stream" => raw.manifests.is_some(),
        other => {
            return Err(RegistryError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: other.to_string(),
                hint: "expected an OCI or Docker schema 2 image manifest or index".to_string(),
            });
        }
    };
    if is_index {
        return Ok(Parsed::Index(raw.manifests.unwrap_or_default()));
    }
    let config = raw
        .config
        .ok_or_else(|| invalid(reference, "manifest has no config".to_string()))?;
    let media_type = if media_type.starts_with("application/vnd.") {
        media_type
    } else {
        MEDIA_TYPE_OCI_MANIFEST.to_string()
    };
    Ok(Parsed::Manifest(ImageManifest {
        schema_version: raw.schema_version.unwrap_or(2),
        media_type,
        config,
        layers: raw.layers.unwrap_or_default(),
        annotations: raw.annotations,
    }))
}

/// Refuses digests that could not be fetched safely (they end up in URLs
/// and file names) and configs that are not container image configs.
fn check_manifest(m: &ImageManifest, reference: &str) -> Result<(), RegistryError> {
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if !is_valid_digest(&d.digest) {
            return Err(invalid(reference, format!("invalid digest {:?}", d.digest)));
        }
    }
    match m.config.media_type.as_str() {
        "" | MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG => Ok(()),
        other => Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: other.to_string(),
            hint: "the config is not a container image config; is this an OCI artifact rather than an image?"
                .to_string(),
        }),
    }
}

fn is_manifest_type(t: &str) -> bool {
    matches!(t, "" | MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST)
}

/// The best-fitting image manifest of an index; the first of equals wins.
fn select_platform<'a>(entries: &'a [IndexEntry], want: &Platform) -> Option<&'a IndexEntry> {
    let mut best: Option<(u8, &IndexEntry)> = None;
    for entry in entries.iter().filter(|e| is_manifest_type(&e.media_type)) {
        let Some(score) = entry.platform.as_ref().and_then(|p| want.fit(p)) else {
            continue;
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, entry));
        }
    }
    best.map(|(_, e)| e)
}

/// Picks the error to report once every endpoint failed: the registry's own
/// answer if it gave one, else an `Unreachable` listing all endpoints.
fn combine_failures(r: &Reference, mut failures: Vec<(Source, RegistryError)>) -> RegistryError {
    let final_pos = failures
        .iter()
        .rposition(|(s, e)| !s.mirror && !e.is_unreachable());
    let Some(pos) = final_pos else {
        let endpoints = failures.iter().map(|(s, _)| s.endpoint.clone()).collect();
        let source_text = failures
            .iter()
            .map(|(s, e)| format!("{}: {}", s.endpoint, short_error(e)))
            .collect::<Vec<_>>()
            .join("; ");
        return RegistryError::Unreachable {
            registry: r.registry.clone(),
            endpoints,
            source_text,
        };
    };
    let (_, chosen) = failures.remove(pos);
    let others: Vec<String> = failures
        .iter()
        .map(|(s, e)| format!("{}: {}", s.endpoint, short_error(e)))
        .collect();
    if others.is_empty() {
        chosen
    } else {
        chosen.with_note(&format!("also tried {}", others.join("; ")))
    }
}

fn short_error(e: &RegistryError) -> String {
    let text = match e {
        RegistryError::Unreachable { source_text, .. } => source_text.clone(),
        other => other.to_string(),
    };
    truncate_chars(&text, 300)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

async fn check_status(resp: Response, q: &Get<'_>) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let registry = q.source.label();
    let message = error_text(resp).await;
    Err(match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            reference: q.what.to_string(),
            registry,
            message,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            RegistryError::Unauthorized { registry, message }
        }
        _ => RegistryError::Status {
            reference: q.what.to_string(),
            registry,
            status: status.as_u16(),
            message,
        },
    })
}

/// "HTTP 404 Not Found: MANIFEST_UNKNOWN: manifest unknown", from the
/// distribution error JSON if the body is one, else from its text.
async fn error_text(resp: Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, ERROR_BODY_MAX)
        .await
        .map(|(b, _)| b)
        .unwrap_or_default();
    let detail = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (true, _) => e.message.clone(),
                (false, true) => e.code.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => truncate_chars(String::from_utf8_lossy(&body).trim(), 300),
    };
    if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    }
}

/// Reads at most `max` bytes of a body; the flag is false if there was more.
async fn read_limited(mut resp: Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max.saturating_sub(out.len());
        if chunk.len() > room {
            out.extend_from_slice(chunk.get(..room).unwrap_or_default());
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// A request that got no HTTP answer. A request that could not even be built
/// can only be due to credentials unfit for a header.
fn transport_error(source: &Source, endpoint: &str, e: &reqwest::Error) -> RegistryError {
    if e.is_builder() {
        return RegistryError::Unauthorized {
            registry: source.label(),
            message: format!("cannot send the credentials: {}", error_chain(e)),
        };
    }
    RegistryError::Unreachable {
        registry: source.label(),
        endpoints: vec![endpoint.to_string()],
        source_text: error_chain(e),
    }
}

/// An error with its causes: reqwest's own text hides the useful part
/// ("connection refused", the TLS failure).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

fn io_error(context: String, source: std::io::Error) -> RegistryError {
    RegistryError::Io { context, source }
}

fn basic_header(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

fn fingerprint(creds: Option<&Credentials>) -> String {
    let mut h = Sha256::new();
    match creds {
        None => return String::new(),
        Some(Credentials::Basic { username, password }) => {
            h.update(b"basic\0");
            h.update(username.as_bytes());
            h.update(b"\0");
            h.update(password.as_bytes());
        }
        Some(Credentials::IdentityToken(t)) => {
            h.update(b"identity\0");
            h.update(t.as_bytes());
        }
        Some(Credentials::RegistryToken(t)) => {
            h.update(b"registry\0");
            h.update(t.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// Parses a mirror URL into its base (scheme, host, path prefix, no trailing
/// slash) and whether its host is loopback.
fn normalize_mirror(mirror: &str) -> Result<(String, bool), String> {
    let text = mirror.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    };
    let url =
        Url::parse(&with_scheme).map_err(|e| format!("invalid mirror URL {mirror:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("mirror URL {mirror:?} must use http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "mirror URL {mirror:?} must not carry a query, fragment or user"
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("mirror URL {mirror:?} has no host"))?;
    let loopback = is_loopback(host);
    Ok((url.as_str().trim_end_matches('/').to_string(), loopback))
}

/// localhost, 127.0.0.0/8 or ::1, with or without a port.
fn is_loopback(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None if host_port.matches(':').count() > 1 => host_port,
        None => host_port.split(':').next().unwrap_or(host_port),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn verify_digest(expected: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let mut h = Hasher::for_digest(expected).ok_or_else(|| RegistryError::DigestMismatch {
        digest: expected.to_string(),
        actual: "(not a valid digest)".to_string(),
    })?;
    h.update(bytes);
    let actual = h.digest();
    if actual == expected {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            digest: expected.to_string(),
            actual,
        })
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher for the algorithm of `digest`; `None` unless it is a valid
    /// sha256 or sha512 digest.
    fn for_digest(digest: &str) -> Option<Self> {
        if !is_valid_digest(digest) {
            return None;
        }
        Some(if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn digest(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// Removes a partly written file unless disarmed (by taking the path).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the caller already gets the original error.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    /// Lowercased (`bearer`, `basic`).
    scheme: String,
    /// Parameter names lowercased, values unquoted.
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `WWW-Authenticate` (RFC 9110 §11.6.1): challenges of a scheme and
/// comma-separated `name=value` or `name="quoted, \"value\""` parameters; a
/// header may hold several challenges.
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    while i < chars.len() {
        while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
            i += 1;
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|c| !c.is_whitespace() && *c != ',' && *c != '=')
        {
            i += 1;
        }
        let token: String = chars.get(start..i).unwrap_or_default().iter().collect();
        skip_ws(&mut i);
        if chars.get(i) == Some(&'=') && !token.is_empty() {
            i += 1;
            skip_ws(&mut i);
            let mut value = String::new();
            if chars.get(i) == Some(&'"') {
                i += 1;
                while let Some(&c) = chars.get(i) {
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(&escaped) = chars.get(i) {
                                value.push(escaped);
                                i += 1;
                            }
                        }
                        _ => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.get(i).filter(|c| !c.is_whitespace() && **c != ',') {
                    value.push(c);
                    i += 1;
                }
            }
            if let Some(last) = out.last_mut() {
                last.params.push((token.to_ascii_lowercase(), value));
            }
        } else if !token.is_empty() {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        } else if i < chars.len() {
            // A stray '=': step over it so the loop always advances.
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    // ---- a tiny scripted HTTP/1.1 server -------------------------------

    struct Req {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Content-Length to announce; `None` sends none (body ends at close).
        length: Option<usize>,
    }

    impl Resp {
        fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
            let body = body.into();
            Resp {
                status,
                headers: Vec::new(),
                length: Some(body.len()),
                body,
            }
        }
        fn header(mut self, k: &str, v: &str) -> Self {
            self.headers.push((k.to_string(), v.to_string()));
            self
        }
        fn error(status: u16, code: &str) -> Self {
            let body = serde_json::json!({"errors": [{"code": code, "message": code.to_lowercase().replace('_', " ")}]});
            Resp::new(status, body.to_string()).header("Content-Type", "application/json")
        }
    }

    type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

    struct Server {
        addr: String,
        hits: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }
        fn hits(&self, prefix: &str) -> usize {
            let hits = self.hits.lock().unwrap();
            hits.iter().filter(|h| h.starts_with(prefix)).count()
        }
    }

    async fn serve(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let log = hits.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move { answer(conn, &*handler, &log).await });
            }
        });
        Server { addr, hits }
    }

    async fn answer(
        mut conn: TcpStream,
        handler: &Handler,
        log: &Mutex<Vec<String>>,
    ) -> Option<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
            // A TLS ClientHello: hang up, as a plain-HTTP registry would.
            if buf[0] == 0x16 {
                return None;
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut req = Req {
            method,
            path,
            headers,
            body: String::new(),
        };
        let len: usize = req
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = conn.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            body.extend_from_slice(&chunk[..n]);
        }
        req.body = String::from_utf8_lossy(&body).into_owned();
        log.lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.path));
        let resp = handler(&req);
        let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(l) = resp.length {
            out.push_str(&format!("Content-Length: {l}\r\n"));
        }
        out.push_str("\r\n");
        conn.write_all(out.as_bytes()).await.ok()?;
        conn.write_all(&resp.body).await.ok()?;
        conn.shutdown().await.ok()
    }

    /// A port nothing listens on.
    async fn dead_port() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    }

    // ---- registry content ----------------------------------------------

    /// Path → (Content-Type, bytes).
    type Content = HashMap<String, (String, Vec<u8>)>;

    struct Image {
        manifest: Vec<u8>,
        digest: String,
        config: Vec<u8>,
        layer: Vec<u8>,
    }

    fn sha(b: &[u8]) -> String {
        sha256_digest(b)
    }

    fn image(arch: &str, manifest_type: &str, config_type: &str) -> Image {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        )
        .into_bytes();
        let layer = format!("layer for {arch}").into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        Image {
            digest: sha(&manifest),
            manifest,
            config,
            layer,
        }
    }

    fn index(index_type: &str, entries: &[(&Image, &str, Option<&str>)]) -> Vec<u8> {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(img, arch, variant)| {
                let mt: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
                serde_json::json!({
                    "mediaType": mt["mediaType"], "digest": img.digest, "size": img.manifest.len(),
                    "platform": {"os": "linux", "architecture": arch, "variant": variant},
                })
            })
            .collect();
        serde_json::json!({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests})
            .to_string()
            .into_bytes()
    }

    fn put(c: &mut Content, path: String, ct: &str, bytes: &[u8]) {
        c.insert(path, (ct.to_string(), bytes.to_vec()));
    }

    /// Puts an image's manifest (by digest) and blobs under `prefix`
    /// (`/v2/test/app`).
    fn put_image(c: &mut Content, prefix: &str, img: &Image) {
        let mt: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        let mt = mt["mediaType"].as_str().unwrap();
        put(
            c,
            format!("{prefix}/manifests/{}", img.digest),
            mt,
            &img.manifest,
        );
        put(
            c,
            format!("{prefix}/blobs/{}", sha(&img.config)),
            "application/octet-stream",
            &img.config,
        );
        put(
            c,
            format!("{prefix}/blobs/{}", sha(&img.layer)),
            "application/octet-stream",
            &img.layer,
        );
    }

    fn registry(content: Content) -> impl Fn(&Req) -> Resp + Send + Sync + 'static {
        move |req| match content.get(&req.path) {
            Some((ct, bytes)) => Resp::new(200, bytes.clone()).header("Content-Type", ct),
            None if req.path.contains("/blobs/") => Resp::error(404, "BLOB_UNKNOWN"),
            None => Resp::error(404, "MANIFEST_UNKNOWN"),
        }
    }

    /// A registry holding one single-platform image tagged `latest`.
    fn simple_content(prefix: &str) -> (Content, Image) {
        let img = image("amd64", MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_CONFIG);
        let mut c = Content::new();
        put_image(&mut c, prefix, &img);
        put(
            &mut c,
            format!("{prefix}/manifests/latest"),
            MEDIA_TYPE_OCI_MANIFEST,
            &img.manifest,
        );
        (c, img)
    }

    fn client(hosts: &[(&str, Vec<String>)]) -> RegistryClient {
        let hosts = hosts
            .iter()
            .map(|(name, mirrors)| {
                let host = RegistryHost {
                    mirrors: mirrors.clone(),
                    insecure: false,
                };
                (name.to_string(), host)
            })
            .collect();
        RegistryClient::new(hosts).unwrap()
    }

    fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    fn refer(s: &str) -> Reference {
        reference::parse(s).unwrap()
    }

    fn basic(user: &str, pass: &str) -> Credentials {
        Credentials::Basic {
            username: user.into(),
            password: pass.into(),
        }
    }

    // ---- tests ---------------------------------------------------------

    #[tokio::test]
    async fn oci_index_selects_the_platform_and_blobs_stream_to_disk() {
        let amd = image("amd64", MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_CONFIG);
        let arm = image("arm64", MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_CONFIG);
        let idx = index(
            MEDIA_TYPE_OCI_INDEX,
            &[(&arm, "arm64", Some("v8")), (&amd, "amd64", None)],
        );
        let mut c = Content::new();
        put_image(&mut c, "/v2/test/app", &amd);
        put_image(&mut c, "/v2/test/app", &arm);
        put(
            &mut c,
            "/v2/test/app/manifests/1.0".into(),
            MEDIA_TYPE_OCI_INDEX,
            &idx,
        );
        let srv = serve(registry(c)).await;
        let reg = client(&[]);
        let r = refer(&format!("{}/test/app:1.0", srv.addr));

        let got = reg.resolve_platform(&r, None, &amd64()).await.unwrap();
        assert_eq!(got.target_digest, sha(&idx));
        assert_eq!(got.manifest_digest, amd.digest);
        assert_eq!(got.manifest_bytes, amd.manifest);
        assert_eq!(got.config_bytes, amd.config);
        assert_eq!(got.manifest.layers.len(), 1);
        // Loopback: https was tried first, then plain http answered.
        assert_eq!(got.source.endpoint, srv.url());

        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        let got_arm = reg.resolve_platform(&r, None, &arm64).await.unwrap();
        assert_eq!(got_arm.manifest_digest, arm.digest);

        let s390x = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        match reg.resolve_platform(&r, None, &s390x).await {
            Err(RegistryError::NoMatchingPlatform { available, .. }) => {
                assert_eq!(available, ["linux/arm64/v8", "linux/amd64"]);
            }
            other => panic!("unexpected {other:?}"),
        }

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        let layer = &got.manifest.layers[0];
        let n = reg
            .fetch_blob(&got.source, layer, &dest, None)
            .await
            .unwrap();
        assert_eq!(n, amd.layer.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), amd.layer);
        // An existing destination is an error and is left alone.
        let err = reg
            .fetch_blob(&got.source, layer, &dest, None)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Io { .. }), "{err}");
        assert!(dest.exists());
    }

    #[tokio::test]
    async fn docker_manifest_list_and_pull_by_digest() {
        let amd = image(
            "amd64",
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_DOCKER_CONFIG,
        );
        let arm = image("arm", MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_CONFIG);
        let list = index(
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            &[(&arm, "arm", Some("v7")), (&amd, "amd64", None)],
        );
        let list_digest = sha(&list);
        let mut c = Content::new();
        put_image(&mut c, "/v2/test/app", &amd);
        put_image(&mut c, "/v2/test/app", &arm);
        put(
            &mut c,
            "/v2/test/app/manifests/latest".into(),
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            &list,
        );
        put(
            &mut c,
            format!("/v2/test/app/manifests/{list_digest}"),
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            &list,
        );
        let srv = serve(registry(c)).await;
        let reg = client(&[]);

        let got = reg
            .resolve_platform(&refer(&format!("{}/test/app", srv.addr)), None, &amd64())
            .await
            .unwrap();
        assert_eq!(got.manifest.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(got.manifest_digest, amd.digest);
        assert_eq!(got.target_digest, list_digest);

        let pinned = refer(&format!("{}/test/app@{list_digest}", srv.addr));
        let got = reg.resolve_platform(&pinned, None, &amd64()).await.unwrap();
        assert_eq!(got.target_digest, list_digest);
        assert_eq!(got.config_bytes, amd.config);
    }

    #[tokio::test]
    async fn schema1_is_refused_and_pinned_digests_are_verified() {
        let (mut c, img) = simple_content("/v2/test/app");
        let v1 = br#"{"schemaVersion":1,"name":"test/app","tag":"old","fsLayers":[]}"#;
        put(
            &mut c,
            "/v2/test/app/manifests/old".into(),
            MEDIA_TYPES_DOCKER_SCHEMA1[1],
            v1,
        );
        // A registry serving other bytes than the pinned digest names.
        let wrong = format!("sha256:{}", "ab".repeat(32));
        put(
            &mut c,
            format!("/v2/test/app/manifests/{wrong}"),
            MEDIA_TYPE_OCI_MANIFEST,
            &img.manifest,
        );
        let srv = serve(registry(c)).await;
        let reg = client(&[]);

        let err = reg
            .resolve(&refer(&format!("{}/test/app:old", srv.addr)), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::UnsupportedMediaType { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("schema 1"), "{err}");

        let err = reg
            .resolve(&refer(&format!("{}/test/app@{wrong}", srv.addr)), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RegistryError::DigestMismatch { digest, .. } if *digest == wrong),
            "{err}"
        );
    }

    /// A registry that wants `Bearer <token>`, and a token service.
    async fn bearer_setup(
        token_check: impl Fn(&Req) -> bool + Send + Sync + 'static,
    ) -> (Server, Server, Image) {
        let auth = serve(move |req| {
            if token_check(req) {
                Resp::new(200, r#"{"access_token":"tok-1","expires_in":300}"#)
            } else {
                Resp::error(401, "UNAUTHORIZED")
            }
        })
        .await;
        let challenge = format!(
            r#"Bearer realm="{}/token",service="svc",scope="repository:test/app:pull""#,
            auth.url()
        );
        let (c, img) = simple_content("/v2/test/app");
        let inner = registry(c);
        let reg = serve(move |req| {
            if req.header("authorization") == Some("Bearer tok-1") {
                inner(req)
            } else {
                Resp::error(401, "UNAUTHORIZED").header("WWW-Authenticate", &challenge)
            }
        })
        .await;
        (auth, reg, img)
    }

    #[tokio::test]
    async fn bearer_challenge_fetches_and_caches_a_token() {
        let want = basic_header("alice", "s3cret");
        let (auth, srv, img) = bearer_setup(move |req| {
            req.method == "GET"
                && req.path.contains("scope=repository%3Atest%2Fapp%3Apull")
                && req.path.contains("service=svc")
                && req.header("authorization") == Some(want.as_str())
        })
        .await;
        let reg = client(&[]);
        let r = refer(&format!("{}/test/app", srv.addr));
        let creds = basic("alice", "s3cret");

        let got = reg
            .resolve_platform(&r, Some(&creds), &amd64())
            .await
            .unwrap();
        reg.resolve_platform(&r, Some(&creds), &amd64())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        reg.fetch_blob(&got.source, &got.manifest.layers[0], &dest, Some(&creds))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), img.layer);
        assert_eq!(auth.hits("GET /token"), 1, "the token is cached");

        // Other credentials do not reuse it, and are refused by the realm.
        let err = reg
            .resolve_platform(&r, Some(&basic("alice", "wrong")), &amd64())
            .await
            .unwrap_err();
        assert!(err.is_unauthorized(), "{err}");
        assert!(err.to_string().contains("token service"), "{err}");
        assert_eq!(auth.hits("GET /token"), 2);
    }

    #[tokio::test]
    async fn identity_token_uses_the_refresh_token_grant() {
        let (auth, srv, _) = bearer_setup(|req| {
            req.method == "POST"
                && req.body.contains("grant_type=refresh_token")
                && req.body.contains("refresh_token=idt-9")
                && req.body.contains("service=svc")
        })
        .await;
        let reg = client(&[]);
        let r = refer(&format!("{}/test/app", srv.addr));
        let creds = Credentials::IdentityToken("idt-9".into());
        reg.resolve_platform(&r, Some(&creds), &amd64())
            .await
            .unwrap();
        assert_eq!(auth.hits("POST /token"), 1);

        // A registry token is sent as is.
        let direct = Credentials::RegistryToken("tok-1".into());
        reg.resolve_platform(&r, Some(&direct), &amd64())
            .await
            .unwrap();
        assert_eq!(auth.hits("POST /token") + auth.hits("GET /token"), 1);
    }

    #[tokio::test]
    async fn basic_challenge_and_missing_credentials() {
        let (c, _) = simple_content("/v2/test/app");
        let inner = registry(c);
        let want = basic_header("bob", "pw");
        let srv = serve(move |req| {
            if req.header("authorization") == Some(want.as_str()) {
                inner(req)
            } else {
                Resp::error(401, "UNAUTHORIZED")
                    .header("WWW-Authenticate", r#"Basic realm="Registry Realm""#)
            }
        })
        .await;
        let reg = client(&[]);
        let r = refer(&format!("{}/test/app", srv.addr));
        reg.resolve_platform(&r, Some(&basic("bob", "pw")), &amd64())
            .await
            .unwrap();

        let err = reg.resolve_platform(&r, None, &amd64()).await.unwrap_err();
        match &err {
            RegistryError::Unauthorized { registry, message } => {
                assert_eq!(*registry, srv.addr);
                assert!(message.contains("none were supplied"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = reg
            .resolve_platform(&r, Some(&basic("bob", "nope")), &amd64())
            .await
            .unwrap_err();
        assert!(err.is_unauthorized(), "{err}");
    }

    #[tokio::test]
    async fn mirrors_are_tried_in_order_then_the_registry() {
        let (c, img) = simple_content("/prefix/v2/test/app");
        let mirror = serve(registry(c)).await;
        let empty_mirror = serve(registry(Content::new())).await;
        let (c, _) = simple_content("/v2/test/app");
        let srv = serve(registry(c)).await;
        let dead = format!("http://{}", dead_port().await);
        let r = refer(&format!("{}/test/app", srv.addr));

        // Dead mirror, then a working one with a path prefix.
        let reg = client(&[(
            &srv.addr,
            vec![dead.clone(), format!("{}/prefix/", mirror.url())],
        )]);
        let got = reg.resolve_platform(&r, None, &amd64()).await.unwrap();
        assert_eq!(got.source.endpoint, format!("{}/prefix", mirror.url()));
        assert!(got.source.mirror);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        reg.fetch_blob(&got.source, &got.manifest.layers[0], &dest, None)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), img.layer);
        assert_eq!(srv.hits(""), 0);

        // Dead mirror, a mirror without the image, then the registry.
        let reg = client(&[(&srv.addr, vec![dead.clone(), empty_mirror.url()])]);
        let got = reg.resolve_platform(&r, None, &amd64()).await.unwrap();
        assert_eq!(got.source.endpoint, srv.url());
        assert!(!got.source.mirror);

        // Not found anywhere: the registry's own answer, naming the others.
        let missing = refer(&format!("{}/test/app:nope", srv.addr));
        let err = reg
            .resolve_platform(&missing, None, &amd64())
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let text = err.to_string();
        assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
        assert!(
            text.contains(&dead) && text.contains(&empty_mirror.url()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unreachable_names_every_endpoint() {
        let addr = dead_port().await;
        let reg = client(&[]);
        let err = reg
            .resolve(&refer(&format!("{addr}/test/app")), None)
            .await
            .unwrap_err();
        match &err {
            RegistryError::Unreachable {
                registry,
                endpoints,
                ..
            } => {
                assert_eq!(*registry, addr);
                assert_eq!(
                    *endpoints,
                    [format!("https://{addr}"), format!("http://{addr}")]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_unavailable());
    }

    #[tokio::test]
    async fn bad_blobs_leave_no_file() {
        let good = b"the real content".to_vec();
        let forged = b"forged content!!".to_vec();
        // The first path segment (the endpoint's prefix) picks the answer.
        let srv = serve(move |req| match req.path.split('/').nth(1).unwrap_or("") {
            "mismatch" => Resp::new(200, forged.clone()),
            "cut" => Resp {
                length: Some(16),
                ..Resp::new(200, good[..5].to_vec())
            },
            "short" => Resp {
                length: None,
                ..Resp::new(200, good[..5].to_vec())
            },
            "long" => Resp {
                length: None,
                ..Resp::new(200, [good.as_slice(), b"+"].concat())
            },
            _ => Resp::error(404, "BLOB_UNKNOWN"),
        })
        .await;
        let reg = client(&[]);
        let source = Source {
            registry: srv.addr.clone(),
            repository: "test/app".into(),
            endpoint: srv.url(),
            mirror: false,
            skip_tls_verify: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let desc = Descriptor {
            media_type: String::new(),
            digest: sha(b"the real content"),
            size: 16,
            annotations: BTreeMap::new(),
        };
        type Check = fn(&RegistryError) -> bool;
        let cases: [(&str, Check); 5] = [
            ("mismatch", |e| {
                matches!(e, RegistryError::DigestMismatch { .. })
            }),
            ("cut", |e| {
                matches!(e, RegistryError::Truncated { received: 5, .. })
            }),
            ("short", |e| {
                matches!(e, RegistryError::Truncated { received: 5, .. })
            }),
            ("long", |e| matches!(e, RegistryError::Oversized { .. })),
            ("missing", |e| {
                e.is_not_found() && e.to_string().contains("BLOB_UNKNOWN")
            }),
        ];
        for (case, check) in cases {
            let src = Source {
                endpoint: format!("{}/{case}", srv.url()),
                ..source.clone()
            };
            let dest = dir.path().join(case);
            let err = reg.fetch_blob(&src, &desc, &dest, None).await.unwrap_err();
            assert!(check(&err), "{case}: {err}");
            assert!(!dest.exists(), "{case}: partial file left behind");
        }
    }

    #[test]
    fn www_authenticate_parsing() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push", error="insufficient_scope""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));

        let c = parse_challenges(
            r#"Basic realm="say \"hi\", friend", Bearer realm=https://x/t , service=s"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("realm"), Some(r#"say "hi", friend"#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://x/t"));
        assert_eq!(c[1].param("service"), Some("s"));
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges("= , =").is_empty());
    }

    #[test]
    fn endpoints_and_loopback() {
        assert!(
            is_loopback("localhost:5000") && is_loopback("127.0.0.2") && is_loopback("[::1]:5000")
        );
        assert!(!is_loopback("registry.k8s.io") && !is_loopback("10.0.0.1:5000"));
        let hosts = BTreeMap::from([(
            "docker.io".to_string(),
            RegistryHost {
                mirrors: vec!["mirror.example/hub/".into()],
                insecure: false,
            },
        )]);
        let reg = RegistryClient::new(hosts).unwrap();
        let eps: Vec<String> = reg
            .endpoints(&refer("busybox"))
            .into_iter()
            .map(|s| s.endpoint)
            .collect();
        assert_eq!(
            eps,
            ["https://mirror.example/hub", "https://registry-1.docker.io"]
        );
        let bad = BTreeMap::from([(
            "x.io".to_string(),
            RegistryHost {
                mirrors: vec!["ftp://m".into()],
                insecure: false,
            },
        )]);
        assert!(matches!(
            RegistryClient::new(bad),
            Err(RegistryError::Config(_))
        ));
        assert_eq!(Platform::host().os, "linux");
    }
}
