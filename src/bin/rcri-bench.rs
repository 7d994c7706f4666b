//! `rcri-bench`: measures CRI calls against any CRI endpoint (rcri,
//! containerd, CRI-O), so that runtimes are compared side by side in one run.
//!
//! ```text
//! rcri-bench pull --endpoint unix:///run/containerd/containerd.sock \
//!                 --endpoint unix:///run/rcri/rcri.sock --image busybox:1.36 -n 20
//! ```
//! ```text
//! rcri-bench pods --endpoint unix:///run/containerd/containerd.sock \
//!                 --endpoint unix:///run/rcri/rcri.sock --image busybox:1.36 -n 30
//! ```
//! ```text
//! rcri-bench exec --endpoint unix:///run/containerd/containerd.sock \
//!                 --endpoint unix:///run/rcri/rcri.sock --image busybox:1.36 -n 10
//! ```
//! The first endpoint is the reference; the others are reported as ratios
//! of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rcri::proto::{
    self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use rcri::streaming::spdy::{Codec, FLAG_FIN, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    name = "rcri-bench",
    version,
    about = "Measure CRI calls against CRI endpoints side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time PullImage of an image that is removed before each pull.
    Pull {
        /// CRI endpoints (unix:///path); the first is the reference.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// The image to pull.
        #[arg(long)]
        image: String,
        /// Pulls per endpoint.
        #[arg(short = 'n', long, default_value_t = 20)]
        iterations: usize,
    },
    /// Time the pod lifecycle (RunPodSandbox, CreateContainer, StartContainer,
    /// StopPodSandbox, RemovePodSandbox) and measure the memory (PSS) of the
    /// runtime's per-pod processes with several pods running.
    Pods {
        /// CRI endpoints (unix:///path); the first is the reference.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// The container image (pulled first).
        #[arg(long)]
        image: String,
        /// Pod lifecycles per endpoint.
        #[arg(short = 'n', long, default_value_t = 20)]
        iterations: usize,
        /// Pods kept running at once for the memory measurement.
        #[arg(long, default_value_t = 10)]
        memory_pods: usize,
        /// The runtime handler to ask for (empty: the default).
        #[arg(long, default_value = "")]
        handler: String,
        /// Command-line fragments of the per-pod processes whose PSS is summed.
        #[arg(long = "pss-match", default_values_t = ["rcri monitor".to_string(), "containerd-shim".to_string(), "/pause".to_string()])]
        pss_match: Vec<String>,
    },
    /// Time streaming exec over SPDY/3.1 (stdout only) in a running busybox
    /// container: `head -c SIZE /dev/zero` (throughput) and `true` (latency
    /// from the Exec RPC to the exit status), and measure the peak RSS growth
    /// of the runtime's server process (the one listening on the endpoint
    /// socket) meanwhile.
    Exec {
        /// CRI endpoints (unix:///path); the first is the reference.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// The container image (pulled first); needs `sleep`, `head`, `true`.
        #[arg(long)]
        image: String,
        /// Large execs per endpoint.
        #[arg(short = 'n', long, default_value_t = 10)]
        iterations: usize,
        /// Bytes each large exec writes to stdout.
        #[arg(long, default_value_t = 50 << 20)]
        size: u64,
        /// `true` execs per endpoint (latency).
        #[arg(long, default_value_t = 20)]
        small: usize,
        /// The runtime handler to ask for (empty: the default).
        #[arg(long, default_value = "")]
        handler: String,
    },
}

/// Latency summary of one series.
struct Summary {
    median: Duration,
    p95: Duration,
    min: Duration,
    max: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p95: at(0.95),
        min: samples[0],
        max: samples[samples.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let path = endpoint
        .strip_prefix("unix://")
        .with_context(|| format!("{endpoint}: only unix:// endpoints are supported"))?;
    Endpoint::from_shared(format!("unix://{path}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

fn spec(image: &str) -> Option<proto::ImageSpec> {
    Some(proto::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn bench_pull(
    endpoint: &str,
    image: &str,
    iterations: usize,
) -> anyhow::Result<(Summary, u64)> {
    let mut client =
        ImageServiceClient::new(connect(endpoint).await?).max_decoding_message_size(16 << 20);
    let mut samples = Vec::with_capacity(iterations);
    let mut size = 0;
    // One warm-up pull: connection set-up and first-time caches are not measured.
    for i in 0..=iterations {
        client
            .remove_image(proto::RemoveImageRequest { image: spec(image) })
            .await
            .with_context(|| format!("{endpoint}: RemoveImage {image}"))?;
        let started = Instant::now();
        client
            .pull_image(proto::PullImageRequest {
                image: spec(image),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("{endpoint}: PullImage {image}"))?;
        let elapsed = started.elapsed();
        if i > 0 {
            samples.push(elapsed);
        }
        let status = client
            .image_status(proto::ImageStatusRequest {
                image: spec(image),
                verbose: false,
            })
            .await?
            .into_inner();
        size = status.image.map_or(0, |i| i.size);
    }
    Ok((summarize(samples), size))
}

const STEPS: [&str; 5] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

fn pod_config(i: usize) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("bench-uid-{i}-{}", std::process::id()),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        linux: Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(proto::NamespaceOption {
                    pid: proto::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Starts one pod with one `sleep` container; returns the pod id, the
/// container id and the time of each step.
async fn start_pod(
    client: &mut RuntimeServiceClient<Channel>,
    image: &str,
    handler: &str,
    i: usize,
) -> anyhow::Result<(String, String, [Duration; 3])> {
    let config = pod_config(i);
    let t = Instant::now();
    let pod = client
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let run = t.elapsed();
    let t = Instant::now();
    let container = client
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: "sleep".into(),
                    attempt: 0,
                }),
                image: spec(image),
                command: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let create = t.elapsed();
    let t = Instant::now();
    client
        .start_container(proto::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .context("StartContainer")?;
    Ok((pod, container, [run, create, t.elapsed()]))
}

async fn remove_pod(
    client: &mut RuntimeServiceClient<Channel>,
    pod: &str,
) -> anyhow::Result<[Duration; 2]> {
    let t = Instant::now();
    client
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("StopPodSandbox")?;
    let stop = t.elapsed();
    let t = Instant::now();
    client
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("RemovePodSandbox")?;
    Ok([stop, t.elapsed()])
}

/// Proportional set size (KiB) of every process whose command line
/// contains one of `patterns`.
fn pss_of_matching(patterns: &[String]) -> (u64, usize) {
    let mut total = 0;
    let mut count = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !patterns.iter().any(|p| cmdline.contains(p.as_str())) || cmdline.contains("rcri-bench")
        {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(entry.path().join("smaps_rollup")) else {
            continue;
        };
        if let Some(kib) = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            total += kib;
            count += 1;
        }
    }
    (total, count)
}

struct PodBench {
    steps: Vec<Summary>,
    total: Summary,
    pss_per_pod_kib: f64,
    processes_per_pod: f64,
}

async fn bench_pods(
    endpoint: &str,
    image: &str,
    handler: &str,
    iterations: usize,
    memory_pods: usize,
    pss_match: &[String],
) -> anyhow::Result<PodBench> {
    let channel = connect(endpoint).await?;
    let mut images = ImageServiceClient::new(channel.clone());
    images
        .pull_image(proto::PullImageRequest {
            image: spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("{endpoint}: PullImage {image}"))?;
    let mut client = RuntimeServiceClient::new(channel);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut totals = Vec::new();
    // One warm-up lifecycle, not measured.
    for i in 0..=iterations {
        let (pod, _, started) = start_pod(&mut client, image, handler, i)
            .await
            .with_context(|| endpoint.to_string())?;
        let removed = remove_pod(&mut client, &pod)
            .await
            .with_context(|| endpoint.to_string())?;
        if i > 0 {
            for (step, d) in started.iter().chain(removed.iter()).enumerate() {
                samples[step].push(*d);
            }
            totals.push(started.iter().sum());
        }
    }
    let (baseline, baseline_count) = pss_of_matching(pss_match);
    let mut running = Vec::new();
    for i in 0..memory_pods {
        running.push(start_pod(&mut client, image, handler, 10_000 + i).await?.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (loaded, loaded_count) = pss_of_matching(pss_match);
    for pod in &running {
        remove_pod(&mut client, pod).await?;
    }
    let pods = memory_pods.max(1) as f64;
    Ok(PodBench {
        steps: samples.into_iter().map(summarize).collect(),
        total: summarize(totals),
        pss_per_pod_kib: loaded.saturating_sub(baseline) as f64 / pods,
        processes_per_pod: loaded_count.saturating_sub(baseline_count) as f64 / pods,
    })
}

/// The pid of the process that listens on the unix socket `path`: the
/// socket's inode from `/proc/net/unix`, then the process holding a
/// descriptor to it in `/proc/*/fd`.
fn socket_owner(path: &str) -> anyhow::Result<u32> {
    // __SO_ACCEPTCON: the listening socket, not the connections accepted on it.
    const ACCEPTCON: u32 = 0x0001_0000;
    let table = std::fs::read_to_string("/proc/net/unix").context("/proc/net/unix")?;
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            (fields.get(7) == Some(&path) && flags & ACCEPTCON != 0)
                .then(|| format!("socket:[{}]", fields[6]))
        })
        .collect();
    if inodes.is_empty() {
        bail!("no process listens on {path} (/proc/net/unix)");
    }
    let mut owners = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        });
        if holds {
            owners.push(pid);
        }
    }
    match owners[..] {
        [pid] => Ok(pid),
        [] => bail!("no process holds the socket {path} (not root?)"),
        _ => bail!("several processes hold the socket {path}: {owners:?}"),
    }
}

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM), in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Splits `http://host:port/path`.
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// streaming URLs are supported"))?;
    let slash = rest.find('/').with_context(|| format!("{url}: no path"))?;
    Ok(rest.split_at(slash))
}

/// A minimal SPDY/3.1 client for one exec session, on rcri's codec. Like
/// the Go client of kubectl and the kubelet it sends no WINDOW_UPDATE, so
/// servers do not stop at the 64 KiB initial window.
struct SpdyClient {
    stream: TcpStream,
    codec: Codec,
    /// Received bytes; those before `pos` are decoded already.
    buf: Vec<u8>,
    pos: usize,
    next_id: u32,
}

const STREAM_PROTOCOL: &str = "v4.channel.k8s.io";
const READ_CHUNK: usize = 256 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl SpdyClient {
    /// Sends the upgrade request and waits for 101.
    async fn upgrade(url: &str) -> anyhow::Result<SpdyClient> {
        let (host, path) = split_url(url)?;
        let mut stream = TcpStream::connect(host)
            .await
            .with_context(|| format!("cannot connect to {host}"))?;
        stream.set_nodelay(true)?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {STREAM_PROTOCOL}\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                bail!("{url}: response head over 64 KiB");
            }
            let n = tokio::time::timeout(READ_TIMEOUT, stream.read_buf(&mut buf))
                .await
                .with_context(|| format!("{url}: no answer to the upgrade"))??;
            if n == 0 {
                bail!("{url}: closed before answering the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if head.split(' ').nth(1) != Some("101") {
            bail!(
                "{url}: upgrade refused: {}",
                head.lines().next().unwrap_or("")
            );
        }
        Ok(SpdyClient {
            stream,
            codec: Codec::new(),
            buf,
            pos: end,
            next_id: 1,
        })
    }

    async fn send(&mut self, frame: Frame) -> anyhow::Result<()> {
        let mut out = Vec::new();
        self.codec.encode(&frame, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Opens a stream of `kind` (error, stdout, ...); returns its id.
    async fn open(&mut self, kind: &str) -> anyhow::Result<u32> {
        let id = self.next_id;
        self.next_id += 2;
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        })
        .await?;
        Ok(id)
    }

    /// The next frame; `None` once the server closed the connection.
    async fn recv(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            let (frame, used) = self.codec.decode_slice(&self.buf[self.pos..]);
            self.pos += used;
            if let Some(frame) = frame? {
                return Ok(Some(frame));
            }
            // Drop the decoded bytes once per read, not once per frame.
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.reserve(READ_CHUNK);
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .context("no data from the streaming server for 30 s")??;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// One exec session, as the client sees it.
struct ExecRun {
    /// From the Exec RPC to the end of both the stdout and the error stream.
    total: Duration,
    /// From the Exec RPC to the status on the error stream.
    status: Duration,
}

/// Runs `cmd` with stdout only; counts stdout without keeping it, checks
/// that it is exactly `stdout_len` bytes and that the status is Success.
async fn run_exec(
    client: &mut RuntimeServiceClient<Channel>,
    container: &str,
    cmd: &[String],
    stdout_len: u64,
) -> anyhow::Result<ExecRun> {
    let started = Instant::now();
    let url = client
        .exec(proto::ExecRequest {
            container_id: container.to_string(),
            cmd: cmd.to_vec(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .await
        .context("Exec")?
        .into_inner()
        .url;
    let mut spdy = SpdyClient::upgrade(&url).await?;
    let error_id = spdy.open("error").await?;
    let stdout_id = spdy.open("stdout").await?;
    let mut received = 0u64;
    let mut status = Vec::new();
    let mut status_at = None;
    // A stream ends with FIN or RST_STREAM: containerd (Go spdystream)
    // resets the error stream after the status rather than sending FIN.
    let mut error_done = false;
    let mut stdout_done = false;
    while !(error_done && stdout_done) {
        let Some(frame) = spdy.recv().await? else {
            break;
        };
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if stream_id == stdout_id {
                    received += data.len() as u64;
                    stdout_done |= flags & FLAG_FIN != 0;
                } else if stream_id == error_id {
                    if !data.is_empty() {
                        status.extend_from_slice(&data);
                        status_at = Some(started.elapsed());
                    }
                    error_done |= flags & FLAG_FIN != 0;
                }
            }
            Frame::SynReply {
                stream_id, flags, ..
            } if flags & FLAG_FIN != 0 => {
                stdout_done |= stream_id == stdout_id;
                error_done |= stream_id == error_id;
            }
            Frame::RstStream { stream_id, .. } => {
                stdout_done |= stream_id == stdout_id;
                error_done |= stream_id == error_id;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    let total = started.elapsed();
    // The content, not the framing, decides whether the exec worked.
    let Some(status_at) = status_at else {
        bail!("{url}: {cmd:?}: no status on the error stream ({received} bytes on stdout)");
    };
    let parsed: serde_json::Value = serde_json::from_slice(&status).with_context(|| {
        format!(
            "{url}: status is not JSON: {}",
            String::from_utf8_lossy(&status)
        )
    })?;
    if parsed["status"] != "Success" {
        bail!("{cmd:?} did not succeed: {parsed}");
    }
    if received != stdout_len {
        bail!("{cmd:?}: {received} bytes on stdout, expected {stdout_len}");
    }
    Ok(ExecRun {
        total,
        status: status_at,
    })
}

struct ExecBench {
    pid: u32,
    name: String,
    large: Summary,
    small: Summary,
    rss_before_kib: u64,
    peak_growth_kib: u64,
    retained_kib: i64,
    /// VmHWM after resetting it, or else the highest VmRSS sampled.
    peak_from_hwm: bool,
}

async fn bench_exec(
    endpoint: &str,
    image: &str,
    handler: &str,
    iterations: usize,
    size: u64,
    small: usize,
) -> anyhow::Result<ExecBench> {
    let path = endpoint
        .strip_prefix("unix://")
        .with_context(|| format!("{endpoint}: only unix:// endpoints are supported"))?;
    let pid = socket_owner(path)?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let channel = connect(endpoint).await?;
    ImageServiceClient::new(channel.clone())
        .pull_image(proto::PullImageRequest {
            image: spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("{endpoint}: PullImage {image}"))?;
    let mut client = RuntimeServiceClient::new(channel);
    let (pod, container, _) = start_pod(&mut client, image, handler, 20_000)
        .await
        .with_context(|| endpoint.to_string())?;
    let result = exec_series(&mut client, &container, pid, iterations, size, small).await;
    let removed = remove_pod(&mut client, &pod).await;
    let (large, small, memory) = result.with_context(|| endpoint.to_string())?;
    removed.with_context(|| endpoint.to_string())?;
    let (rss_before_kib, peak_kib, rss_after_kib, peak_from_hwm) = memory;
    Ok(ExecBench {
        pid,
        name,
        large,
        small,
        rss_before_kib,
        peak_growth_kib: peak_kib.saturating_sub(rss_before_kib),
        retained_kib: rss_after_kib as i64 - rss_before_kib as i64,
        peak_from_hwm,
    })
}

/// The execs of one endpoint; returns the large and small exec timings and
/// the server's (RSS before, peak RSS, RSS after, peak from VmHWM) in KiB.
async fn exec_series(
    client: &mut RuntimeServiceClient<Channel>,
    container: &str,
    pid: u32,
    iterations: usize,
    size: u64,
    small: usize,
) -> anyhow::Result<(Summary, Summary, (u64, u64, u64, bool))> {
    let large_cmd: Vec<String> = ["head", "-c", &size.to_string(), "/dev/zero"]
        .map(String::from)
        .to_vec();
    let small_cmd = vec!["true".to_string()];
    let rss_before = status_kib(pid, "VmRSS")?;
    // "5" resets VmHWM to the current RSS (Linux 4.0+); sampling VmRSS is
    // the fallback and backs it up.
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let sampled = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let sampled = sampled.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                if let Ok(rss) = status_kib(pid, "VmRSS") {
                    sampled.fetch_max(rss, Ordering::Relaxed);
                }
            }
        })
    };
    let runs = async {
        // One warm-up of each kind, not timed (but within the memory window).
        run_exec(client, container, &small_cmd, 0).await?;
        run_exec(client, container, &large_cmd, size).await?;
        let mut small_samples = Vec::with_capacity(small);
        for _ in 0..small {
            small_samples.push(run_exec(client, container, &small_cmd, 0).await?.status);
        }
        let mut large_samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            large_samples.push(run_exec(client, container, &large_cmd, size).await?.total);
        }
        anyhow::Ok((summarize(large_samples), summarize(small_samples)))
    }
    .await;
    sampler.abort();
    let (large, small) = runs?;
    let hwm = if hwm_reset {
        status_kib(pid, "VmHWM").ok()
    } else {
        None
    };
    let peak = hwm.unwrap_or(0).max(sampled.load(Ordering::Relaxed));
    let rss_after = status_kib(pid, "VmRSS")?;
    Ok((large, small, (rss_before, peak, rss_after, hwm.is_some())))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Exec {
            endpoints,
            image,
            iterations,
            size,
            small,
            handler,
        } => {
            if iterations == 0 || small == 0 {
                bail!("--iterations and --small must be at least 1");
            }
            println!(
                "exec over SPDY/3.1, stdout only, in one busybox container per endpoint: \
                 {iterations} x `head -c {size} /dev/zero`, {small} x `true`"
            );
            let mut reference: Option<(f64, f64, f64)> = None;
            for endpoint in &endpoints {
                let r = bench_exec(endpoint, &image, &handler, iterations, size, small).await?;
                let large = ms(r.large.median);
                let latency = ms(r.small.median);
                let growth = r.peak_growth_kib as f64;
                println!("\n{endpoint} (server: pid {} {})", r.pid, r.name);
                println!(
                    "  {:<36} {:>10} {:>10} {:>10}",
                    "exec", "median ms", "p95 ms", "MB/s"
                );
                println!(
                    "  {:<36} {:>10.1} {:>10.1} {:>10.1}",
                    format!("head -c {size}: RPC to end"),
                    large,
                    ms(r.large.p95),
                    size as f64 / 1e6 / r.large.median.as_secs_f64()
                );
                println!(
                    "  {:<36} {:>10.1} {:>10.1}",
                    "true: RPC to exit status",
                    latency,
                    ms(r.small.p95)
                );
                println!(
                    "  server RSS: {:.1} MiB before, peak growth {} KiB ({}), {:+} KiB after",
                    r.rss_before_kib as f64 / 1024.0,
                    r.peak_growth_kib,
                    if r.peak_from_hwm {
                        "VmHWM"
                    } else {
                        "sampled VmRSS"
                    },
                    r.retained_kib
                );
                let (ref_large, ref_latency, ref_growth) =
                    *reference.get_or_insert((large, latency, growth));
                println!(
                    "  ratio to the first endpoint: large exec time {:.2}, `true` latency {:.2}, peak RSS growth {:.2}",
                    large / ref_large,
                    latency / ref_latency,
                    growth / ref_growth.max(1.0)
                );
            }
        }
        Command::Pods {
            endpoints,
            image,
            iterations,
            memory_pods,
            handler,
            pss_match,
        } => {
            if iterations == 0 {
                bail!("--iterations must be at least 1");
            }
            println!(
                "pod lifecycle with one `sleep` container, {iterations} per endpoint; memory with {memory_pods} pods running"
            );
            let mut reference: Option<(f64, f64)> = None;
            for endpoint in &endpoints {
                let result = bench_pods(
                    endpoint,
                    &image,
                    &handler,
                    iterations,
                    memory_pods,
                    &pss_match,
                )
                .await?;
                println!("\n{endpoint}");
                println!("  {:<36} {:>10} {:>10}", "call", "median ms", "p95 ms");
                for (name, summary) in STEPS.iter().zip(&result.steps) {
                    println!(
                        "  {:<36} {:>10.1} {:>10.1}",
                        name,
                        ms(summary.median),
                        ms(summary.p95)
                    );
                }
                let total = ms(result.total.median);
                println!(
                    "  {:<36} {:>10.1} {:>10.1}",
                    "Run+Create+Start",
                    total,
                    ms(result.total.p95)
                );
                println!(
                    "  per-pod processes: {:.1}, PSS per pod: {:.0} KiB",
                    result.processes_per_pod, result.pss_per_pod_kib
                );
                let (ref_total, ref_pss) =
                    *reference.get_or_insert((total, result.pss_per_pod_kib));
                println!(
                    "  ratio to the first endpoint: start time {:.2}, memory per pod {:.2}",
                    total / ref_total,
                    result.pss_per_pod_kib / ref_pss.max(1.0)
                );
            }
        }
        Command::Pull {
            endpoints,
            image,
            iterations,
        } => {
            if iterations == 0 {
                bail!("--iterations must be at least 1");
            }
            println!(
                "PullImage {image}, {iterations} pulls per endpoint (image removed before each)"
            );
            println!(
                "{:<45} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
                "endpoint", "median ms", "p95 ms", "min ms", "max ms", "MB/s", "ratio"
            );
            let mut reference: Option<f64> = None;
            for endpoint in &endpoints {
                let (summary, size) = bench_pull(endpoint, &image, iterations).await?;
                let median = ms(summary.median);
                let ratio = median / *reference.get_or_insert(median);
                println!(
                    "{:<45} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.2}",
                    endpoint,
                    median,
                    ms(summary.p95),
                    ms(summary.min),
                    ms(summary.max),
                    size as f64 / 1e6 / summary.median.as_secs_f64(),
                    ratio
                );
            }
            println!("ratio: median time relative to the first endpoint (lower is faster)");
        }
    }
    Ok(())
}
