//! `rcri-bench`: measures CRI calls against any CRI endpoint (rcri,
//! containerd, CRI-O), so that runtimes are compared side by side in one run.
//!
//! ```text
//! rcri-bench pull --endpoint unix:///run/containerd/containerd.sock \
//!                 --endpoint unix:///run/rcri/rcri.sock --image busybox:1.36 -n 20
//! ```
//! The first endpoint is the reference; the others are reported as ratios
//! of it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rcri::proto::{self, image_service_client::ImageServiceClient};
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
