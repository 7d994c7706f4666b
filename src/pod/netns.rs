//! A pod's network namespace, pinned by a bind mount so that it lives
//! independently of any process (CNI sets it up before the pause starts).
//! Removing the pod's run directory with `fsutil::remove_tree` unpins it.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

/// A loopback connect either completes or is refused at once; this bounds
/// the rare case of a listener whose backlog is full (SYNs dropped).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        loopback_up()?;
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

/// Sets `lo` up in the calling thread's network namespace: a new namespace
/// starts with it down, and a pod must reach itself on 127.0.0.1 even when
/// no CNI network (or no loopback plugin) sets it up; port-forward connects
/// there too.
fn loopback_up() -> io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    // Any socket will do for interface ioctls; a UDP one needs no address.
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    // SAFETY: ifreq is plain old data, for which all zeroes is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming "lo" (NUL-terminated) and
    // outlives the call; SIOCGIFFLAGS writes only its flags.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The network namespace a pod's ports live in, held open so that
/// connections can be made into it.
#[derive(Debug, Clone)]
pub enum PodNetwork {
    /// A host-network pod: its ports are the host's (and rcri's).
    Host,
    /// A pod's own namespace, as an open `nsfs` file.
    Pinned(Arc<File>),
}

/// No connection to a port on a pod's loopback could be made.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot connect to port {port} inside the pod's network namespace: 127.0.0.1:{port}: {v4}; [::1]:{port}: {v6}"
)]
pub struct ConnectError {
    pub port: u16,
    v4: String,
    v6: String,
}

impl PodNetwork {
    /// Opens the namespace pinned at `path`; `None` is the host's. Blocking.
    pub fn open(path: Option<&Path>) -> io::Result<PodNetwork> {
        match path {
            None => Ok(PodNetwork::Host),
            Some(path) => Ok(PodNetwork::Pinned(Arc::new(File::open(path)?))),
        }
    }

    /// Connects to `port` on the namespace's loopback, IPv4 first, then IPv6
    /// (a server may listen on only one of them).
    pub async fn connect_loopback(&self, port: u16) -> Result<tokio::net::TcpStream, ConnectError> {
        let netns = match self {
            PodNetwork::Host => return connect_host(port).await,
            PodNetwork::Pinned(netns) => netns.clone(),
        };
        // setns(CLONE_NEWNET) moves only the calling thread, for good. A tokio
        // worker or a blocking-pool thread is reused for unrelated work
        // afterwards, so the namespace is entered by a fresh thread that exits
        // once connected; the socket stays in the namespace it was made in.
        // A thread per connection costs tens of microseconds, negligible next
        // to what a forwarded connection carries.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("rcri-netns-dial".into())
            .spawn(move || {
                let _ = tx.send(connect_in(&netns, port));
            });
        let failed = |message: String| ConnectError {
            port,
            v4: message.clone(),
            v6: message,
        };
        if let Err(e) = spawned {
            return Err(failed(format!("cannot start a thread: {e}")));
        }
        let stream = rx
            .await
            .map_err(|_| failed("the connecting thread died".into()))??;
        tokio::net::TcpStream::from_std(stream).map_err(|e| failed(describe(&e)))
    }
}

/// Runs on a thread of its own, which it moves into `netns`.
fn connect_in(netns: &File, port: u16) -> Result<std::net::TcpStream, ConnectError> {
    if let Err(e) = nix::sched::setns(netns, CloneFlags::CLONE_NEWNET) {
        let message = format!("cannot enter the network namespace: {e}");
        return Err(ConnectError {
            port,
            v4: message.clone(),
            v6: message,
        });
    }
    let dial = |addr: SocketAddr| {
        let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nonblocking(true)?;
        Ok::<_, io::Error>(stream)
    };
    let v4 = match dial((Ipv4Addr::LOCALHOST, port).into()) {
        Ok(stream) => return Ok(stream),
        Err(e) => describe(&e),
    };
    match dial((Ipv6Addr::LOCALHOST, port).into()) {
        Ok(stream) => Ok(stream),
        Err(e) => Err(ConnectError {
            port,
            v4,
            v6: describe(&e),
        }),
    }
}

async fn connect_host(port: u16) -> Result<tokio::net::TcpStream, ConnectError> {
    let dial = |addr: SocketAddr| async move {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("timed out".to_string()),
        }
    };
    let v4 = match dial((Ipv4Addr::LOCALHOST, port).into()).await {
        Ok(stream) => return Ok(stream),
        Err(e) => e,
    };
    dial((Ipv6Addr::LOCALHOST, port).into())
        .await
        .map_err(|v6| ConnectError { port, v4, v6 })
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
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

    #[tokio::test]
    async fn connects_inside_a_pinned_namespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        create(&path).expect("creating a network namespace needs root");
        // A listener on the pod's loopback (its lo is up), made by a thread
        // of its own that enters the namespace.
        let netns = File::open(&path).unwrap();
        let inside = std::thread::spawn(move || {
            nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        let port = inside.local_addr().unwrap().port();
        let pod = PodNetwork::open(Some(&path)).unwrap();
        let stream = pod.connect_loopback(port).await.unwrap();
        let (accepted, _) = inside.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), stream.local_addr().unwrap());
        // A host listener is not reachable from the pod.
        let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = host.local_addr().unwrap().port();
        let error = pod.connect_loopback(port).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot connect to port {port} inside the pod's network namespace: 127.0.0.1:{port}: connection refused; [::1]:{port}: {}",
                error.v6
            )
        );
        assert_eq!(error.v4, "connection refused");
        let stream = PodNetwork::Host.connect_loopback(port).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap().port(), port);
        assert_eq!(
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
            std::fs::metadata("/proc/self/ns/net").unwrap().ino(),
            "this thread stays in its own namespace"
        );
        drop(pod);
        crate::fsutil::remove_tree(dir.path()).unwrap();
    }
}
