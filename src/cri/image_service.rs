//! `runtime.v1.ImageService` over the image store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use tonic::{Request, Response, Status};

use super::{CriError, quoted};
use crate::fsutil;
use crate::image::registry::Credentials;
use crate::image::store::{ImageRecord, ImageStore};
use crate::proto::{self, image_service_server::ImageService};

pub struct ImageSvc {
    store: Arc<ImageStore>,
    /// Where container writable layers live, reported by ImageFsInfo.
    containers_dir: PathBuf,
}

impl ImageSvc {
    pub fn new(store: Arc<ImageStore>, containers_dir: PathBuf) -> Self {
        ImageSvc {
            store,
            containers_dir,
        }
    }
}

fn image_name(spec: Option<&proto::ImageSpec>) -> Result<&str, CriError> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(CriError::InvalidArgument(
            "the image is empty: ImageSpec.image must name an image (e.g. busybox:1.36)".into(),
        )),
    }
}

/// The CRI's credentials, in the order of precedence other runtimes use.
pub fn credentials(auth: Option<&proto::AuthConfig>) -> Result<Option<Credentials>, CriError> {
    let Some(auth) = auth else { return Ok(None) };
    if !auth.registry_token.is_empty() {
        return Ok(Some(Credentials::RegistryToken(
            auth.registry_token.clone(),
        )));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some(Credentials::IdentityToken(
            auth.identity_token.clone(),
        )));
    }
    if !auth.username.is_empty() || !auth.password.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        }));
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((username, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(CriError::InvalidArgument(
                "AuthConfig.auth must be base64 of \"username:password\"".into(),
            ));
        };
        return Ok(Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    Ok(None)
}

fn to_proto(record: &ImageRecord) -> proto::Image {
    // A numeric user (optionally with a group) is a uid; anything else a name.
    let user = record.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(proto::Int64Value { value: uid }), String::new()),
        // No user at all: report neither, as other runtimes do.
        Err(_) if user.is_empty() => (None, String::new()),
        Err(_) => (None, user.to_string()),
    };
    proto::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(proto::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn filesystem_usage(mountpoint: &std::path::Path, usage: fsutil::Usage) -> proto::FilesystemUsage {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    proto::FilesystemUsage {
        timestamp,
        fs_id: Some(proto::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(proto::UInt64Value { value: usage.bytes }),
        inodes_used: Some(proto::UInt64Value {
            value: usage.inodes,
        }),
    }
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = image_name(request.image.as_ref())?;
        let credentials = credentials(request.auth.as_ref())?;
        let started = std::time::Instant::now();
        let record = self
            .store
            .pull(image, credentials.as_ref())
            .await
            .map_err(CriError::from)?;
        tracing::info!(image, id = %record.id, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(Response::new(proto::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn image_status(
        &self,
        request: Request<proto::ImageStatusRequest>,
    ) -> Result<Response<proto::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let image = image_name(request.image.as_ref())?;
        // A missing image is no error: the CRI asks for an empty answer.
        let Some(record) = self.store.find(image).await.map_err(CriError::from)? else {
            return Ok(Response::new(proto::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let config = self
                .store
                .config_bytes(&record)
                .await
                .map_err(CriError::from)?;
            let config: serde_json::Value =
                serde_json::from_slice(&config).unwrap_or(serde_json::Value::Null);
            let verbose = serde_json::json!({
                "imageSpec": config,
                "manifestDigest": record.manifest_digest,
                "layers": record.layers,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(proto::ImageStatusResponse {
            image: Some(to_proto(&record)),
            info,
        }))
    }

    async fn list_images(
        &self,
        request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|image| !image.trim().is_empty());
        let images = match filter {
            Some(image) => self
                .store
                .find(image.trim())
                .await
                .map_err(CriError::from)?
                .into_iter()
                .collect(),
            None => self.store.list().await,
        };
        Ok(Response::new(proto::ListImagesResponse {
            images: images.iter().map(to_proto).collect(),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let image = image_name(request.image.as_ref())?;
        self.store.remove(image).await.map_err(CriError::from)?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<proto::ImageFsInfoRequest>,
    ) -> Result<Response<proto::ImageFsInfoResponse>, Status> {
        let images = self.store.usage().await.map_err(CriError::from)?;
        let containers_dir = self.containers_dir.clone();
        let containers = tokio::task::spawn_blocking(move || fsutil::disk_usage(&containers_dir))
            .await
            .map_err(|e| CriError::Internal(format!("measuring container layers failed: {e}")))?
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(fsutil::Usage::default()),
                _ => Err(CriError::Internal(format!(
                    "cannot measure {}: {e}",
                    quoted(&self.containers_dir.display().to_string())
                ))),
            })?;
        Ok(Response::new(proto::ImageFsInfoResponse {
            image_filesystems: vec![filesystem_usage(self.store.root(), images)],
            container_filesystems: vec![filesystem_usage(&self.containers_dir, containers)],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_cri_precedence() {
        assert!(credentials(None).unwrap().is_none());
        let auth = proto::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et"),
            ..Default::default()
        };
        assert!(matches!(
            credentials(Some(&auth)).unwrap(),
            Some(Credentials::Basic { username, password }) if username == "alice" && password == "s3cr:et"
        ));
        let auth = proto::AuthConfig {
            auth: "not base64!".into(),
            ..Default::default()
        };
        assert!(matches!(
            credentials(Some(&auth)),
            Err(CriError::InvalidArgument(_))
        ));
        let auth = proto::AuthConfig {
            username: "u".into(),
            registry_token: "tok".into(),
            ..Default::default()
        };
        assert!(matches!(
            credentials(Some(&auth)).unwrap(),
            Some(Credentials::RegistryToken(t)) if t == "tok"
        ));
    }

    #[test]
    fn numeric_users_are_uids_and_names_are_usernames() {
        let mut record = ImageRecord {
            id: "sha256:abc".into(),
            repo_tags: vec![],
            repo_digests: vec![],
            size: 1,
            manifest_digest: "sha256:def".into(),
            layers: vec![],
            user: "1000:1000".into(),
        };
        let image = to_proto(&record);
        assert_eq!(image.uid, Some(proto::Int64Value { value: 1000 }));
        assert_eq!(image.username, "");
        record.user = "www-data".into();
        let image = to_proto(&record);
        assert_eq!(image.uid, None);
        assert_eq!(image.username, "www-data");
        record.user = String::new();
        assert_eq!(to_proto(&record).uid, None);
    }
}
