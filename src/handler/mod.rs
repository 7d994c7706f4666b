//! The runtime handler table as the server uses it: each configured handler
//! with the features its runtime reports.

pub mod oci;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::config::{Config, DroppedHandler, Handler};

/// How long `RUNTIME features` may take before we assume it has none.
const FEATURES_TIMEOUT: Duration = Duration::from_secs(5);
/// Recursive read-only mounts need `mount_setattr(2)`, Linux 5.12.
const RRO_MIN_KERNEL: (u32, u32) = (5, 12);

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("runtime handler {name:?} is not configured; configured handlers: {configured}")]
    NotConfigured { name: String, configured: String },
}

/// What a handler's runtime can do, as the CRI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    pub recursive_read_only_mounts: bool,
    pub user_namespaces: bool,
}

/// A usable handler and its probed features.
#[derive(Debug, Clone)]
pub struct HandlerEntry {
    pub config: Handler,
    pub features: Features,
}

/// Every usable handler, the default's name, and the handlers left out.
#[derive(Debug, Clone)]
pub struct HandlerTable {
    pub default_handler: String,
    pub handlers: BTreeMap<String, HandlerEntry>,
    pub dropped: Vec<DroppedHandler>,
}

impl HandlerTable {
    /// Builds the table, asking each runtime for its features.
    pub async fn probe(config: &Config) -> HandlerTable {
        let kernel = kernel_version().await;
        let mut handlers = BTreeMap::new();
        for (name, handler) in &config.handlers {
            let features = probe_features(handler, kernel).await;
            tracing::info!(
                handler = %name,
                path = %handler.runtime_path.display(),
                recursive_read_only_mounts = features.recursive_read_only_mounts,
                user_namespaces = features.user_namespaces,
                "runtime handler ready"
            );
            handlers.insert(
                name.clone(),
                HandlerEntry {
                    config: handler.clone(),
                    features,
                },
            );
        }
        HandlerTable {
            default_handler: config.default_handler.clone(),
            handlers,
            dropped: config.dropped_handlers.clone(),
        }
    }

    /// The handler a pod asked for: empty means the default.
    pub fn resolve(&self, requested: &str) -> Result<&HandlerEntry, HandlerError> {
        let name = if requested.is_empty() {
            self.default_handler.as_str()
        } else {
            requested
        };
        self.handlers
            .get(name)
            .ok_or_else(|| HandlerError::NotConfigured {
                name: name.to_string(),
                configured: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The names a pod may ask for, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

/// The handler table in use, shared by everything that reads it (pods,
/// `Status`) and replaced whole on reload: a reader holds one consistent
/// table for as long as it needs, never a half-updated one.
#[derive(Debug)]
pub struct SharedHandlers(RwLock<Arc<HandlerTable>>);

impl SharedHandlers {
    pub fn new(table: HandlerTable) -> SharedHandlers {
        SharedHandlers(RwLock::new(Arc::new(table)))
    }

    /// The table as it is now.
    pub fn current(&self) -> Arc<HandlerTable> {
        // The lock only guards a pointer swap: a poisoned lock still holds
        // a whole table.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `table` in place for every later reader.
    pub fn replace(&self, table: HandlerTable) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }
}

/// Runs `RUNTIME [runtime_args] features`; runtimes without the command
/// (crun 1.8, runsc) or with unreadable output report no features.
async fn probe_features(handler: &Handler, kernel: Option<(u32, u32)>) -> Features {
    let output = Command::new(&handler.runtime_path)
        .args(&handler.runtime_args)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(FEATURES_TIMEOUT, output).await {
        Ok(Ok(output)) if output.status.success() => output,
        Ok(Ok(output)) => {
            tracing::debug!(handler = %handler.name, status = %output.status, "runtime has no usable `features` command");
            return Features::default();
        }
        Ok(Err(e)) => {
            tracing::warn!(handler = %handler.name, error = %e, "cannot run the runtime's `features` command");
            return Features::default();
        }
        Err(_) => {
            tracing::warn!(handler = %handler.name, "the runtime's `features` command timed out");
            return Features::default();
        }
    };
    let mut features = parse_features(&output.stdout);
    if kernel.is_some_and(|k| k < RRO_MIN_KERNEL) {
        features.recursive_read_only_mounts = false;
    }
    features
}

/// The parts of the OCI runtime `features` document we read.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OciFeatures {
    #[serde(default)]
    mount_options: Vec<String>,
    #[serde(default)]
    linux: Option<OciLinuxFeatures>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OciLinuxFeatures {
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    mount_extensions: Option<MountExtensions>,
}

#[derive(Deserialize, Default)]
struct MountExtensions {
    #[serde(default)]
    idmap: Option<Enabled>,
}

#[derive(Deserialize, Default)]
struct Enabled {
    #[serde(default)]
    enabled: Option<bool>,
}

/// Interprets an OCI `features` document. User namespaces for pods need both
/// the user namespace and idmapped mounts.
pub fn parse_features(json: &[u8]) -> Features {
    let Ok(doc) = serde_json::from_slice::<OciFeatures>(json) else {
        return Features::default();
    };
    let linux = doc.linux.unwrap_or_default();
    let idmap = linux
        .mount_extensions
        .and_then(|m| m.idmap)
        .and_then(|i| i.enabled)
        .unwrap_or(false);
    Features {
        recursive_read_only_mounts: doc.mount_options.iter().any(|o| o == "rro"),
        user_namespaces: idmap && linux.namespaces.iter().any(|n| n == "user"),
    }
}

async fn kernel_version() -> Option<(u32, u32)> {
    let release = tokio::fs::read_to_string("/proc/sys/kernel/osrelease")
        .await
        .ok()?;
    parse_kernel_version(&release)
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_1_1_features_have_rro_but_no_idmap() {
        let doc = br#"{"ociVersionMin":"1.0.0","ociVersionMax":"1.1.0-rc.1",
            "mountOptions":["async","bind","rro","rrw","ro"],
            "linux":{"namespaces":["cgroup","ipc","mount","network","pid","user","uts"]}}"#;
        assert_eq!(
            parse_features(doc),
            Features {
                recursive_read_only_mounts: true,
                user_namespaces: false
            }
        );
    }

    #[test]
    fn idmap_and_user_namespace_give_user_namespaces() {
        let doc = br#"{"mountOptions":["ro"],
            "linux":{"namespaces":["user"],"mountExtensions":{"idmap":{"enabled":true}}}}"#;
        assert_eq!(
            parse_features(doc),
            Features {
                recursive_read_only_mounts: false,
                user_namespaces: true
            }
        );
    }

    #[test]
    fn garbage_means_no_features() {
        assert_eq!(parse_features(b"usage: runsc ..."), Features::default());
        assert_eq!(parse_features(b""), Features::default());
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
