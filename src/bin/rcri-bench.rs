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
//! The first endpoint is the reference; the others are reported as ratios
//! of it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rcri::proto::{
    self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
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

/// Starts one pod with one `sleep` container; returns the pod id and the
/// time of each step.
async fn start_pod(
    client: &mut RuntimeServiceClient<Channel>,
    image: &str,
    handler: &str,
    i: usize,
) -> anyhow::Result<(String, [Duration; 3])> {
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
            container_id: container,
        })
        .await
        .context("StartContainer")?;
    Ok((pod, [run, create, t.elapsed()]))
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
        let (pod, started) = start_pod(&mut client, image, handler, i)
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
