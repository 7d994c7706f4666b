//! `rcri serve`: claims the socket, then serves RuntimeService and
//! ImageService on it until SIGTERM or SIGINT; SIGHUP reloads the handler
//! table.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::config::{Config, ConfigSources};
use crate::cri::{ImageSvc, RuntimeSvc};
use crate::deadline::Deadline;
use crate::handler::{HandlerTable, SharedHandlers};
use crate::image::registry::{RegistryClient, RegistryHost};
use crate::image::store::{ImageStore, StoreError};
use crate::pod::PodManager;
use crate::proto::image_service_server::ImageServiceServer;
use crate::proto::runtime_service_server::RuntimeServiceServer;

/// The kubelet's CRI client allows 16 MiB messages; so do we.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
const SOCKET_MODE: u32 = 0o660;
/// How long calls in flight may run on after SIGTERM or SIGINT.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long to wait before accepting again after `accept` failed.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another rcri is already running with run_dir {run_dir}: {lock} is locked{holder}")]
    AlreadyRunning {
        run_dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("another process is already serving on {0}; stop it or choose another socket")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another socket path")]
    NotASocket(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load pods and containers: {0}")]
    Pods(String),
    #[error("cannot set up image pulls: {0}")]
    Registry(#[from] crate::image::registry::RegistryError),
    #[error("cannot open the image store: {0}")]
    ImageStore(#[from] StoreError),
    #[error("cannot start the streaming server on {address}: {source}")]
    Streaming {
        address: String,
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io {
        action,
        path,
        source,
    }
}

/// The resources claimed before serving: the instance lock and the bound
/// socket. Claiming happens before the async runtime starts, so these
/// blocking calls never run on an async worker.
pub struct Claimed {
    _lock: File,
    listener: UnixListener,
    socket: PathBuf,
    images: Arc<ImageStore>,
}

/// Everything the services share, built after the handler table is probed.
async fn open_pods(
    config: &Arc<Config>,
    handlers: &Arc<SharedHandlers>,
    images: &Arc<ImageStore>,
) -> Result<Arc<PodManager>, ServeError> {
    let (config, handlers, images) = (config.clone(), handlers.clone(), images.clone());
    let pods = tokio::task::spawn_blocking(move || PodManager::open(config, handlers, images))
        .await
        .map_err(|e| ServeError::Pods(format!("loading pods failed: {e}")))?
        .map_err(|e| ServeError::Pods(e.to_string()))?;
    let pods = Arc::new(pods);
    pods.recover().await;
    Ok(pods)
}

/// Creates the directories, takes the instance lock and binds the socket,
/// replacing a stale socket file but never a live one.
pub fn claim(config: &Config) -> Result<Claimed, ServeError> {
    for dir in [&config.run_dir, &config.state_dir] {
        std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    }
    let lock = take_instance_lock(&config.run_dir)?;
    let registry = RegistryClient::new(
        config
            .registries
            .iter()
            .map(|(name, r)| {
                let host = RegistryHost {
                    mirrors: r.mirrors.clone(),
                    insecure: r.insecure,
                };
                (name.clone(), host)
            })
            .collect(),
    )?;
    let images = Arc::new(ImageStore::open(
        &config.state_dir.join("images"),
        registry,
    )?);
    let socket = config.socket.clone();
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    }
    remove_stale_socket(&socket)?;
    let listener = UnixListener::bind(&socket).map_err(io_error("listen on", &socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io_error("set the mode of", &socket))?;
    listener
        .set_nonblocking(true)
        .map_err(io_error("configure", &socket))?;
    Ok(Claimed {
        _lock: lock,
        listener,
        socket,
        images,
    })
}

fn take_instance_lock(run_dir: &Path) -> Result<File, ServeError> {
    let path = run_dir.join("rcri.lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    if let Err(e) = file.try_lock() {
        let holder = std::fs::read_to_string(&path)
            .ok()
            .map(|pid| pid.trim().to_string())
            .filter(|pid| !pid.is_empty())
            .map(|pid| format!(" by pid {pid}"))
            .unwrap_or_default();
        return match e {
            std::fs::TryLockError::WouldBlock => Err(ServeError::AlreadyRunning {
                run_dir: run_dir.to_path_buf(),
                lock: path,
                holder,
            }),
            std::fs::TryLockError::Error(source) => Err(ServeError::Io {
                action: "lock",
                path,
                source,
            }),
        };
    }
    file.set_len(0).map_err(io_error("write", &path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_error("write", &path))?;
    Ok(file)
}

/// A socket left by a crashed rcri refuses connections: remove it. One that
/// answers belongs to a live server: refuse to start.
fn remove_stale_socket(socket: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("inspect", socket)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(socket.to_path_buf()));
    }
    match UnixStream::connect(socket) {
        Ok(_) => Err(ServeError::SocketInUse(socket.to_path_buf())),
        Err(_) => {
            tracing::info!(socket = %socket.display(), "replacing a stale socket");
            std::fs::remove_file(socket).map_err(io_error("remove stale socket", socket))
        }
    }
}

/// Serves until SIGTERM or SIGINT, then removes the socket. Each SIGHUP
/// reloads the handler table from the same configuration sources.
pub async fn serve(
    config: Config,
    claimed: Claimed,
    shutdown: Shutdown,
    reload: Reload,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let table = HandlerTable::probe(&config).await;
    let handlers = Arc::new(SharedHandlers::new(table));
    let listener = tokio::net::UnixListener::from_std(claimed.listener)
        .map_err(io_error("listen on", &claimed.socket))?;
    let pods = open_pods(&config, &handlers, &claimed.images).await?;
    let streaming = crate::streaming::StreamingServer::start(&config.streaming, pods.clone())
        .await
        .map_err(|source| ServeError::Streaming {
            address: std::net::SocketAddr::from((config.streaming.address, config.streaming.port))
                .to_string(),
            source,
        })?;
    tracing::info!(address = %streaming.addr(), "streaming server listening");
    let runtime = RuntimeServiceServer::new(RuntimeSvc::new(
        config.clone(),
        handlers.clone(),
        pods,
        streaming,
    ))
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let containers_dir = config.state_dir.join("containers");
    let images = ImageServiceServer::new(ImageSvc::new(claimed.images, containers_dir))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    {
        let table = handlers.current();
        tracing::info!(
            socket = %claimed.socket.display(),
            default_handler = %table.default_handler,
            handlers = ?table.names().collect::<Vec<_>>(),
            version = crate::cri::VERSION,
            "rcri is serving"
        );
        for dropped in &table.dropped {
            tracing::warn!(handler = %dropped.name, reason = %dropped.reason, "runtime handler dropped");
        }
    }
    let reloader = tokio::spawn(reload.run(config.clone(), handlers.clone()));
    let routes = tonic::service::Routes::new(runtime)
        .add_service(images)
        .prepare();
    let connections = accept(listener, Deadline::new(routes), shutdown).await;
    // After a signal, open connections (the kubelet keeps one) get a short
    // grace period to finish their calls, then rcri exits regardless.
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "calls still open after the grace period; exiting anyway");
        }
    }
    reloader.abort();
    if let Err(e) = std::fs::remove_file(&claimed.socket) {
        tracing::warn!(socket = %claimed.socket.display(), error = %e, "cannot remove the socket");
    }
    tracing::info!("rcri stopped");
    Ok(())
}

/// Serves each accepted connection with HTTP/2 until SIGTERM or SIGINT, then
/// stops listening and returns the connections still open. rcri serves its
/// connections itself, not with tonic's transport server, because that one
/// wraps every service in a deadline layer of its own that answers
/// `CANCELLED` where the CRI's clients expect `DEADLINE_EXCEEDED`.
async fn accept<S>(
    listener: tokio::net::UnixListener,
    service: S,
    shutdown: Shutdown,
) -> GracefulShutdown
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // The timer lets hyper enforce its HTTP/2 timeouts, as tonic's server
    // did. No stream limit either, as before: the kubelet sends all its
    // calls over one connection.
    http2.timer(TokioTimer::new()).max_concurrent_streams(None);
    let connections = GracefulShutdown::new();
    let signal = shutdown.recv();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(service.clone());
                    let connection = connections.watch(http2.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Typically out of file descriptors: wait a little
                    // rather than spin, then accept again.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections
}

/// SIGTERM and SIGINT, registered before the socket is bound so that a
/// signal sent as soon as rcri answers is never missed.
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Must be called inside the tokio runtime's context.
    pub fn install() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
}

/// SIGHUP, registered with the other signals before the socket is bound (its
/// default action would end rcri), and where the configuration came from.
pub struct Reload {
    hangup: tokio::signal::unix::Signal,
    sources: ConfigSources,
}

impl Reload {
    /// Must be called inside the tokio runtime's context.
    pub fn install(sources: ConfigSources) -> std::io::Result<Reload> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Reload {
            hangup: signal(SignalKind::hangup())?,
            sources,
        })
    }

    /// Reloads on every SIGHUP, one reload at a time.
    async fn run(mut self, running: Arc<Config>, handlers: Arc<SharedHandlers>) {
        while self.hangup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading the runtime handlers");
            reload_handlers(&self.sources, &running, &handlers).await;
        }
    }
}

/// Re-reads the configuration and puts a freshly probed handler table in
/// place of the old one. A configuration that does not load leaves the old
/// table. Only the handler table is reloaded: other changed settings are
/// named in the log as needing a restart.
pub async fn reload_handlers(sources: &ConfigSources, running: &Config, handlers: &SharedHandlers) {
    let loaded = {
        let sources = sources.clone();
        tokio::task::spawn_blocking(move || Config::load(&sources)).await
    };
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(errors)) => {
            for error in &errors.0 {
                tracing::error!(error = %error, "reload refused: the configuration is invalid; the handler table is unchanged");
            }
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the handler table is unchanged");
            return;
        }
    };
    let restart = settings_needing_restart(running, &config);
    if !restart.is_empty() {
        tracing::warn!(
            settings = %restart.join(", "),
            "changed settings are not applied by a reload; restart rcri to apply them"
        );
    }
    let table = HandlerTable::probe(&config).await;
    tracing::info!(
        sources = ?config.sources,
        default_handler = %table.default_handler,
        handlers = ?table.names().collect::<Vec<_>>(),
        "runtime handlers reloaded; running pods keep the handler they started with"
    );
    for dropped in &table.dropped {
        tracing::warn!(handler = %dropped.name, reason = %dropped.reason, "runtime handler dropped");
    }
    handlers.replace(table);
}

/// The settings outside the handler table that differ.
fn settings_needing_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("socket", running.socket != new.socket);
    check("state_dir", running.state_dir != new.state_dir);
    check("run_dir", running.run_dir != new.run_dir);
    check("cgroup_driver", running.cgroup_driver != new.cgroup_driver);
    check("log_level", running.log_level != new.log_level);
    check("registries", running.registries != new.registries);
    check("network", running.network != new.network);
    check("streaming", running.streaming != new.streaming);
    changed
}
