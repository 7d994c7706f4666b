//! The `rcri` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rcri::config::{Config, ConfigSources};

#[derive(Parser)]
#[command(
    name = "rcri",
    version,
    about = "A Kubernetes CRI runtime: each pod runs with the OCI runtime its RuntimeClass handler names",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI (RuntimeService and ImageService) on the configured unix socket.
    Serve(ConfigArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Supervise one container (started by `rcri serve`; not for people).
    #[command(hide = true)]
    Monitor {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a runtime's `exec --detach` and wait for its process (started by
    /// `rcri serve` for exec with a TTY; not for people).
    #[command(hide = true)]
    ExecWait {
        #[arg(long)]
        pid_file: PathBuf,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective one (exit 1 on errors).
    Check(ConfigArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// Configuration file [default: /etc/rcri/rcri.toml, or the embedded default if absent].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in directory whose *.toml files override the configuration in name order
    /// [default: /etc/rcri/rcri.d when --config is not given].
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn sources(&self) -> ConfigSources {
        ConfigSources {
            file: self.config.clone(),
            dropin_dir: self.config_dir.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // No logging set-up, no async runtime: the monitor stays small and single-threaded.
        Command::Monitor { config } => return rcri::monitor::run(&config),
        Command::ExecWait { pid_file, command } => {
            return rcri::monitor::exec_wait::run(&pid_file, &command);
        }
        Command::Serve(args) => serve(&args),
        Command::Config(ConfigCommand::Check(args)) => check(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rcri: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    Config::load(&args.sources()).map_err(|errors| {
        eprintln!("rcri: the configuration is invalid:");
        for error in &errors.0 {
            eprintln!("  {error}");
        }
        ExitCode::FAILURE
    })
}

fn check(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = match load(args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    for dropped in &config.dropped_handlers {
        eprintln!(
            "warning: handler {:?} is dropped: {}",
            dropped.name, dropped.reason
        );
    }
    println!("# rcri effective configuration");
    println!("# read from: {}", config.sources.join(", "));
    print!("{}", config.to_toml());
    Ok(ExitCode::SUCCESS)
}

fn serve(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = match load(args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    init_logging(config.log_level.as_deref())?;
    tracing::info!(sources = ?config.sources, "configuration loaded");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (shutdown, reload) = {
        let _context = runtime.enter();
        (
            rcri::server::Shutdown::install().context("cannot install signal handlers")?,
            rcri::server::Reload::install(args.sources())
                .context("cannot install signal handlers")?,
        )
    };
    let claimed = rcri::server::claim(&config)?;
    runtime.block_on(rcri::server::serve(config, claimed, shutdown, reload))?;
    Ok(ExitCode::SUCCESS)
}

/// `RUST_LOG` wins over `log_level` from the configuration; `info` otherwise.
fn init_logging(config_level: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env)
            .with_context(|| format!("RUST_LOG={env:?} is not a valid log filter"))?,
        _ => EnvFilter::try_new(config_level.unwrap_or("info"))
            .with_context(|| format!("log_level = {config_level:?} is not a valid log filter"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}
