//! A pod's network namespace, pinned by a bind mount so that it lives
//! independently of any process (CNI sets it up before the pause starts).
//! Removing the pod's run directory with `fsutil::remove_tree` unpins it.

use std::io;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

/// Creates a new network namespace and pins it at `path`. Blocking.
///
/// The namespace is entered by a thread of its own that exits right after:
/// unsharing any thread the server reuses (an async worker or a blocking-pool
/// thread) would move that thread's later work into the pod's network.
pub fn create(path: &Path) -> io::Result<()> {
    std::fs::File::create(path)?;
    let target = path.to_path_buf();
    let pinned = std::thread::spawn(move || -> io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_pinned_namespace_differs_from_ours_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        create(&path).expect("creating a network namespace needs root");
        let pinned = std::fs::metadata(&path).unwrap().ino();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(pinned, ours, "a new namespace is pinned");
        assert_eq!(
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
            ours,
            "this thread stays in its own namespace"
        );
        // Pod removal unpins it with the rest of the pod's directory.
        crate::fsutil::remove_tree(dir.path()).unwrap();
        assert!(!path.exists());
    }
}
