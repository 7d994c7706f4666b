//! Pod networks through CNI plugins.
//!
//! [`Cni`] finds the pod network (the first valid configuration in the conf
//! dir, re-read on every call so that changes need no restart) and runs its
//! plugin chain: ADD when a pod sandbox starts, DEL when it stops. The caller
//! keeps [`AttachResult::result_json`] and [`AttachResult::config_json`] with
//! the pod so that DEL after a restart gets the same chain and `prevResult`.

mod cni;
#[cfg(test)]
mod tests;

pub use cni::{
    AttachRequest, AttachResult, Bandwidth, Cni, CniConfig, CniError, DEFAULT_BIN_DIRS,
    DEFAULT_CONF_DIR, DEFAULT_PLUGIN_TIMEOUT, Dns, PortMapping,
};
