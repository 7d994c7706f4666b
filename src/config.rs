//! rcri's configuration: TOML files and drop-ins, the embedded default, and
//! their validation into one effective [`Config`].
//!
//! Every value remembers the file and line it came from, so that an error can
//! say where to fix it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The main configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rcri/rcri.toml";
/// Drop-ins layered over the main file, in name order.
pub const DEFAULT_DROPIN_DIR: &str = "/etc/rcri/rcri.d";
/// The configuration used when no file exists at all.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");
const EMBEDDED_NAME: &str = "<embedded default>";

/// Handlers the embedded default looks for on PATH, in order of preference
/// for the default handler.
const AUTODETECTED_HANDLERS: [&str; 3] = ["runc", "crun", "runsc"];

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `--config FILE`: this file replaces `/etc/rcri/rcri.toml`.
    pub file: Option<PathBuf>,
    /// `--config-dir DIR`: drop-ins; defaults to `/etc/rcri/rcri.d` only when
    /// `file` is not given.
    pub dropin_dir: Option<PathBuf>,
}

/// One problem found in the configuration, already phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Every error found, so `rcri config check` can print all of them at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RuntimeType {
    /// A runc-compatible command line: runc, crun, runsc, youki.
    #[default]
    #[serde(rename = "oci")]
    Oci,
    /// A containerd shim v2 (e.g. Kata). Reserved: refused until supported.
    #[serde(rename = "shim-v2")]
    ShimV2,
}

/// A validated runtime handler: the target of a RuntimeClass `handler`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handler {
    pub name: String,
    pub runtime_type: RuntimeType,
    /// Absolute path of the runtime binary.
    pub runtime_path: PathBuf,
    /// The runtime's `--root`: its own state directory.
    pub runtime_root: PathBuf,
    /// Global flags passed before every verb, e.g. `--platform=systrap`.
    pub runtime_args: Vec<String>,
    pub privileged_without_host_devices: bool,
    /// Annotation keys (or prefixes ending in `*`) passed into the OCI spec.
    pub allowed_annotations: Vec<String>,
    /// How long `create` may take (sandboxed runtimes are slower); the call
    /// fails with DeadlineExceeded after it.
    #[serde(serialize_with = "serialize_duration")]
    pub create_timeout: std::time::Duration,
}

/// The default `create_timeout`: generous, for sandboxed runtimes.
pub const DEFAULT_CREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

fn serialize_duration<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// `500ms`, `90s`, `4m`, `1h`: a number and a unit.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "s" => number.checked_mul(1000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    (millis > 0).then(|| std::time::Duration::from_millis(millis))
}

fn format_duration(d: std::time::Duration) -> String {
    let millis = d.as_millis();
    if millis.is_multiple_of(3_600_000) {
        format!("{}h", millis / 3_600_000)
    } else if millis.is_multiple_of(60_000) {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
const DEFAULT_CNI_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

/// Where the pod network's CNI configuration and plugins are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// The first valid `.conflist`/`.conf` here, in name order, is the pod network.
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// Where the streaming server (exec, attach, port-forward) listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamingConfig {
    /// The IP address the streaming server binds and its URLs name.
    pub address: std::net::IpAddr,
    /// The TCP port; 0 picks any free port.
    pub port: u16,
    /// A streaming session with no traffic either way for this long ends.
    #[serde(serialize_with = "serialize_duration")]
    pub idle_timeout: std::time::Duration,
    /// Serve HTTPS with this certificate chain and key (PEM); both or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<StreamingTls>,
}

/// The streaming server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamingTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The default `streaming.idle_timeout`, as the kubelet's own default.
pub const DEFAULT_STREAMING_IDLE_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(4 * 3600);

/// How images are pulled from one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryConfig {
    /// Endpoints tried in order before the registry itself, e.g. `http://127.0.0.1:5000`.
    pub mirrors: Vec<String>,
    /// Plain HTTP or TLS without certificate verification is allowed.
    pub insecure: bool,
}

/// A mirror is an http(s) URL with a host.
fn check_mirror_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if rest.split('/').next().unwrap_or_default().is_empty() {
        return Err("has no host".to_string());
    }
    Ok(())
}

/// A non-default handler left out because it cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedHandler {
    pub name: String,
    pub reason: String,
}

/// The effective, validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup_driver: CgroupDriver,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    pub default_handler: String,
    pub handlers: BTreeMap<String, Handler>,
    /// Per-registry pull settings, keyed by the registry's name in image
    /// references (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub registries: BTreeMap<String, RegistryConfig>,
    pub network: NetworkConfig,
    pub streaming: StreamingConfig,
    /// Files read, in order (or `<embedded default>`).
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_handlers: Vec<DroppedHandler>,
}

impl Config {
    /// Loads, merges and validates the configuration.
    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigErrors> {
        let path_env = std::env::var_os("PATH").unwrap_or_default();
        let texts = read_sources(sources).map_err(|e| ConfigErrors(vec![e]))?;
        Self::from_texts(&texts, &path_env)
    }

    /// Merges and validates already-read configuration texts. `texts` pairs a
    /// source name with its TOML; the embedded default is marked by its name.
    pub fn from_texts(
        texts: &[(String, String)],
        path_env: &std::ffi::OsStr,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut merged = MergedConfig::default();
        let mut autodetect = false;
        for (name, text) in texts {
            match toml::from_str::<FileConfig>(text) {
                Ok(file) => {
                    let is_embedded = name == EMBEDDED_NAME;
                    autodetect |= is_embedded;
                    merged.apply(file, &Source::new(name, text));
                }
                Err(e) => errors.push(parse_error(name, text, &e)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        if merged.handlers.is_empty() {
            // No file names a handler: offer whichever known runtimes exist.
            autodetect = true;
            let embedded: FileConfig =
                toml::from_str(EMBEDDED_DEFAULT).expect("embedded default config is valid TOML");
            let mut handlers_only = MergedConfig::default();
            handlers_only.apply(embedded, &Source::new(EMBEDDED_NAME, EMBEDDED_DEFAULT));
            merged.handlers = handlers_only.handlers;
        }
        let sources = texts.iter().map(|(n, _)| n.clone()).collect();
        merged.validate(sources, autodetect, path_env)
    }
}

/// Reads the configured files: `(name, text)` in merge order.
fn read_sources(sources: &ConfigSources) -> Result<Vec<(String, String)>, ConfigError> {
    let mut texts = Vec::new();
    let main_file = sources
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    let dropin_dir = match (&sources.file, &sources.dropin_dir) {
        (_, Some(dir)) => Some(dir.clone()),
        (None, None) => Some(PathBuf::from(DEFAULT_DROPIN_DIR)),
        (Some(_), None) => None,
    };
    match std::fs::read_to_string(&main_file) {
        Ok(text) => texts.push((main_file.display().to_string(), text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && sources.file.is_none() => {
            texts.push((EMBEDDED_NAME.to_string(), EMBEDDED_DEFAULT.to_string()));
        }
        Err(e) => {
            return Err(ConfigError(format!(
                "{}: cannot read configuration file: {e}",
                main_file.display()
            )));
        }
    }
    if let Some(dir) = dropin_dir {
        for path in dropin_files(&dir)? {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!("{}: cannot read drop-in: {e}", path.display()))
            })?;
            texts.push((path.display().to_string(), text));
        }
    }
    Ok(texts)
}

/// The `*.toml` files of a drop-in directory, in name order. A missing
/// directory has none.
fn dropin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError(format!(
                "{}: cannot read drop-in directory: {e}",
                dir.display()
            )));
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn parse_error(name: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let location = match error.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            format!("{name}:{line}:{column}")
        }
        None => name.to_string(),
    };
    let message = error.message().trim_end();
    // Type errors point at a value; name its key so the operator knows what to fix.
    let key = error
        .span()
        .filter(|_| !message.starts_with("unknown field"))
        .and_then(|span| key_at(text, span.start));
    match key {
        Some(key) => ConfigError(format!("{location}: {key}: {message}")),
        None => ConfigError(format!("{location}: {message}")),
    }
}

/// The dotted key assigned on the line holding `offset`, with the table
/// header above it: `handlers.runc.runtime_path`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let header = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        (l.starts_with('[') && !l.starts_with("[[")).then(|| {
            l.trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string()
        })
    });
    Some(match header {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

// ---- the file format ----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<Spanned<PathBuf>>,
    state_dir: Option<Spanned<PathBuf>>,
    run_dir: Option<Spanned<PathBuf>>,
    cgroup_driver: Option<Spanned<CgroupDriver>>,
    default_handler: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    #[serde(default)]
    handlers: BTreeMap<Spanned<String>, FileHandler>,
    #[serde(default)]
    registries: BTreeMap<Spanned<String>, FileRegistry>,
    network: Option<FileNetwork>,
    streaming: Option<FileStreaming>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStreaming {
    address: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
    tls_cert_file: Option<Spanned<PathBuf>>,
    tls_key_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    cni_conf_dir: Option<Spanned<PathBuf>>,
    cni_bin_dirs: Option<Spanned<Vec<PathBuf>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    mirrors: Option<Spanned<Vec<String>>>,
    insecure: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHandler {
    runtime_type: Option<Spanned<RuntimeType>>,
    runtime_path: Option<Spanned<PathBuf>>,
    runtime_root: Option<Spanned<PathBuf>>,
    runtime_args: Option<Spanned<Vec<String>>>,
    privileged_without_host_devices: Option<Spanned<bool>>,
    allowed_annotations: Option<Spanned<Vec<String>>>,
    create_timeout: Option<Spanned<String>>,
}

// ---- merging, keeping where each value came from --------------------------

/// Where a value was set: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin(String);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl<'a> Source<'a> {
    fn new(name: &'a str, text: &'a str) -> Self {
        Source { name, text }
    }

    fn origin<T>(&self, value: &Spanned<T>) -> Origin {
        let (line, _) = line_and_column(self.text, value.span().start);
        Origin(format!("{}:{line}", self.name))
    }

    fn take<T>(&self, value: Option<Spanned<T>>) -> Option<(T, Origin)> {
        value.map(|v| {
            let origin = self.origin(&v);
            (v.into_inner(), origin)
        })
    }
}

type Set<T> = Option<(T, Origin)>;

/// Later sources override earlier ones, field by field.
fn override_with<T>(slot: &mut Set<T>, value: Set<T>) {
    if value.is_some() {
        *slot = value;
    }
}

#[derive(Default)]
struct MergedConfig {
    socket: Set<PathBuf>,
    state_dir: Set<PathBuf>,
    run_dir: Set<PathBuf>,
    cgroup_driver: Set<CgroupDriver>,
    default_handler: Set<String>,
    log_level: Set<String>,
    handlers: BTreeMap<String, MergedHandler>,
    registries: BTreeMap<String, MergedRegistry>,
    cni_conf_dir: Set<PathBuf>,
    cni_bin_dirs: Set<Vec<PathBuf>>,
    streaming_address: Set<String>,
    streaming_port: Set<i64>,
    streaming_idle_timeout: Set<String>,
    streaming_tls_cert_file: Set<PathBuf>,
    streaming_tls_key_file: Set<PathBuf>,
}

#[derive(Default)]
struct MergedRegistry {
    mirrors: Set<Vec<String>>,
    insecure: Set<bool>,
}

#[derive(Default)]
struct MergedHandler {
    defined_at: Option<Origin>,
    runtime_type: Set<RuntimeType>,
    runtime_path: Set<PathBuf>,
    runtime_root: Set<PathBuf>,
    runtime_args: Set<Vec<String>>,
    privileged_without_host_devices: Set<bool>,
    allowed_annotations: Set<Vec<String>>,
    create_timeout: Set<String>,
}

impl MergedConfig {
    fn apply(&mut self, file: FileConfig, src: &Source<'_>) {
        override_with(&mut self.socket, src.take(file.socket));
        override_with(&mut self.state_dir, src.take(file.state_dir));
        override_with(&mut self.run_dir, src.take(file.run_dir));
        override_with(&mut self.cgroup_driver, src.take(file.cgroup_driver));
        override_with(&mut self.default_handler, src.take(file.default_handler));
        override_with(&mut self.log_level, src.take(file.log_level));
        if let Some(network) = file.network {
            override_with(&mut self.cni_conf_dir, src.take(network.cni_conf_dir));
            override_with(&mut self.cni_bin_dirs, src.take(network.cni_bin_dirs));
        }
        if let Some(streaming) = file.streaming {
            override_with(&mut self.streaming_address, src.take(streaming.address));
            override_with(&mut self.streaming_port, src.take(streaming.port));
            override_with(
                &mut self.streaming_idle_timeout,
                src.take(streaming.idle_timeout),
            );
            override_with(
                &mut self.streaming_tls_cert_file,
                src.take(streaming.tls_cert_file),
            );
            override_with(
                &mut self.streaming_tls_key_file,
                src.take(streaming.tls_key_file),
            );
        }
        for (name, r) in file.registries {
            let merged = self.registries.entry(name.into_inner()).or_default();
            override_with(&mut merged.mirrors, src.take(r.mirrors));
            override_with(&mut merged.insecure, src.take(r.insecure));
        }
        for (name, h) in file.handlers {
            let origin = src.origin(&name);
            let merged = self.handlers.entry(name.into_inner()).or_default();
            merged.defined_at.get_or_insert(origin);
            override_with(&mut merged.runtime_type, src.take(h.runtime_type));
            override_with(&mut merged.runtime_path, src.take(h.runtime_path));
            override_with(&mut merged.runtime_root, src.take(h.runtime_root));
            override_with(&mut merged.runtime_args, src.take(h.runtime_args));
            override_with(
                &mut merged.privileged_without_host_devices,
                src.take(h.privileged_without_host_devices),
            );
            override_with(
                &mut merged.allowed_annotations,
                src.take(h.allowed_annotations),
            );
            override_with(&mut merged.create_timeout, src.take(h.create_timeout));
        }
    }

    fn validate(
        self,
        sources: Vec<String>,
        autodetect: bool,
        path_env: &std::ffi::OsStr,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut absolute_dir = |key: &str, value: Set<PathBuf>, default: &str| -> PathBuf {
            match value {
                Some((path, origin)) if !path.is_absolute() => {
                    errors.push(ConfigError(format!(
                        "{origin}: {key} = {:?} must be an absolute path",
                        path.display().to_string()
                    )));
                    path
                }
                Some((path, _)) => path,
                None => PathBuf::from(default),
            }
        };
        let socket = absolute_dir("socket", self.socket, "/run/rcri/rcri.sock");
        let state_dir = absolute_dir("state_dir", self.state_dir, "/var/lib/rcri");
        let run_dir = absolute_dir("run_dir", self.run_dir, "/run/rcri");
        let cni_conf_dir = absolute_dir(
            "network.cni_conf_dir",
            self.cni_conf_dir,
            DEFAULT_CNI_CONF_DIR,
        );
        let cgroup_driver = self.cgroup_driver.map(|(d, _)| d).unwrap_or_default();
        let log_level = self.log_level.map(|(level, origin)| {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
                errors.push(ConfigError(format!(
                    "{origin}: log_level = {level:?} is not a valid log filter (e.g. \"info\" or \"rcri=debug\"): {e}"
                )));
            }
            level
        });

        let cni_bin_dirs = match self.cni_bin_dirs {
            Some((dirs, origin)) => {
                for dir in dirs.iter().filter(|d| !d.is_absolute()) {
                    errors.push(ConfigError(format!(
                        "{origin}: network.cni_bin_dirs entry {:?} must be an absolute path",
                        dir.display().to_string()
                    )));
                }
                dirs
            }
            None => DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect(),
        };
        let streaming = StreamingConfig {
            address: match self.streaming_address {
                Some((text, origin)) => text.parse().unwrap_or_else(|_| {
                    errors.push(ConfigError(format!(
                        "{origin}: streaming.address = {text:?} is not an IP address"
                    )));
                    std::net::Ipv4Addr::LOCALHOST.into()
                }),
                None => std::net::Ipv4Addr::LOCALHOST.into(),
            },
            port: match self.streaming_port {
                Some((port, origin)) => u16::try_from(port).unwrap_or_else(|_| {
                    errors.push(ConfigError(format!(
                        "{origin}: streaming.port = {port} is not a TCP port (0 to 65535; 0 picks a free one)"
                    )));
                    0
                }),
                None => 0,
            },
            idle_timeout: match self.streaming_idle_timeout {
                Some((text, origin)) => parse_duration(&text).unwrap_or_else(|| {
                    errors.push(ConfigError(format!(
                        "{origin}: streaming.idle_timeout = {text:?} is not a duration such as \"30m\" or \"4h\""
                    )));
                    DEFAULT_STREAMING_IDLE_TIMEOUT
                }),
                None => DEFAULT_STREAMING_IDLE_TIMEOUT,
            },
            tls: match (self.streaming_tls_cert_file, self.streaming_tls_key_file) {
                (None, None) => None,
                (Some((cert_file, origin)), Some((key_file, _))) => {
                    for path in [&cert_file, &key_file] {
                        if !path.is_absolute() {
                            errors.push(ConfigError(format!(
                                "{origin}: streaming TLS file {} must be an absolute path",
                                path.display()
                            )));
                        }
                    }
                    Some(StreamingTls {
                        cert_file,
                        key_file,
                    })
                }
                (Some((_, origin)), None) | (None, Some((_, origin))) => {
                    errors.push(ConfigError(format!(
                        "{origin}: streaming.tls_cert_file and streaming.tls_key_file must be set together"
                    )));
                    None
                }
            },
        };
        let mut registries = BTreeMap::new();
        for (host, merged) in self.registries {
            let (mirrors, origin) = merged
                .mirrors
                .map(|(m, o)| (m, Some(o)))
                .unwrap_or_default();
            for mirror in &mirrors {
                if let Err(why) = check_mirror_url(mirror) {
                    let at = origin
                        .as_ref()
                        .map(|o| format!("{o}: "))
                        .unwrap_or_default();
                    errors.push(ConfigError(format!(
                        "{at}registries.\"{host}\".mirrors: {mirror:?} {why}"
                    )));
                }
            }
            registries.insert(
                host,
                RegistryConfig {
                    mirrors,
                    insecure: merged.insecure.map(|(i, _)| i).unwrap_or(false),
                },
            );
        }

        let mut handlers = BTreeMap::new();
        let mut invalid: Vec<(String, String)> = Vec::new();
        for (name, merged) in self.handlers {
            match merged.validate(&name, &run_dir, path_env) {
                Ok(handler) => {
                    handlers.insert(name, handler);
                }
                Err(reason) => invalid.push((name, reason)),
            }
        }
        if autodetect {
            // Runtimes the embedded default merely offers are not errors when absent.
            invalid.retain(|(name, reason)| {
                !(AUTODETECTED_HANDLERS.contains(&name.as_str())
                    && reason.contains("was not found on PATH"))
            });
        }

        let default_handler = match self.default_handler {
            Some((name, origin)) => Some((name, Some(origin))),
            None => AUTODETECTED_HANDLERS
                .iter()
                .find(|n| handlers.contains_key(**n))
                .map(|n| n.to_string())
                .or_else(|| {
                    (handlers.len() + invalid.len() == 1)
                        .then(|| handlers.keys().chain(invalid.iter().map(|(n, _)| n)).next())
                        .flatten()
                        .cloned()
                })
                .map(|n| (n, None)),
        };
        let default_handler = match default_handler {
            None => {
                errors.push(ConfigError(no_default_message(&invalid)));
                String::new()
            }
            Some((name, origin)) => {
                let at = origin.map(|o| format!("{o}: ")).unwrap_or_default();
                if let Some((_, reason)) = invalid.iter().find(|(n, _)| *n == name) {
                    errors.push(ConfigError(format!(
                        "{at}default handler {name:?} is unusable: {reason}"
                    )));
                } else if !handlers.contains_key(&name) {
                    errors.push(ConfigError(format!(
                        "{at}default_handler = {name:?} names no configured handler; configured handlers: {}",
                        list_or_none(handlers.keys())
                    )));
                }
                name
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let dropped_handlers = invalid
            .into_iter()
            .map(|(name, reason)| DroppedHandler { name, reason })
            .collect();
        Ok(Config {
            socket,
            state_dir,
            run_dir,
            cgroup_driver,
            log_level,
            default_handler,
            handlers,
            registries,
            network: NetworkConfig {
                cni_conf_dir,
                cni_bin_dirs,
            },
            streaming,
            sources,
            dropped_handlers,
        })
    }
}

fn no_default_message(invalid: &[(String, String)]) -> String {
    let mut message = String::from(
        "no usable runtime handler: install runc, crun or runsc, or configure [handlers.NAME] with a runtime_path",
    );
    for (name, reason) in invalid {
        message.push_str(&format!("\n  handler {name:?}: {reason}"));
    }
    message
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl MergedHandler {
    /// Checks one handler; the error is the reason it cannot be used.
    fn validate(
        self,
        name: &str,
        run_dir: &Path,
        path_env: &std::ffi::OsStr,
    ) -> Result<Handler, String> {
        let at = |origin: &Origin| format!(" (set at {origin})");
        let defined = self.defined_at.as_ref().map(at).unwrap_or_default();
        if !is_dns_label(name) {
            return Err(format!(
                "the name {name:?} is not a valid RuntimeClass handler (lowercase letters, digits and '-', at most 63, starting and ending alphanumeric){defined}"
            ));
        }
        let runtime_type = self
            .runtime_type
            .as_ref()
            .map(|(t, _)| *t)
            .unwrap_or_default();
        if runtime_type == RuntimeType::ShimV2 {
            let origin = self
                .runtime_type
                .as_ref()
                .map(|(_, o)| at(o))
                .unwrap_or_default();
            return Err(format!(
                "runtime_type \"shim-v2\" is reserved for containerd shim-v2 runtimes and not supported yet; use \"oci\"{origin}"
            ));
        }
        let runtime_path = match &self.runtime_path {
            Some((path, origin)) => {
                if !path.is_absolute() {
                    return Err(format!(
                        "runtime_path {:?} is not an absolute path{}",
                        path.display().to_string(),
                        at(origin)
                    ));
                }
                check_executable(path)
                    .map_err(|why| format!("{}: {why}{}", path.display(), at(origin)))?;
                path.clone()
            }
            None => find_on_path(name, path_env).ok_or_else(|| {
                format!(
                    "{name:?} was not found on PATH ({}); install it or set runtime_path{defined}",
                    path_env.to_string_lossy()
                )
            })?,
        };
        let runtime_root = match self.runtime_root {
            Some((root, origin)) if !root.is_absolute() => {
                return Err(format!(
                    "runtime_root {:?} is not an absolute path{}",
                    root.display().to_string(),
                    at(&origin)
                ));
            }
            Some((root, _)) => root,
            None => run_dir.join("runtimes").join(name),
        };
        let allowed_annotations = self.allowed_annotations.map(|(a, o)| (a, Some(o)));
        let (allowed_annotations, annotations_origin) = allowed_annotations.unwrap_or_default();
        for pattern in &allowed_annotations {
            let star = pattern.find('*');
            if pattern.is_empty() || star.is_some_and(|i| i != pattern.len() - 1) {
                let origin = annotations_origin.as_ref().map(at).unwrap_or_default();
                return Err(format!(
                    "allowed_annotations entry {pattern:?} must be a key or a prefix ending in a single '*'{origin}"
                ));
            }
        }
        let create_timeout = match &self.create_timeout {
            None => DEFAULT_CREATE_TIMEOUT,
            Some((text, origin)) => parse_duration(text).ok_or_else(|| {
                format!(
                    "create_timeout {text:?} is not a duration such as \"90s\" or \"4m\"{}",
                    at(origin)
                )
            })?,
        };
        Ok(Handler {
            name: name.to_string(),
            runtime_type,
            create_timeout,
            runtime_path,
            runtime_root,
            runtime_args: self.runtime_args.map(|(a, _)| a).unwrap_or_default(),
            privileged_without_host_devices: self
                .privileged_without_host_devices
                .map(|(b, _)| b)
                .unwrap_or(false),
            allowed_annotations,
        })
    }
}

/// RuntimeClass handlers must be DNS labels (RFC 1123).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Why `path` cannot be run, if it cannot.
pub fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such file".to_string()),
        Err(e) => Err(e.to_string()),
        Ok(meta) if !meta.is_file() => Err("not a regular file".to_string()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Err("not executable (no execute permission)".to_string())
        }
        Ok(_) => Ok(()),
    }
}

fn find_on_path(name: &str, path_env: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_env)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| check_executable(candidate).is_ok())
}

impl Config {
    /// The configuration as TOML, as `rcri config check` prints it.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Shown<'a> {
            socket: &'a Path,
            state_dir: &'a Path,
            run_dir: &'a Path,
            cgroup_driver: CgroupDriver,
            #[serde(skip_serializing_if = "Option::is_none")]
            log_level: Option<&'a str>,
            default_handler: &'a str,
            handlers: BTreeMap<&'a str, ShownHandler<'a>>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            registries: &'a BTreeMap<String, RegistryConfig>,
            network: &'a NetworkConfig,
            streaming: &'a StreamingConfig,
        }
        #[derive(Serialize)]
        struct ShownHandler<'a> {
            runtime_type: RuntimeType,
            runtime_path: &'a Path,
            runtime_root: &'a Path,
            runtime_args: &'a [String],
            privileged_without_host_devices: bool,
            allowed_annotations: &'a [String],
            create_timeout: String,
        }
        let shown = Shown {
            socket: &self.socket,
            state_dir: &self.state_dir,
            run_dir: &self.run_dir,
            cgroup_driver: self.cgroup_driver,
            log_level: self.log_level.as_deref(),
            default_handler: &self.default_handler,
            handlers: self
                .handlers
                .iter()
                .map(|(name, h)| {
                    (
                        name.as_str(),
                        ShownHandler {
                            runtime_type: h.runtime_type,
                            runtime_path: &h.runtime_path,
                            runtime_root: &h.runtime_root,
                            runtime_args: &h.runtime_args,
                            privileged_without_host_devices: h.privileged_without_host_devices,
                            allowed_annotations: &h.allowed_annotations,
                            create_timeout: format_duration(h.create_timeout),
                        },
                    )
                })
                .collect(),
            registries: &self.registries,
            network: &self.network,
            streaming: &self.streaming,
        };
        toml::to_string(&shown).expect("the effective configuration serializes to TOML")
    }

    /// The configuration as JSON, as `Status` verbose info carries it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the effective configuration serializes to JSON")
    }
}

#[cfg(test)]
mod tests;
