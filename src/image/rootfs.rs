//! A container's root filesystem: an overlay of its image's unpacked layers
//! (read-only) under its own writable layer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// overlayfs refuses more lower layers than this.
pub const MAX_LAYERS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("an image with {0} layers exceeds overlayfs' limit of {MAX_LAYERS}")]
    TooManyLayers(usize),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting the overlay on {}: {source}", target.display())]
    Mount { target: PathBuf, source: nix::Error },
    #[error("unmounting {}: {source}", target.display())]
    Unmount { target: PathBuf, source: nix::Error },
}

/// The directories of one container's overlay, all under `dir`.
#[derive(Debug, Clone)]
pub struct RootfsLayout {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl RootfsLayout {
    pub fn under(dir: &Path) -> RootfsLayout {
        RootfsLayout {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("rootfs"),
        }
    }
}

/// Mounts `layers` (lowest first) under a fresh writable layer at
/// `layout.merged`. Blocking.
///
/// The mount options must fit in one page; long layer paths would overflow
/// it at a few dozen layers. Each layer is therefore opened and named by its
/// short `/proc/self/fd/N` path, which the kernel resolves at mount time.
pub fn mount(layers: &[PathBuf], layout: &RootfsLayout) -> Result<(), RootfsError> {
    if layers.len() > MAX_LAYERS {
        return Err(RootfsError::TooManyLayers(layers.len()));
    }
    for dir in [&layout.upper, &layout.work, &layout.merged] {
        std::fs::create_dir_all(dir).map_err(|source| RootfsError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
    }
    if layers.is_empty() {
        // An image without layers: the writable layer alone.
        return bind(&layout.upper, &layout.merged);
    }
    let opened: Vec<File> = layers
        .iter()
        .map(|layer| {
            File::open(layer).map_err(|source| RootfsError::Io {
                action: "open layer",
                path: layer.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    // overlayfs lists the top-most lower layer first.
    let lowers: Vec<String> = opened
        .iter()
        .rev()
        .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()))
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        layout.upper.display(),
        layout.work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &layout.merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| RootfsError::Mount {
        target: layout.merged.clone(),
        source,
    })
}

fn bind(source_dir: &Path, target: &Path) -> Result<(), RootfsError> {
    nix::mount::mount(
        Some(source_dir),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Unmounts the container's root filesystem; not mounted is fine.
pub fn unmount(layout: &RootfsLayout) -> Result<(), RootfsError> {
    match nix::mount::umount2(&layout.merged, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(RootfsError::Unmount {
            target: layout.merged.clone(),
            source,
        }),
    }
}
