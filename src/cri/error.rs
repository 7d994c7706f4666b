//! The one mapping from rcri's errors to gRPC statuses.

use crate::handler::oci::RuntimeError;
use crate::image::layer::LayerError;
use crate::image::registry::RegistryError;
use crate::image::store::StoreError;
use crate::pod::PodError;

/// An error answered to a CRI client; the variant picks the gRPC code and
/// the text is what the operator reads (the kubelet shows it in events).
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    Internal(String),
}

impl From<CriError> for tonic::Status {
    fn from(error: CriError) -> Self {
        let message = error.to_string();
        match error {
            CriError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            CriError::NotFound(_) => tonic::Status::not_found(message),
            CriError::AlreadyExists(_) => tonic::Status::already_exists(message),
            CriError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            CriError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            CriError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            CriError::Unavailable(_) => tonic::Status::unavailable(message),
            CriError::DataLoss(_) => tonic::Status::data_loss(message),
            CriError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

impl From<StoreError> for CriError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match &error {
            StoreError::Reference(_) => CriError::InvalidArgument(message),
            StoreError::Registry(e) if e.is_not_found() => CriError::NotFound(message),
            StoreError::Registry(e) if e.is_unauthorized() => CriError::PermissionDenied(message),
            StoreError::Registry(e) if e.is_unavailable() => CriError::Unavailable(message),
            StoreError::Registry(RegistryError::DigestMismatch { .. }) => {
                CriError::DataLoss(message)
            }
            StoreError::Registry(e) if e.is_bad_content() => CriError::FailedPrecondition(message),
            StoreError::Layer {
                source: LayerError::DigestMismatch { .. },
                ..
            } => CriError::DataLoss(message),
            StoreError::Layer { .. } | StoreError::InvalidImage { .. } => {
                CriError::FailedPrecondition(message)
            }
            StoreError::Registry(_) | StoreError::Io { .. } => CriError::Internal(message),
        }
    }
}

impl From<PodError> for CriError {
    fn from(error: PodError) -> Self {
        let message = error.to_string();
        match error {
            PodError::InvalidArgument(_) | PodError::Spec(_) => CriError::InvalidArgument(message),
            PodError::NotFound(_) => CriError::NotFound(message),
            PodError::AlreadyExists(_) => CriError::AlreadyExists(message),
            PodError::FailedPrecondition(_) => CriError::FailedPrecondition(message),
            PodError::DeadlineExceeded(_) => CriError::DeadlineExceeded(message),
            PodError::Runtime(e) if matches!(*e, RuntimeError::Timeout { .. }) => {
                CriError::DeadlineExceeded(message)
            }
            PodError::Image(e) => CriError::from(e),
            PodError::Runtime(_)
            | PodError::Rootfs(_)
            | PodError::Io { .. }
            | PodError::Network(_)
            | PodError::Internal(_) => CriError::Internal(message),
        }
    }
}

/// Longest client-supplied value quoted in an error: statuses travel in an
/// HTTP/2 header, which must stay small.
const MAX_QUOTED: usize = 100;

/// Quotes a client-supplied value for an error message, shortened if long.
pub fn quoted(value: &str) -> String {
    if value.len() <= MAX_QUOTED {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTED;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn long_values_are_shortened() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let long = "é".repeat(100);
        let shown = quoted(&long);
        assert!(shown.ends_with("… (200 bytes)"), "{shown}");
        assert!(shown.len() < 120);
    }
}
