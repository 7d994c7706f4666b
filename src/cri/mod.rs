//! The gRPC edge: CRI requests in, domain calls, CRI responses out.

mod error;
mod image_service;
mod runtime_service;

pub use error::{CriError, quoted};
pub use image_service::ImageSvc;
pub use runtime_service::RuntimeSvc;

/// The name rcri reports in `Version`.
pub const RUNTIME_NAME: &str = "rcri";
/// The CRI API version rcri speaks.
pub const RUNTIME_API_VERSION: &str = "v1";
/// rcri's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
