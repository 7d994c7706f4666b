//! Image tests against a real registry, without the internet:
//!
//! * [`TestRegistry`]: Debian's `docker-registry` (distribution v2) on a free
//!   loopback port, storing into a temporary directory, optionally behind
//!   htpasswd basic auth; blobs can be corrupted on disk afterwards.
//! * [`Layer`] and [`ImageBuilder`]: OCI and Docker schema 2 images built in
//!   memory, including hostile tar entries no well-behaved tool writes.
//! * [`RegistryClient`]: pushes blobs, manifests and indexes over the
//!   registry HTTP API.
//! * [`TokenAuthProxy`]: the Docker bearer-token flow in front of a registry.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// Media types the harness writes.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Every tar entry gets this mtime, so identical layers get identical digests.
const MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `future` to completion on a private runtime in another thread: lets
/// a plain `#[test]` (or a blocking section) use the async push API.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(future)
            })
            .join()
            .unwrap()
    })
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The registry process
// ---------------------------------------------------------------------------

/// A running `docker-registry serve` with filesystem storage in a temporary
/// directory; killed when dropped.
pub struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: String,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// An anonymous registry: anyone may push and pull.
    pub fn start() -> TestRegistry {
        TestRegistry::launch(None)
    }

    /// A registry behind htpasswd basic auth (bcrypt): every request,
    /// including `GET /v2/`, needs these credentials.
    pub fn start_with_basic_auth(user: &str, password: &str) -> TestRegistry {
        TestRegistry::launch(Some((user.to_string(), password.to_string())))
    }

    fn launch(credentials: Option<(String, String)>) -> TestRegistry {
        let binary = super::require_tool("docker-registry");
        let mut dir = tempfile::Builder::new()
            .prefix("rcri-registry-")
            .tempdir()
            .unwrap();
        let auth = match &credentials {
            None => String::new(),
            Some((user, password)) => {
                // Go's bcrypt accepts any `$2?$` prefix; `$2y$` is what
                // `htpasswd -B` writes. Cost 4 keeps each request cheap.
                let hash = bcrypt::hash_with_result(password, 4)
                    .unwrap()
                    .format_for_version(bcrypt::Version::TwoY);
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: rcri-test\n    path: {}\n",
                    path.display()
                )
            }
        };
        let log_path = dir.path().join("registry.log");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  \
                 delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n  secret: rcri-test-secret\n\
                 {auth}",
                storage = dir.path().join("storage").display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                // REGISTRY_* variables would override the configuration.
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut registry = TestRegistry {
                child: Some(child),
                dir,
                addr,
                credentials: credentials.clone(),
            };
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(log) if log.contains("address already in use") => {
                    last_log = log;
                    dir = registry.into_dir();
                }
                Err(log) => panic!(
                    "docker-registry did not start; its log ({}):\n{log}",
                    log_path.display()
                ),
            }
        }
        panic!("docker-registry found no free port; last log:\n{last_log}");
    }

    /// Polls `GET /v2/` until any HTTP answer comes back; on failure returns
    /// the registry's log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut stream) = TcpStream::connect(&self.addr) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut answer = [0u8; 12];
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && answer.starts_with(b"HTTP/1.")
                {
                    return Ok(());
                }
            }
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited with {status}\n{}", self.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on {} within {START_TIMEOUT:?}\n{}",
                    self.addr,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::Builder::new()
            .prefix("rcri-registry-")
            .tempdir()
            .unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`, the form image references take.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's filesystem storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What the registry has logged so far (one access-log line a request).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where distribution keeps the bytes of `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn read_blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Flips every bit of a few bytes in the middle of the stored blob: same
    /// size, different content, so only a digest check notices.
    pub fn tamper_blob(&self, digest: &str) {
        let mut data = self.read_blob(digest);
        assert!(!data.is_empty(), "cannot tamper with empty blob {digest}");
        let mid = data.len() / 2;
        let end = (mid + 4).min(data.len());
        for byte in &mut data[mid..end] {
            *byte ^= 0xff;
        }
        std::fs::write(self.blob_path(digest), data).unwrap();
    }

    /// Cuts the stored blob to half its size; the registry then serves the
    /// shorter content (it stats the file for Content-Length).
    pub fn truncate_blob(&self, digest: &str) {
        let data = self.read_blob(digest);
        std::fs::write(self.blob_path(digest), &data[..data.len() / 2]).unwrap();
    }

    /// Replaces the stored bytes of `digest` with anything at all.
    pub fn overwrite_blob(&self, digest: &str, data: &[u8]) {
        self.read_blob(digest);
        std::fs::write(self.blob_path(digest), data).unwrap();
    }

    /// A client using this registry's credentials, if any.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.addr, self.credentials())
    }

    /// A client without credentials.
    pub fn anonymous_client(&self) -> RegistryClient {
        RegistryClient::new(&self.addr, None)
    }

    /// Pushes `image` as `<repo>:<tag>` (tag may be a digest); panics on failure.
    pub async fn push(&self, repo: &str, tag: &str, image: &Image) -> Pushed {
        self.client().push(repo, tag, image).await
    }

    /// Pushes each image by digest, then an OCI index of them as `<repo>:<tag>`.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(Platform, &Image)],
    ) -> PushedIndex {
        self.client().push_index(repo, tag, images).await
    }

    /// Like [`TestRegistry::push_index`] with a Docker manifest list.
    pub async fn push_manifest_list(
        &self,
        repo: &str,
        tag: &str,
        images: &[(Platform, &Image)],
    ) -> PushedIndex {
        self.client().push_manifest_list(repo, tag, images).await
    }

    /// Uploads one blob (skipped when the repository has it); its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.client().push_blob(repo, data).await
    }

    /// Puts raw manifest bytes under `reference`; the manifest's digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        self.client()
            .push_manifest(repo, reference, media_type, body)
            .await
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Pushing over the registry API
// ---------------------------------------------------------------------------

/// What a push put into the registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `ADDR/repo:tag`, or `ADDR/repo@digest` when pushed by digest.
    pub reference: String,
    /// `ADDR/repo@<manifest digest>`.
    pub digest_reference: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub config_size: u64,
    /// (compressed digest, diff_id, compressed size), base layer first.
    pub layers: Vec<(String, String, u64)>,
    /// manifest + config + compressed layers, in bytes.
    pub total_size: u64,
}

/// An index (or Docker manifest list) and the images it names.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub reference: String,
    pub digest_reference: String,
    pub manifest_digest: String,
    pub media_type: String,
    pub children: Vec<Pushed>,
}

/// A failed registry request: what was attempted and the answer.
#[derive(Debug)]
pub struct PushError {
    pub what: String,
    /// None when no HTTP answer came back.
    pub status: Option<u16>,
    pub body: String,
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "{}: HTTP {status}: {}", self.what, self.body),
            None => write!(f, "{}: {}", self.what, self.body),
        }
    }
}

/// Talks the registry HTTP API (plain http) to `addr`, with basic-auth
/// credentials or none.
#[derive(Clone)]
pub struct RegistryClient {
    addr: String,
    credentials: Option<(String, String)>,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(addr: &str, credentials: Option<(&str, &str)>) -> RegistryClient {
        RegistryClient {
            addr: addr.to_string(),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            http: http_client(),
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.credentials {
            Some((user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    /// `GET http://ADDR<path>` with the client's credentials and an optional
    /// Accept header, for tests that read the registry back.
    pub async fn get(&self, path: &str, accept: Option<&str>) -> reqwest::Response {
        let mut builder =
            self.request(reqwest::Method::GET, &format!("http://{}{path}", self.addr));
        if let Some(accept) = accept {
            builder = builder.header(reqwest::header::ACCEPT, accept);
        }
        builder.send().await.unwrap()
    }

    async fn send(
        &self,
        what: impl Fn() -> String,
        builder: reqwest::RequestBuilder,
        expect: u16,
    ) -> Result<reqwest::Response, PushError> {
        let response = builder.send().await.map_err(|e| PushError {
            what: what(),
            status: None,
            body: e.to_string(),
        })?;
        if response.status().as_u16() == expect {
            return Ok(response);
        }
        let status = response.status().as_u16();
        Err(PushError {
            what: what(),
            status: Some(status),
            body: response.text().await.unwrap_or_default(),
        })
    }

    /// Whether `repo` already has blob `digest` (HEAD).
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, PushError> {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.addr);
        let what = || format!("HEAD {url}");
        let response = self
            .request(reqwest::Method::HEAD, &url)
            .send()
            .await
            .map_err(|e| PushError {
                what: what(),
                status: None,
                body: e.to_string(),
            })?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(PushError {
                what: what(),
                status: Some(status),
                body: String::new(),
            }),
        }
    }

    /// Monolithic upload: POST an upload session, PUT the bytes with
    /// `?digest=`. Skipped when the repository already has the blob.
    pub async fn try_push_blob(&self, repo: &str, data: &[u8]) -> Result<String, PushError> {
        let digest = sha256_digest(data);
        if self.blob_exists(repo, &digest).await? {
            return Ok(digest);
        }
        let start = format!("http://{}/v2/{repo}/blobs/uploads/", self.addr);
        let response = self
            .send(
                || format!("POST {start}"),
                self.request(reqwest::Method::POST, &start)
                    .header(reqwest::header::CONTENT_LENGTH, "0"),
                202,
            )
            .await?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PushError {
                what: format!("POST {start}"),
                status: Some(202),
                body: "no Location header".to_string(),
            })?;
        // Location may be absolute or relative to the registry.
        let mut url = reqwest::Url::parse(&start).unwrap().join(location).unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        self.send(
            || format!("PUT {url} ({} bytes)", data.len()),
            self.request(reqwest::Method::PUT, url.as_str())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(data.to_vec()),
            201,
        )
        .await?;
        Ok(digest)
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.try_push_blob(repo, data)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// PUT a manifest (or index) with `Content-Type: media_type`; returns its
    /// digest after checking the registry computed the same.
    pub async fn try_push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String, PushError> {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.addr);
        let response = self
            .send(
                || format!("PUT {url}"),
                self.request(reqwest::Method::PUT, &url)
                    .header(reqwest::header::CONTENT_TYPE, media_type)
                    .body(body.to_vec()),
                201,
            )
            .await?;
        let digest = sha256_digest(body);
        let answered = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(answered, digest, "registry digest of manifest {url}");
        Ok(digest)
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        self.try_push_manifest(repo, reference, media_type, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Layers, config, then the manifest as `<repo>:<tag>` (`tag` may be the
    /// image's digest).
    pub async fn try_push(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
    ) -> Result<Pushed, PushError> {
        let mut layers = Vec::new();
        for layer in &image.layers {
            let digest = self.try_push_blob(repo, &layer.data).await?;
            layers.push((digest, layer.diff_id.clone(), layer.data.len() as u64));
        }
        let config_digest = self.try_push_blob(repo, &image.config).await?;
        let manifest_digest = self
            .try_push_manifest(repo, tag, &image.manifest_media_type, &image.manifest)
            .await?;
        let digest_reference = format!("{}/{repo}@{manifest_digest}", self.addr);
        let reference = if tag.contains(':') {
            digest_reference.clone()
        } else {
            format!("{}/{repo}:{tag}", self.addr)
        };
        let total_size = image.total_size();
        Ok(Pushed {
            reference,
            digest_reference,
            manifest_digest,
            manifest_size: image.manifest.len() as u64,
            config_digest,
            config_size: image.config.len() as u64,
            layers,
            total_size,
        })
    }

    pub async fn push(&self, repo: &str, tag: &str, image: &Image) -> Pushed {
        self.try_push(repo, tag, image)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn push_list(
        &self,
        repo: &str,
        tag: &str,
        images: &[(Platform, &Image)],
        media_type: &str,
    ) -> PushedIndex {
        let mut children = Vec::new();
        for (_, image) in images {
            children.push(self.push(repo, &image.digest(), image).await);
        }
        let body = index_json(images, media_type);
        let manifest_digest = self.push_manifest(repo, tag, media_type, &body).await;
        PushedIndex {
            reference: format!("{}/{repo}:{tag}", self.addr),
            digest_reference: format!("{}/{repo}@{manifest_digest}", self.addr),
            manifest_digest,
            media_type: media_type.to_string(),
            children,
        }
    }

    /// Each image by digest, then an OCI image index naming them.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(Platform, &Image)],
    ) -> PushedIndex {
        self.push_list(repo, tag, images, media::OCI_INDEX).await
    }

    /// Each image by digest, then a Docker manifest list naming them.
    pub async fn push_manifest_list(
        &self,
        repo: &str,
        tag: &str,
        images: &[(Platform, &Image)],
    ) -> PushedIndex {
        self.push_list(repo, tag, images, media::DOCKER_MANIFEST_LIST)
            .await
    }
}

/// The bytes of an index (`media_type` OCI index or Docker manifest list).
pub fn index_json(images: &[(Platform, &Image)], media_type: &str) -> Vec<u8> {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(platform, image)| {
            json!({
                "mediaType": image.manifest_media_type,
                "digest": image.digest(),
                "size": image.manifest.len(),
                "platform": platform.to_json(),
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// Docker has no zstd layer type; the OCI one is what tools write.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => media::DOCKER_LAYER,
            Compression::Gzip => media::DOCKER_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(tar).unwrap();
                encoder.finish().unwrap()
            }
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    kind: tar::EntryType,
    /// Raw name bytes, written without any check.
    name: Vec<u8>,
    link: Vec<u8>,
    data: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    device: (u32, u32),
    pax: Vec<(String, Vec<u8>)>,
}

/// A layer tar built entry by entry, in order. Names and link targets are
/// written byte for byte (no normalisation, no `..` or absolute-path check);
/// no parent directories are added implicitly. Names over 100 bytes use GNU
/// long-name entries; xattrs use PAX `SCHILY.xattr.*` records.
#[derive(Clone, Debug)]
pub struct Layer {
    entries: Vec<Entry>,
    compression: Compression,
}

impl Default for Layer {
    fn default() -> Layer {
        Layer::new()
    }
}

impl Layer {
    /// An empty gzip layer.
    pub fn new() -> Layer {
        Layer {
            entries: Vec::new(),
            compression: Compression::Gzip,
        }
    }

    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = compression;
        self
    }

    /// Any entry: the escape hatch behind every other method.
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        name: impl AsRef<[u8]>,
        link: impl AsRef<[u8]>,
        data: impl AsRef<[u8]>,
        mode: u32,
    ) -> Layer {
        self.entries.push(Entry {
            kind,
            name: name.as_ref().to_vec(),
            link: link.as_ref().to_vec(),
            data: data.as_ref().to_vec(),
            mode,
            uid: 0,
            gid: 0,
            device: (0, 0),
            pax: Vec::new(),
        });
        self
    }

    fn last(&mut self) -> &mut Entry {
        self.entries.last_mut().unwrap()
    }

    pub fn file(self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.raw(tar::EntryType::Regular, path, "", data, mode)
    }

    pub fn file_owned(
        self,
        path: &str,
        data: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Layer {
        let mut layer = self.file(path, data, mode);
        let entry = layer.last();
        entry.uid = uid;
        entry.gid = gid;
        layer
    }

    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.raw(tar::EntryType::Directory, path, "", "", mode)
    }

    pub fn dir_owned(self, path: &str, mode: u32, uid: u64, gid: u64) -> Layer {
        let mut layer = self.dir(path, mode);
        let entry = layer.last();
        entry.uid = uid;
        entry.gid = gid;
        layer
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.raw(tar::EntryType::Symlink, path, target, "", 0o777)
    }

    /// A hard link `path` to the earlier entry `target` (a layer path).
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.raw(tar::EntryType::Link, path, target, "", 0o644)
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Layer {
        let mut layer = self.raw(tar::EntryType::Char, path, "", "", 0o666);
        layer.last().device = (major, minor);
        layer
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32) -> Layer {
        let mut layer = self.raw(tar::EntryType::Block, path, "", "", 0o660);
        layer.last().device = (major, minor);
        layer
    }

    pub fn fifo(self, path: &str) -> Layer {
        self.raw(tar::EntryType::Fifo, path, "", "", 0o644)
    }

    /// Deletes `path` of lower layers: writes `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Layer {
        let name = match path.trim_end_matches('/').rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/.wh.{base}"),
            None => format!(".wh.{path}"),
        };
        self.file(&name, "", 0o644)
    }

    /// Hides everything lower layers put in `dir`: writes `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Layer {
        let name = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.file(&name, "", 0o644)
    }

    /// Adds xattr `key` (e.g. `user.foo`, `security.capability`) to the
    /// latest entry named `path`, as a PAX `SCHILY.xattr.<key>` record.
    pub fn xattr(mut self, path: &str, key: &str, value: impl AsRef<[u8]>) -> Layer {
        let entry = self
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.name == path.as_bytes())
            .unwrap_or_else(|| panic!("xattr on {path}: no such entry in the layer yet"));
        entry
            .pax
            .push((format!("SCHILY.xattr.{key}"), value.as_ref().to_vec()));
        self
    }

    /// A regular file (0644) with any name at all: `../escape`, `/abs`, ….
    pub fn raw_entry(self, name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Layer {
        self.raw(tar::EntryType::Regular, name, "", data, 0o644)
    }

    /// The classic symlink escape: symlink `link` → `target` (e.g. `/tmp` or
    /// `../../..`), then a regular file written *through* it,
    /// `link/file_name`.
    pub fn symlink_escape(
        self,
        link: &str,
        target: &str,
        file_name: &str,
        data: impl AsRef<[u8]>,
    ) -> Layer {
        self.symlink(link, target)
            .raw_entry(format!("{link}/{file_name}"), data)
    }

    /// The uncompressed tar stream.
    pub fn tar_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            write_entry(&mut out, entry);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// Tar, compress, hash.
    pub fn build(&self) -> BuiltLayer {
        let tar = self.tar_bytes();
        let diff_id = sha256_digest(&tar);
        let data = compress_cached(self.compression, &tar, &diff_id);
        BuiltLayer {
            digest: sha256_digest(&data),
            diff_id,
            media_type: self.compression.oci_media_type().to_string(),
            compression: self.compression,
            data,
        }
    }
}

/// Compressing the busybox layer takes a while in a debug build: remember
/// the big ones.
fn compress_cached(compression: Compression, tar: &[u8], diff_id: &str) -> Vec<u8> {
    type Cache = Mutex<HashMap<(String, Compression), Vec<u8>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    if tar.len() < 256 * 1024 {
        return compression.compress(tar);
    }
    let cache = CACHE.get_or_init(Default::default);
    let key = (diff_id.to_string(), compression);
    if let Some(data) = cache.lock().unwrap().get(&key) {
        return data.clone();
    }
    let data = compression.compress(tar);
    cache.lock().unwrap().insert(key, data.clone());
    data
}

fn put_bytes(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

fn append(out: &mut Vec<u8>, header: &tar::Header, data: &[u8]) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.resize(out.len() + pad, 0);
}

/// A metadata entry (GNU long name/link, PAX extended header).
fn append_meta(out: &mut Vec<u8>, kind: tar::EntryType, name: &[u8], data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    put_bytes(&mut header.as_gnu_mut().unwrap().name, name);
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    append(out, &header, data);
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while rest + len.to_string().len() != len {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn write_entry(out: &mut Vec<u8>, entry: &Entry) {
    if !entry.pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &entry.pax {
            pax_record(&mut records, key, value);
        }
        append_meta(out, tar::EntryType::XHeader, b"././@PaxHeader", &records);
    }
    let mut with_nul = |bytes: &[u8], kind| {
        if bytes.len() > 100 {
            let mut data = bytes.to_vec();
            data.push(0);
            append_meta(out, kind, b"././@LongLink", &data);
        }
    };
    with_nul(&entry.name, tar::EntryType::GNULongName);
    with_nul(&entry.link, tar::EntryType::GNULongLink);
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        put_bytes(&mut gnu.name, &entry.name);
        put_bytes(&mut gnu.linkname, &entry.link);
    }
    header.set_entry_type(entry.kind);
    header.set_size(entry.data.len() as u64);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(MTIME);
    if matches!(entry.kind, tar::EntryType::Char | tar::EntryType::Block) {
        header.set_device_major(entry.device.0).unwrap();
        header.set_device_minor(entry.device.1).unwrap();
    }
    header.set_cksum();
    append(out, &header, &entry.data);
}

/// A compressed layer blob ready to push.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The blob bytes (compressed unless `Compression::None`).
    pub data: Vec<u8>,
    /// OCI media type; Docker manifests use `compression.docker_media_type()`.
    pub media_type: String,
    pub compression: Compression,
    /// sha256 of `data`.
    pub digest: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    // Size is data.len().
}

impl BuiltLayer {
    /// A blob that need not be a tar at all (garbage, a lying diff_id…).
    pub fn custom(data: Vec<u8>, compression: Compression, diff_id: &str) -> BuiltLayer {
        BuiltLayer {
            digest: sha256_digest(&data),
            diff_id: diff_id.to_string(),
            media_type: compression.oci_media_type().to_string(),
            compression,
            data,
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Applets hard-linked to `bin/busybox` in [`busybox_layer`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "[",
    "test",
    "true",
    "false",
    "echo",
    "printf",
    "cat",
    "ls",
    "sleep",
    "usleep",
    "id",
    "whoami",
    "groups",
    "env",
    "ps",
    "kill",
    "pidof",
    "mount",
    "umount",
    "grep",
    "sed",
    "awk",
    "cut",
    "tr",
    "sort",
    "uniq",
    "head",
    "tail",
    "wc",
    "tee",
    "xargs",
    "find",
    "stat",
    "touch",
    "mkdir",
    "rmdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "chmod",
    "chown",
    "readlink",
    "realpath",
    "basename",
    "dirname",
    "mknod",
    "mkfifo",
    "mktemp",
    "dd",
    "df",
    "du",
    "hostname",
    "uname",
    "date",
    "seq",
    "yes",
    "timeout",
    "nproc",
    "free",
    "uptime",
    "sync",
    "nc",
    "wget",
    "ip",
    "ifconfig",
    "ping",
    "nslookup",
    "nsenter",
    "unshare",
    "sysctl",
    "cmp",
    "diff",
    "expr",
    "md5sum",
    "sha256sum",
    "base64",
    "hexdump",
    "od",
    "vi",
    "more",
    "less",
    "which",
    "stty",
    "tty",
    "su",
    "top",
    "pwd",
    "watch",
    "httpd",
    "tar",
    "gzip",
    "zcat",
];

/// A small root filesystem: the host's static `/bin/busybox` as
/// `bin/busybox`, hard links (not symlinks) for [`BUSYBOX_APPLETS`] in `bin/`,
/// `etc/passwd` and `etc/group` (root 0, www-data 33, nobody 65534), and the
/// directories bin, etc, dev, proc, sys, root, var, tmp (1777), home.
pub fn busybox_layer() -> Layer {
    static BUSYBOX: OnceLock<Vec<u8>> = OnceLock::new();
    let busybox = BUSYBOX.get_or_init(|| {
        std::fs::read("/bin/busybox").unwrap_or_else(|e| {
            panic!("this test needs /bin/busybox (apt-get install busybox-static): {e}")
        })
    });
    let mut layer = Layer::new()
        .dir("bin", 0o755)
        .dir("dev", 0o755)
        .dir("etc", 0o755)
        .dir("home", 0o755)
        .dir("proc", 0o555)
        .dir("root", 0o700)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .dir("var", 0o755)
        .file("bin/busybox", busybox, 0o755);
    for applet in BUSYBOX_APPLETS {
        layer = layer.hardlink(&format!("bin/{applet}"), "bin/busybox");
    }
    layer
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n\
             www-data:x:33:33:www-data:/var/www:/bin/false\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )
        .file(
            "etc/group",
            "root:x:0:\nwww-data:x:33:\nnobody:x:65534:\n",
            0o644,
        )
}

// ---------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    pub fn with_variant(mut self, variant: &str) -> Platform {
        self.variant = Some(variant.to_string());
        self
    }

    /// linux and the host's GOARCH name (amd64, arm64, …).
    pub fn host() -> Platform {
        Platform::new("linux", host_arch())
    }

    fn to_json(&self) -> Value {
        let mut platform = json!({"architecture": self.architecture, "os": self.os});
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        platform
    }
}

/// The host architecture as OCI names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// A built image: manifest and config bytes plus the layer blobs.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_media_type: String,
    pub layers: Vec<BuiltLayer>,
    pub platform: Platform,
}

impl Image {
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }

    /// manifest + config + compressed layers.
    pub fn total_size(&self) -> u64 {
        (self.manifest.len() + self.config.len()) as u64
            + self.layers.iter().map(BuiltLayer::size).sum::<u64>()
    }

    pub fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest).unwrap()
    }

    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config).unwrap()
    }
}

/// Image config and layers; `build_oci` / `build_docker_schema2` write the
/// JSON. Defaults: linux, the host architecture, no config fields set.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<BuiltLayer>,
    platform: Platform,
    config: Map<String, Value>,
    overrides: Map<String, Value>,
    annotations: Map<String, Value>,
}

impl Default for ImageBuilder {
    fn default() -> ImageBuilder {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            platform: Platform::host(),
            config: Map::new(),
            overrides: Map::new(),
            annotations: Map::new(),
        }
    }

    /// busybox_layer() (gzip), `PATH=/bin:/usr/bin:/sbin:/usr/sbin`, Cmd `sh`.
    pub fn busybox() -> ImageBuilder {
        ImageBuilder::new()
            .layer(busybox_layer())
            .env("PATH=/bin:/usr/bin:/sbin:/usr/sbin")
            .cmd(&["sh"])
    }

    pub fn layer(self, layer: Layer) -> ImageBuilder {
        self.built_layer(layer.build())
    }

    pub fn built_layer(mut self, layer: BuiltLayer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    fn set(mut self, key: &str, value: Value) -> ImageBuilder {
        self.config.insert(key.to_string(), value);
        self
    }

    fn add_to_map(mut self, key: &str, name: &str, value: Value) -> ImageBuilder {
        let map = self
            .config
            .entry(key.to_string())
            .or_insert_with(|| json!({}));
        map[name] = value;
        self
    }

    pub fn entrypoint(self, args: &[&str]) -> ImageBuilder {
        self.set("Entrypoint", json!(args))
    }

    pub fn cmd(self, args: &[&str]) -> ImageBuilder {
        self.set("Cmd", json!(args))
    }

    /// Appends one `KEY=value`.
    pub fn env(mut self, key_value: &str) -> ImageBuilder {
        let env = self.config.entry("Env").or_insert_with(|| json!([]));
        env.as_array_mut().unwrap().push(json!(key_value));
        self
    }

    pub fn working_dir(self, dir: &str) -> ImageBuilder {
        self.set("WorkingDir", json!(dir))
    }

    /// `name`, `uid`, `uid:gid`, `name:group`.
    pub fn user(self, user: &str) -> ImageBuilder {
        self.set("User", json!(user))
    }

    pub fn stop_signal(self, signal: &str) -> ImageBuilder {
        self.set("StopSignal", json!(signal))
    }

    pub fn label(self, key: &str, value: &str) -> ImageBuilder {
        self.add_to_map("Labels", key, json!(value))
    }

    /// `80/tcp`, `53/udp`.
    pub fn expose(self, port: &str) -> ImageBuilder {
        self.add_to_map("ExposedPorts", port, json!({}))
    }

    pub fn volume(self, path: &str) -> ImageBuilder {
        self.add_to_map("Volumes", path, json!({}))
    }

    /// Sets any key of the runtime `config` object.
    pub fn config_field(self, key: &str, value: Value) -> ImageBuilder {
        self.set(key, value)
    }

    /// Overrides a top-level key of the image config JSON after it is
    /// generated (`rootfs`, `architecture`, …); `Value::Null` removes it.
    pub fn config_override(mut self, key: &str, value: Value) -> ImageBuilder {
        self.overrides.insert(key.to_string(), value);
        self
    }

    pub fn architecture(mut self, architecture: &str) -> ImageBuilder {
        self.platform.architecture = architecture.to_string();
        self
    }

    pub fn os(mut self, os: &str) -> ImageBuilder {
        self.platform.os = os.to_string();
        self
    }

    pub fn variant(mut self, variant: &str) -> ImageBuilder {
        self.platform.variant = Some(variant.to_string());
        self
    }

    pub fn platform(mut self, platform: &Platform) -> ImageBuilder {
        self.platform = platform.clone();
        self
    }

    /// A manifest annotation (OCI only).
    pub fn annotation(mut self, key: &str, value: &str) -> ImageBuilder {
        self.annotations.insert(key.to_string(), json!(value));
        self
    }

    fn config_bytes(&self) -> Vec<u8> {
        let mut config = json!({
            "created": CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": self.config,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|_| json!({
                "created": CREATED,
                "created_by": "rcri test harness",
            })).collect::<Vec<_>>(),
        });
        if let Some(variant) = &self.platform.variant {
            config["variant"] = json!(variant);
        }
        let object = config.as_object_mut().unwrap();
        for (key, value) in &self.overrides {
            if value.is_null() {
                object.remove(key);
            } else {
                object.insert(key.clone(), value.clone());
            }
        }
        serde_json::to_vec(&config).unwrap()
    }

    fn build(&self, docker: bool) -> Image {
        let config = self.config_bytes();
        let (manifest_type, config_type) = if docker {
            (media::DOCKER_MANIFEST, media::DOCKER_CONFIG)
        } else {
            (media::OCI_MANIFEST, media::OCI_CONFIG)
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|layer| {
                let media_type = if docker {
                    layer.compression.docker_media_type()
                } else {
                    layer.media_type.as_str()
                };
                json!({"mediaType": media_type, "digest": layer.digest, "size": layer.size()})
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": config_type,
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": layers,
        });
        if !docker && !self.annotations.is_empty() {
            manifest["annotations"] = Value::Object(self.annotations.clone());
        }
        Image {
            manifest: serde_json::to_vec(&manifest).unwrap(),
            manifest_media_type: manifest_type.to_string(),
            config,
            config_media_type: config_type.to_string(),
            layers: self.layers.clone(),
            platform: self.platform.clone(),
        }
    }

    pub fn build_oci(&self) -> Image {
        self.build(false)
    }

    pub fn build_docker_schema2(&self) -> Image {
        self.build(true)
    }
}

// ---------------------------------------------------------------------------
// Token-auth proxy
// ---------------------------------------------------------------------------

pub const TOKEN_SERVICE: &str = "test-registry";

struct ProxyState {
    /// `http://ADDR` of the registry.
    upstream: String,
    upstream_credentials: Option<(String, String)>,
    /// `http://ADDR` of the proxy.
    own: String,
    /// None: anyone gets a token (like anonymous pulls from a public hub).
    credentials: Option<(String, String)>,
    /// token → the repositories its scopes named.
    tokens: Mutex<HashMap<String, Vec<String>>>,
    token_requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    http: reqwest::Client,
}

/// A plain-HTTP/1.1 reverse proxy in front of a [`TestRegistry`] speaking
/// the Docker token flow: `/v2/…` needs `Authorization: Bearer <token>`
/// where the token came from `GET /token` (Basic credentials) for a scope
/// naming that repository; everything authorised is forwarded. It runs on
/// its own thread and runtime; stopped when dropped.
pub struct TokenAuthProxy {
    addr: String,
    state: Arc<ProxyState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length to announce for HEAD.
    head_length: Option<String>,
}

impl Response {
    fn json(status: u16, body: Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap(),
            head_length: None,
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            json!({"errors": [{"code": code, "message": message, "detail": null}]}),
        )
    }
}

impl TokenAuthProxy {
    /// Tokens only for `user`/`password`.
    pub fn start(registry: &TestRegistry, user: &str, password: &str) -> TokenAuthProxy {
        TokenAuthProxy::launch(registry, Some((user.to_string(), password.to_string())))
    }

    /// Tokens for anyone, credentials or not (anonymous pulls still go
    /// through the 401 → token → retry dance).
    pub fn start_anonymous(registry: &TestRegistry) -> TokenAuthProxy {
        TokenAuthProxy::launch(registry, None)
    }

    fn launch(registry: &TestRegistry, credentials: Option<(String, String)>) -> TokenAuthProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ProxyState {
            upstream: registry.url(),
            upstream_credentials: registry
                .credentials()
                .map(|(u, p)| (u.to_string(), p.to_string())),
            own: format!("http://{addr}"),
            credentials,
            tokens: Mutex::new(HashMap::new()),
            token_requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            http: http_client(),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            if let Ok((stream, _)) = accepted {
                                tokio::spawn(serve_connection(stream, thread_state.clone()));
                            }
                        }
                    }
                }
            });
        });
        TokenAuthProxy {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT/<repo>:<tag>` through the proxy.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// How many `GET /token` requests arrived (good or bad credentials).
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Every request so far, as `METHOD target -> status`.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// Forgets every token issued: the next request with one gets 401.
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }
}

impl Drop for TokenAuthProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<ProxyState>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Ok(Some(request)) = read_request(&mut read).await {
        let response = handle(&state, &request).await;
        state.log.lock().unwrap().push(format!(
            "{} {} -> {}",
            request.method, request.target, response.status
        ));
        if write_response(&mut write, &request, response)
            .await
            .is_err()
            || request.close
        {
            return;
        }
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> std::io::Result<String> {
    let mut line = String::new();
    read.read_line(&mut line).await?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn bad(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> std::io::Result<Option<Request>> {
    let line = read_line(read).await?;
    if line.is_empty() {
        return Ok(None);
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(read).await?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
        close: version == "HTTP/1.0",
    };
    if let Some(connection) = request.header("connection") {
        request.close = connection.eq_ignore_ascii_case("close");
    }
    if request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let size = read_line(read).await?;
            let size = size.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                while !read_line(read).await?.is_empty() {}
                break;
            }
            let start = request.body.len();
            request.body.resize(start + size, 0);
            read.read_exact(&mut request.body[start..]).await?;
            read_line(read).await?;
        }
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length.parse().map_err(|_| bad("bad content-length"))?;
        request.body.resize(length, 0);
        read.read_exact(&mut request.body).await?;
    }
    Ok(Some(request))
}

async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    write: &mut W,
    request: &Request,
    response: Response,
) -> std::io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(response.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let head_request = request.method == "HEAD";
    let length = match (&response.head_length, head_request) {
        (Some(length), true) => length.clone(),
        _ => response.body.len().to_string(),
    };
    head.push_str(&format!("Content-Length: {length}\r\n"));
    if request.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    write.write_all(head.as_bytes()).await?;
    if !head_request {
        write.write_all(&response.body).await?;
    }
    write.flush().await
}

/// The repository a `/v2/<name>/(manifests|blobs|tags|referrers)/…` path names.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .map(|end| &rest[..end])
}

fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request.header("authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn handle(state: &ProxyState, request: &Request) -> Response {
    let url = reqwest::Url::parse(&format!("http://proxy{}", request.target))
        .unwrap_or_else(|_| reqwest::Url::parse("http://proxy/").unwrap());
    let path = url.path().to_string();
    if path == "/token" {
        return issue_token(state, request, &url);
    }
    if path != "/v2" && !path.starts_with("/v2/") {
        return Response::error(404, "NOT_FOUND", "not found");
    }
    let repository = repository_of(&path);
    let bearer = request
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string());
    let authorized = bearer.is_some_and(|token| {
        state
            .tokens
            .lock()
            .unwrap()
            .get(&token)
            .is_some_and(|repos| repository.is_none_or(|r| repos.iter().any(|x| x == r)))
    });
    if !authorized {
        let mut challenge = format!(
            "Bearer realm=\"{}/token\",service=\"{TOKEN_SERVICE}\"",
            state.own
        );
        if let Some(repository) = repository {
            let actions = if matches!(request.method.as_str(), "GET" | "HEAD") {
                "pull"
            } else {
                "pull,push"
            };
            challenge.push_str(&format!(",scope=\"repository:{repository}:{actions}\""));
        }
        let mut response = Response::error(401, "UNAUTHORIZED", "authentication required");
        response
            .headers
            .push(("WWW-Authenticate".into(), challenge));
        response.headers.push((
            "Docker-Distribution-Api-Version".into(),
            "registry/2.0".into(),
        ));
        return response;
    }
    forward(state, request).await
}

fn issue_token(state: &ProxyState, request: &Request, url: &reqwest::Url) -> Response {
    let n = state.token_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(expected) = &state.credentials
        && basic_credentials(request).as_ref() != Some(expected)
    {
        let mut response = Response::error(401, "UNAUTHORIZED", "bad credentials");
        response.headers.push((
            "WWW-Authenticate".into(),
            "Basic realm=\"test-registry\"".into(),
        ));
        return response;
    }
    let mut repositories = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "scope"
            && let Some(rest) = value.strip_prefix("repository:")
            && let Some((name, _actions)) = rest.rsplit_once(':')
        {
            repositories.push(name.to_string());
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let token = format!("token-{n}-{nanos:08x}");
    state
        .tokens
        .lock()
        .unwrap()
        .insert(token.clone(), repositories);
    Response::json(
        200,
        json!({"token": token, "access_token": token, "expires_in": 300, "issued_at": CREATED}),
    )
}

async fn forward(state: &ProxyState, request: &Request) -> Response {
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return Response::error(405, "UNSUPPORTED", "method");
    };
    let mut upstream = state
        .http
        .request(method, format!("{}{}", state.upstream, request.target));
    for (name, value) in &request.headers {
        let skip = [
            "host",
            "authorization",
            "connection",
            "content-length",
            "transfer-encoding",
            "keep-alive",
        ];
        if !skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            upstream = upstream.header(name.as_str(), value.as_str());
        }
    }
    if let Some((user, password)) = &state.upstream_credentials {
        upstream = upstream.basic_auth(user, Some(password));
    }
    if !request.body.is_empty() || matches!(request.method.as_str(), "PUT" | "POST" | "PATCH") {
        upstream = upstream.body(request.body.clone());
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => return Response::error(502, "BAD_GATEWAY", &e.to_string()),
    };
    let status = answer.status().as_u16();
    let mut headers = Vec::new();
    let mut head_length = None;
    for (name, value) in answer.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).to_string();
        match name.as_str() {
            "content-length" => head_length = Some(value),
            "transfer-encoding" | "connection" | "keep-alive" => {}
            "location" => headers.push((
                "Location".to_string(),
                value.replacen(&state.upstream, &state.own, 1),
            )),
            other => headers.push((other.to_string(), value)),
        }
    }
    let body = answer.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    Response {
        status,
        headers,
        body,
        head_length,
    }
}
