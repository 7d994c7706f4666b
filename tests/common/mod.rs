//! Shared harness for the integration tests: starts the real `rcri` binary on
//! a private socket and state directory and talks to it through a client
//! generated from our own proto.
#![allow(dead_code)]
pub mod node;
pub mod registry;
pub mod spdy_client;
pub mod ws_client;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcri::proto::image_service_client::ImageServiceClient;
use rcri::proto::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

pub const RCRI: &str = env!("CARGO_BIN_EXE_rcri");
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Splits `http://host:port/path` (or https) into `host:port` and the path.
pub fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .expect("an http or https URL");
    let slash = rest.find('/').expect("a path");
    (rest[..slash].to_string(), rest[slash..].to_string())
}

/// Sends an HTTP upgrade `request` and reads the answer's head: after a 101,
/// the head and whatever followed it; otherwise the status code and body.
pub async fn http_upgrade<S>(
    stream: &mut S,
    request: &str,
) -> Result<(String, Vec<u8>), (u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed before answering");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let rest = buf.split_off(end);
    if code != 101 {
        let mut body = rest;
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut body)).await;
        return Err((code, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok((head, rest))
}

/// Command lines of processes containing `text`.
pub fn processes_with(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(text) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// The absolute path of a tool the test needs. CI installs every tool the
/// tests use (`make test`), so a missing one is a failure, never a skip.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{name}` on PATH; `make test` installs it (apt-get install {name})"
            )
        })
}

/// A private directory for one rcri instance: config, socket, state.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("rcri-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("rcri.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("rcri.toml")
    }

    /// The global keys pointing every path into the sandbox (CNI configs
    /// too: `cni_dir()`, empty unless a test writes one).
    pub fn base_config(&self) -> String {
        format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\nrun_dir = \"{}\"\nnetwork.cni_conf_dir = \"{}\"\n",
            self.socket().display(),
            self.path().join("state").display(),
            self.path().join("run").display(),
            self.cni_dir().display()
        )
    }

    /// The CNI configuration directory of this rcri.
    pub fn cni_dir(&self) -> PathBuf {
        self.path().join("net.d")
    }

    /// Writes `rcri.toml`: the sandbox paths plus `rest`.
    pub fn write_config(&self, rest: &str) -> PathBuf {
        let path = self.config_path();
        std::fs::write(&path, format!("{}{rest}", self.base_config())).unwrap();
        path
    }

    /// An executable script in the sandbox, e.g. a fake runtime.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Runs `rcri ARGS --config rcri.toml` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(RCRI)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `rcri serve` and waits until it answers on its socket.
    pub fn serve(&self) -> Server {
        let child = self.spawn_serve();
        let mut server = Server {
            child: Some(child),
            socket: self.socket(),
            log: self.log_path(),
        };
        server.wait_ready();
        server
    }

    /// Where the server's log goes: a file, so a chatty server never blocks
    /// on a full pipe.
    pub fn log_path(&self) -> PathBuf {
        self.path().join("rcri.log")
    }

    pub fn spawn_serve(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        Command::new(RCRI)
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "rcri=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

/// A running `rcri serve`; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Server {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "rcri serve exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rcri did not listen within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("unix://{}", self.socket.display()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
            .max_decoding_message_size(rcri::server::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(rcri::server::MAX_MESSAGE_SIZE)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit; returns the exit status and the log.
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("server already stopped");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        (status, self.log_text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
