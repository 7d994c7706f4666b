//! The image store: references, registry pulls, content-addressed blobs and
//! unpacked layers.

pub mod layer;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
