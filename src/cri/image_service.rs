//! `runtime.v1.ImageService`. Every RPC answers `Unimplemented` (naming the
//! RPC) until the image store exists.

use crate::proto::image_service_server::ImageService;

#[derive(Debug, Default)]
pub struct ImageSvc;

#[tonic::async_trait]
impl ImageService for ImageSvc {}
