//! The image store under `state_dir/images`:
//!
//! ```text
//! blobs/sha256/<hex>     manifests and configs, content-addressed
//! layers/<diff-id hex>/  each layer unpacked once (an overlayfs lower dir)
//! images/<id hex>.json   one record per image: tags, digests, layers
//! tmp/                   downloads and unpacks in progress (wiped at start)
//! ```
//!
//! A pull writes layers first and the image record last, each by rename, so
//! a crash at any point leaves either a complete image or none.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock, Semaphore};

use super::layer::{self, Compression, LayerError};
use super::reference::{self, Reference, ReferenceError};
use super::registry::{Credentials, Descriptor, RegistryClient, RegistryError, Source};
use crate::fsutil::{self, Usage};

/// Layers fetched at once by one pull.
const PARALLEL_LAYERS: usize = 3;
/// Layer downloads at once across all pulls.
const MAX_DOWNLOADS: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("layer {digest} of {reference}: {source}")]
    Layer {
        reference: String,
        digest: String,
        source: LayerError,
    },
    #[error("image {reference}: {message}")]
    InvalidImage { reference: String, message: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, `sha256:<hex>`: the image id.
    pub id: String,
    /// `registry/repository:tag`, fully qualified.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:…` of what was pulled.
    pub repo_digests: Vec<String>,
    /// Bytes of the image's content as stored in a registry (config and
    /// compressed layers), as other runtimes report it.
    pub size: u64,
    pub manifest_digest: String,
    /// diff ids of the layers, lowest first.
    pub layers: Vec<String>,
    /// The `User` of the image config (`1000`, `www-data`, `1000:1000`).
    pub user: String,
}

impl ImageRecord {
    fn file_name(&self) -> String {
        format!("{}.json", hex_of(&self.id))
    }
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, hex)| hex)
}

/// The image config fields rcri reads.
#[derive(Debug, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ContainerConfigDoc>,
    rootfs: RootFsDoc,
}

#[derive(Debug, Default, Deserialize)]
struct ContainerConfigDoc {
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFsDoc {
    #[serde(default)]
    diff_ids: Vec<String>,
}

type LayerFetch<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>;

pub struct ImageStore {
    root: PathBuf,
    registry: RegistryClient,
    images: RwLock<BTreeMap<String, ImageRecord>>,
    /// Serialises changes to image records and garbage collection.
    changes: Mutex<()>,
    /// One lock per layer being fetched, so concurrent pulls fetch it once.
    layer_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    downloads: Semaphore,
    /// Layers in use by a container (holder id → diff ids): kept even when
    /// their image is removed, until the holder lets go.
    holders: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl ImageStore {
    /// Opens (creating) the store at `root`, dropping whatever an
    /// interrupted pull left behind. Blocking: call before serving or from
    /// the blocking pool.
    pub fn open(root: &Path, registry: RegistryClient) -> Result<ImageStore, StoreError> {
        for dir in ["blobs/sha256", "layers", "images"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_error("clean", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_error("create", &tmp))?;
        let mut images = BTreeMap::new();
        let dir = root.join("images");
        for entry in std::fs::read_dir(&dir).map_err(io_error("read", &dir))? {
            let path = entry.map_err(io_error("read", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
            match serde_json::from_slice::<ImageRecord>(&bytes) {
                Ok(record) => {
                    images.insert(record.id.clone(), record);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable image record")
                }
            }
        }
        tracing::info!(images = images.len(), root = %root.display(), "image store opened");
        Ok(ImageStore {
            root: root.to_path_buf(),
            registry,
            images: RwLock::new(images),
            changes: Mutex::new(()),
            layer_locks: std::sync::Mutex::new(HashMap::new()),
            downloads: Semaphore::new(MAX_DOWNLOADS),
            holders: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    /// The unpacked layer directories of an image, lowest first.
    pub fn layer_dirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record.layers.iter().map(|d| self.layer_dir(d)).collect()
    }

    /// Pulls `image` (any reference form) and returns its record.
    pub async fn pull(
        &self,
        image: &str,
        credentials: Option<&Credentials>,
    ) -> Result<ImageRecord, StoreError> {
        let reference = reference::parse(image)?;
        let shown = reference.to_string();
        let resolved = self.registry.resolve(&reference, credentials).await?;
        let config: ConfigDoc = serde_json::from_slice(&resolved.config_bytes).map_err(|e| {
            StoreError::InvalidImage {
                reference: shown.clone(),
                message: format!("its config is not valid JSON: {e}"),
            }
        })?;
        let layers = &resolved.manifest.layers;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(StoreError::InvalidImage {
                reference: shown,
                message: format!(
                    "the manifest lists {} layers but the config {} diff ids",
                    layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        // Boxed so the futures have one concrete type the async trait can hold.
        let fetches: Vec<LayerFetch<'_>> = layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(descriptor, diff_id)| {
                Box::pin(self.ensure_layer(
                    &shown,
                    &resolved.source,
                    descriptor,
                    diff_id,
                    credentials,
                )) as LayerFetch<'_>
            })
            .collect();
        // Every fetch runs to its end, even after one fails, so none is cut
        // off half-way through its clean-up.
        let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(fetches)
            .buffer_unordered(PARALLEL_LAYERS)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;

        let config_digest = resolved.manifest.config.digest.clone();
        self.write_blob(&config_digest, resolved.config_bytes.clone())
            .await?;
        self.write_blob(&resolved.manifest_digest, resolved.manifest_bytes.clone())
            .await?;
        let size = resolved.manifest.config.size + layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            id: config_digest,
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![reference.with_digest(&resolved.target_digest)],
            size,
            manifest_digest: resolved.manifest_digest.clone(),
            layers: config.rootfs.diff_ids.clone(),
            user: config.config.and_then(|c| c.user).unwrap_or_default(),
        };
        self.commit(record).await
    }

    /// Makes sure one layer is unpacked in `layers/`, fetching it if needed.
    async fn ensure_layer(
        &self,
        reference: &str,
        source: &Source,
        descriptor: &Descriptor,
        diff_id: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(), StoreError> {
        let layer_error = |source: LayerError| StoreError::Layer {
            reference: reference.to_string(),
            digest: descriptor.digest.clone(),
            source,
        };
        if !reference::is_valid_digest(diff_id) {
            return Err(StoreError::InvalidImage {
                reference: reference.to_string(),
                message: format!("diff id {diff_id:?} is not a digest"),
            });
        }
        let compression =
            Compression::from_media_type(&descriptor.media_type).map_err(layer_error)?;
        let lock = {
            let mut locks = self.layer_locks.lock().expect("layer lock table");
            locks.entry(diff_id.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let dest = self.layer_dir(diff_id);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(());
        }
        let unique = format!("{}-{}", hex_of(&descriptor.digest), random_suffix());
        let blob = self.root.join("tmp").join(format!("{unique}.blob"));
        let mut blob_guard = RemoveOnDrop(Some(blob.clone()));
        {
            let _permit = self.downloads.acquire().await.expect("download semaphore");
            self.registry
                .fetch_blob(source, descriptor, &blob, credentials)
                .await?;
        }
        let staging = self.root.join("tmp").join(format!("{unique}.layer"));
        let expected = diff_id.to_string();
        let final_path = dest.clone();
        // The blocking task owns the temporary files from here on and always
        // removes them, even if this pull is cancelled while it runs.
        let blob_path = blob_guard.0.take().expect("blob guard armed");
        let unpacked = tokio::task::spawn_blocking(move || {
            let result = unpack_blob(&blob_path, compression, &staging, &final_path, &expected);
            let _ = std::fs::remove_file(&blob_path);
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            result
        })
        .await
        .expect("layer unpack task panicked");
        unpacked.map_err(layer_error)?;
        tracing::debug!(diff_id, digest = %descriptor.digest, "layer unpacked");
        Ok(())
    }

    async fn write_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        blocking_io("write", path, move |p| fsutil::write_atomic(p, &bytes)).await
    }

    /// Records a pulled image: adds its tag and digest, moving the tag away
    /// from any image that had it before.
    async fn commit(&self, pulled: ImageRecord) -> Result<ImageRecord, StoreError> {
        let _changes = self.changes.lock().await;
        let mut images = self.images.read().await.clone();
        let mut changed: Vec<String> = Vec::new();
        for (id, other) in images.iter_mut() {
            if *id != pulled.id && other.repo_tags.iter().any(|t| pulled.repo_tags.contains(t)) {
                other.repo_tags.retain(|t| !pulled.repo_tags.contains(t));
                changed.push(id.clone());
            }
        }
        let record = match images.get_mut(&pulled.id) {
            Some(existing) => {
                for tag in &pulled.repo_tags {
                    if !existing.repo_tags.contains(tag) {
                        existing.repo_tags.push(tag.clone());
                    }
                }
                for digest in &pulled.repo_digests {
                    if !existing.repo_digests.contains(digest) {
                        existing.repo_digests.push(digest.clone());
                    }
                }
                existing.clone()
            }
            None => {
                images.insert(pulled.id.clone(), pulled.clone());
                pulled
            }
        };
        changed.push(record.id.clone());
        for id in &changed {
            self.save_record(&images[id]).await?;
        }
        *self.images.write().await = images;
        Ok(record)
    }

    async fn save_record(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.root.join("images").join(record.file_name());
        let bytes = serde_json::to_vec_pretty(record).expect("image records serialize");
        blocking_io("write", path, move |p| fsutil::write_atomic(p, &bytes)).await
    }

    /// Every image, in id order.
    pub async fn list(&self) -> Vec<ImageRecord> {
        self.images.read().await.values().cloned().collect()
    }

    /// Finds an image by id (full, `sha256:`-less, or a unique hex prefix),
    /// tag reference or digest reference.
    pub async fn find(&self, image: &str) -> Result<Option<ImageRecord>, StoreError> {
        let images = self.images.read().await;
        Ok(find_in(&images, image)?.cloned())
    }

    /// Removes an image. By tag, only that tag goes, unless it was the
    /// last; by id or digest, the whole image. Missing images are fine.
    pub async fn remove(&self, image: &str) -> Result<(), StoreError> {
        let _changes = self.changes.lock().await;
        let mut images = self.images.read().await.clone();
        let Some(found) = find_in(&images, image)?.cloned() else {
            return Ok(());
        };
        let by_tag = reference::parse(image)
            .ok()
            .and_then(|r| r.tagged().filter(|_| r.digest.is_none()))
            .filter(|tag| found.repo_tags.contains(tag));
        let path = self.root.join("images").join(found.file_name());
        match by_tag {
            Some(tag) if found.repo_tags.len() > 1 => {
                let record = images.get_mut(&found.id).expect("found above");
                record.repo_tags.retain(|t| *t != tag);
                let record = record.clone();
                self.save_record(&record).await?;
            }
            _ => {
                images.remove(&found.id);
                blocking_io("remove", path, |p| std::fs::remove_file(p)).await?;
                tracing::info!(image = %found.id, "image removed");
            }
        }
        *self.images.write().await = images;
        self.collect_garbage().await
    }

    /// Keeps `record`'s layers on disk while `holder` (a container) uses
    /// them, even if the image is removed meanwhile.
    pub fn hold_layers(&self, holder: &str, record: &ImageRecord) {
        self.holders
            .lock()
            .expect("layer holders")
            .insert(holder.to_string(), record.layers.clone());
    }

    /// `holder` is gone: its layers are freed unless an image or another
    /// holder still uses them.
    pub async fn release_layers(&self, holder: &str) -> Result<(), StoreError> {
        let released = self.holders.lock().expect("layer holders").remove(holder);
        if released.is_some() {
            let _changes = self.changes.lock().await;
            self.collect_garbage().await?;
        }
        Ok(())
    }

    /// Deletes layers and blobs no image refers to any more.
    async fn collect_garbage(&self) -> Result<(), StoreError> {
        let images = self.images.read().await;
        let mut live_layers: HashSet<String> = HashSet::new();
        let mut live_blobs: HashSet<String> = HashSet::new();
        for record in images.values() {
            live_layers.extend(record.layers.iter().map(|d| hex_of(d).to_string()));
            live_blobs.insert(hex_of(&record.id).to_string());
            live_blobs.insert(hex_of(&record.manifest_digest).to_string());
        }
        drop(images);
        for layers in self.holders.lock().expect("layer holders").values() {
            live_layers.extend(layers.iter().map(|d| hex_of(d).to_string()));
        }
        // Layers being fetched right now hold a lock: leave them alone.
        let busy: HashSet<String> = self
            .layer_locks
            .lock()
            .expect("layer lock table")
            .iter()
            .filter(|(_, lock)| lock.try_lock().is_err())
            .map(|(d, _)| hex_of(d).to_string())
            .collect();
        let root = self.root.clone();
        blocking_io("clean", root.clone(), move |_| {
            for (dir, live) in [("layers", &live_layers), ("blobs/sha256", &live_blobs)] {
                for entry in std::fs::read_dir(root.join(dir))? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if live.contains(&name) || busy.contains(&name) {
                        continue;
                    }
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                    tracing::debug!(path = %path.display(), "garbage collected");
                }
            }
            Ok(())
        })
        .await
    }

    /// The raw image config of a stored image.
    pub async fn config_bytes(&self, record: &ImageRecord) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(&record.id);
        tokio::fs::read(&path)
            .await
            .map_err(io_error("read", &path))
    }

    /// Disk usage of the whole store.
    pub async fn usage(&self) -> Result<Usage, StoreError> {
        blocking_io("measure", self.root.clone(), fsutil::disk_usage).await
    }
}

/// Unpacks a downloaded layer blob into `staging`, checks its diff id, then
/// moves it into place.
fn unpack_blob(
    blob: &Path,
    compression: Compression,
    staging: &Path,
    final_path: &Path,
    diff_id: &str,
) -> Result<(), LayerError> {
    let dest_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LayerError::Dest { path, source }
    };
    let file = std::fs::File::open(blob).map_err(LayerError::Read)?;
    std::fs::create_dir(staging).map_err(dest_error(staging))?;
    let stats = layer::unpack_layer(std::io::BufReader::new(file), compression, staging)?;
    stats.verify_diff_id(diff_id)?;
    std::fs::rename(staging, final_path).map_err(dest_error(final_path))
}

/// Removes a temporary file if the future owning it is dropped early.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn find_in<'a>(
    images: &'a BTreeMap<String, ImageRecord>,
    image: &str,
) -> Result<Option<&'a ImageRecord>, StoreError> {
    if let Some(id) = reference::image_id(image) {
        return Ok(images.get(&id));
    }
    let is_hex = image.len() >= 4
        && image
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if is_hex {
        let mut matches = images.values().filter(|r| hex_of(&r.id).starts_with(image));
        if let (Some(found), None) = (matches.next(), matches.next()) {
            return Ok(Some(found));
        }
    }
    let reference: Reference = reference::parse(image)?;
    let found = match &reference.digest {
        Some(digest) => {
            let wanted = reference.with_digest(digest);
            images.values().find(|r| r.repo_digests.contains(&wanted))
        }
        None => {
            let wanted = reference.tagged();
            images
                .values()
                .find(|r| wanted.as_ref().is_some_and(|t| r.repo_tags.contains(t)))
        }
    };
    Ok(found)
}

/// Runs a blocking filesystem step on the blocking pool.
async fn blocking_io<T: Send + 'static>(
    action: &'static str,
    path: PathBuf,
    f: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || f(&path).map_err(io_error(action, &path)))
        .await
        .expect("blocking filesystem task panicked")
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:016x}",
        RandomState::new().hash_one(std::time::SystemTime::now())
    )
}
