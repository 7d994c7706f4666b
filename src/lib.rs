//! rcri: a Kubernetes CRI v1 runtime that runs each pod with the OCI runtime
//! named by its RuntimeClass handler.

pub mod config;
pub mod cri;
pub mod deadline;
pub mod fsutil;
pub mod handler;
pub mod image;
pub mod monitor;
pub mod network;
pub mod pod;
pub mod server;
pub mod spec;
pub mod streaming;
pub mod tty;

/// Code generated from `proto/api.proto` (package `runtime.v1`).
#[allow(clippy::all, clippy::pedantic, rustdoc::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}
