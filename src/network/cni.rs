//! The CNI invoker: finds the pod network in the conf dir, runs its plugin
//! chain for ADD and DEL as the CNI specification describes, and parses what
//! the plugins answer.
//!
//! What the runtime owes a plugin, in short: the command and the container's
//! coordinates in `CNI_*` environment variables, the plugin's own object from
//! the configuration list on stdin with the list's `name` and `cniVersion`
//! copied in, the previous plugin's result as `prevResult` (for DEL: the
//! cached final result of the ADD), and under `runtimeConfig` only the dynamic
//! values whose capability the plugin declares. Plugins answer with a result
//! (ADD) or nothing (DEL) on stdout and exit 0, or with an error object on
//! stdout and a non-zero exit.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

/// Where the pod network's configuration lives unless configured otherwise.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Where plugin executables are searched, in order, unless configured otherwise.
pub const DEFAULT_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];
/// How long one plugin may run before it (and its process group) is killed.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// `PATH` for plugins when rcri itself has none (plugins run `iptables`, `ip`…).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// File name endings that count as network configuration.
const CONFIG_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];

/// Where the network configuration and the plugins are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// The first valid `.conflist`/`.conf`/`.json` here, in name order, is the pod network.
    pub conf_dir: PathBuf,
    /// Searched in order for each plugin's `type`; also passed as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// One `hostPort` mapping of a pod, for plugins with the `portMappings` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp` (lowercased before it is passed on).
    pub protocol: String,
    /// Empty for every host address.
    pub host_ip: String,
}

/// The pod's DNS settings, for plugins with the `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Traffic shaping in bits per second (rates) and bits (bursts), for plugins
/// with the `bandwidth` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// What one ADD or DEL is about: the pod, its namespace and interface, and
/// the dynamic values plugins may ask for through capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: String,
    /// The pinned network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface inside the namespace (`CNI_IFNAME`); empty means `eth0`.
    pub ifname: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    /// Mappings with a `host_port` of 0 or less are not passed on.
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<Dns>,
    pub bandwidth: Option<Bandwidth>,
}

/// The outcome of a successful ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachResult {
    /// The pod's addresses in result order (host-side interfaces left out).
    pub ips: Vec<IpAddr>,
    /// The last plugin's result as it printed it: keep it for DEL.
    pub result_json: String,
    /// The network's `name`.
    pub network_name: String,
    /// The configuration list used (a single-plugin `.conf` wrapped as a
    /// list): keep it so that DEL runs the same chain even if the conf dir
    /// has changed meanwhile.
    pub config_json: String,
}

impl AttachResult {
    /// The addresses in the order CRI reports them: the first IPv4 address
    /// first (it becomes `ip`), then the others in result order.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips = self.ips.clone();
        if let Some(v4) = ips.iter().position(IpAddr::is_ipv4) {
            let first = ips.remove(v4);
            ips.insert(0, first);
        }
        ips
    }
}

/// Why an ADD or DEL failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network configuration; the message says what is missing.
    #[error("network plugin not ready: {0}")]
    NotReady(String),
    /// The configuration passed to DEL (cached from ADD) cannot be parsed.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// The plugin's executable is in none of the bin dirs.
    #[error("plugin \"{plugin}\" not found in {search_path}")]
    PluginNotFound { plugin: String, search_path: String },
    /// The plugin could not be started or waited for.
    #[error("plugin {plugin} could not be run: {source}")]
    Exec {
        plugin: String,
        #[source]
        source: io::Error,
    },
    /// The plugin exited non-zero; `code`, `msg` and `details` come from its
    /// error object (code 0 when it printed none).
    #[error("plugin {plugin} failed: {msg}{}", details_suffix(.details))]
    Plugin {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },
    /// The plugin ran longer than the timeout and was killed.
    #[error("plugin {plugin} timed out after {}s and was killed", .timeout.as_secs_f32())]
    Timeout { plugin: String, timeout: Duration },
    /// The plugin exited 0 but its output is not a usable result.
    #[error("plugin {plugin} returned an invalid result: {reason}")]
    InvalidResult { plugin: String, reason: String },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

/// The CNI invoker. Cheap to clone; clones share the log de-duplication state.
#[derive(Debug, Clone)]
pub struct Cni {
    config: Arc<CniConfig>,
    plugin_timeout: Duration,
    /// The skipped-config reasons last logged, so that a `Status` every few
    /// seconds does not repeat the same warnings.
    last_logged: Arc<Mutex<String>>,
}

/// A parsed configuration list.
#[derive(Debug, Clone)]
pub(crate) struct NetworkList {
    pub(crate) name: String,
    pub(crate) cni_version: Option<String>,
    pub(crate) plugins: Vec<Map<String, Value>>,
    /// The list as JSON (what [`AttachResult::config_json`] carries).
    pub(crate) json: String,
}

impl NetworkList {
    fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether DEL gets the cached result as `prevResult` (introduced by
    /// spec 0.4.0; older plugins would not expect it).
    fn del_takes_prev_result(&self) -> bool {
        match self.cni_version.as_deref().map(parse_version) {
            None => false,
            Some(Some(version)) => version >= (0, 4, 0),
            Some(None) => true,
        }
    }
}

impl Cni {
    /// An invoker for the given directories, with [`DEFAULT_PLUGIN_TIMEOUT`].
    pub fn new(config: CniConfig) -> Cni {
        Cni {
            config: Arc::new(config),
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
            last_logged: Arc::default(),
        }
    }

    /// The same invoker with another per-plugin timeout.
    pub fn with_plugin_timeout(mut self, timeout: Duration) -> Cni {
        self.plugin_timeout = timeout;
        self
    }

    /// The directories this invoker uses.
    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// Re-reads the conf dir (cheap, blocking; meant for every `Status`) and
    /// answers the name of the pod network, or what is missing or broken:
    /// `no network config found in DIR`, or `no valid network config in DIR:`
    /// followed by each file's reason, such as
    /// `10-x.conflist: plugin "bridge" not found in /opt/cni/bin:/usr/lib/cni`.
    pub fn network_status(&self) -> Result<String, String> {
        self.load().map(|list| list.name)
    }

    /// Runs ADD for the whole chain of the current pod network. When a plugin
    /// fails, DEL runs for it and every plugin before it (in reverse, best
    /// effort) so that nothing stays allocated, and the plugin's error is
    /// returned.
    pub async fn add(&self, request: &AttachRequest) -> Result<AttachResult, CniError> {
        let this = self.clone();
        let list = tokio::task::spawn_blocking(move || this.load())
            .await
            .map_err(|e| CniError::NotReady(format!("loading the network config: {e}")))?
            .map_err(CniError::NotReady)?;
        self.add_list(&list, request).await
    }

    /// Runs DEL for the whole chain in reverse order. `config_json` is the
    /// list cached from ADD ([`AttachResult::config_json`]); without it the
    /// current pod network is used. `cached_result` is the ADD's result,
    /// passed as `prevResult` (None after a crash is fine).
    ///
    /// Idempotent as the plugins are, and a namespace that is gone (or no
    /// longer pinned) is passed as an empty `CNI_NETNS`, as the spec allows.
    /// Every plugin gets its DEL even when one before it failed; the first
    /// error is returned.
    pub async fn del(
        &self,
        request: &AttachRequest,
        config_json: Option<&str>,
        cached_result: Option<&str>,
    ) -> Result<(), CniError> {
        let list = match config_json {
            Some(json) => {
                parse_network("cached config", json.as_bytes()).map_err(CniError::InvalidConfig)?
            }
            None => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.load())
                    .await
                    .map_err(|e| CniError::NotReady(format!("loading the network config: {e}")))?
                    .map_err(CniError::NotReady)?
            }
        };
        let prev = cached_result.and_then(|raw| match serde_json::from_str::<Value>(raw) {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(container = %request.container_id, "ignoring the unparsable cached CNI result: {e}");
                None
            }
        });
        let netns = netns_for_del(&request.netns);
        self.del_plugins(&list, list.plugins.len(), prev.as_ref(), request, &netns)
            .await
    }

    async fn add_list(
        &self,
        list: &NetworkList,
        request: &AttachRequest,
    ) -> Result<AttachResult, CniError> {
        let netns = request.netns.to_string_lossy().into_owned();
        let mut prev: Option<(Value, String)> = None;
        for index in 0..list.plugins.len() {
            let plugin = list.plugin_type(index).to_string();
            let stdin = plugin_stdin(list, index, prev.as_ref().map(|p| &p.0), request);
            let outcome = match self.exec(&plugin, "ADD", request, &netns, stdin).await {
                Ok(out) => parse_add_output(&plugin, &out).map(|parsed| {
                    if let Some(parsed) = parsed {
                        prev = Some(parsed);
                    }
                }),
                Err(e) => Err(e),
            };
            if let Err(error) = outcome {
                tracing::warn!(container = %request.container_id, network = %list.name, "CNI ADD failed, rolling back: {error}");
                self.rollback(
                    list,
                    index + 1,
                    prev.as_ref().map(|p| &p.0),
                    request,
                    &netns,
                )
                .await;
                return Err(error);
            }
        }
        let (result, raw) = prev.unwrap_or_else(|| {
            // No plugin printed anything: an empty result of the list's version.
            let mut empty = Map::new();
            if let Some(version) = &list.cni_version {
                empty.insert("cniVersion".into(), Value::String(version.clone()));
            }
            let raw = Value::Object(empty.clone()).to_string();
            (Value::Object(empty), raw)
        });
        match result_ips(&result) {
            Ok(ips) => Ok(AttachResult {
                ips,
                result_json: raw,
                network_name: list.name.clone(),
                config_json: list.json.clone(),
            }),
            Err(reason) => {
                let plugin = list.plugin_type(list.plugins.len() - 1).to_string();
                let error = CniError::InvalidResult { plugin, reason };
                self.rollback(list, list.plugins.len(), Some(&result), request, &netns)
                    .await;
                Err(error)
            }
        }
    }

    /// Best-effort DEL of the first `count` plugins after a failed ADD.
    async fn rollback(
        &self,
        list: &NetworkList,
        count: usize,
        prev: Option<&Value>,
        request: &AttachRequest,
        netns: &str,
    ) {
        if let Err(e) = self.del_plugins(list, count, prev, request, netns).await {
            tracing::warn!(container = %request.container_id, network = %list.name, "CNI rollback: {e}");
        }
    }

    /// DEL for plugins `count-1` down to 0; all run, the first error is returned.
    async fn del_plugins(
        &self,
        list: &NetworkList,
        count: usize,
        prev: Option<&Value>,
        request: &AttachRequest,
        netns: &str,
    ) -> Result<(), CniError> {
        let prev = prev.filter(|_| list.del_takes_prev_result());
        let mut first_error = None;
        for index in (0..count).rev() {
            let plugin = list.plugin_type(index).to_string();
            let stdin = plugin_stdin(list, index, prev, request);
            if let Err(e) = self.exec(&plugin, "DEL", request, netns, stdin).await {
                tracing::warn!(container = %request.container_id, network = %list.name, "CNI DEL: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs one plugin and answers its stdout (exit 0) or its error.
    async fn exec(
        &self,
        plugin: &str,
        command: &str,
        request: &AttachRequest,
        netns: &str,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        let path =
            find_plugin(&self.config.bin_dirs, plugin).ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_string(),
                search_path: join_paths(&self.config.bin_dirs),
            })?;
        let mut cmd = tokio::process::Command::new(&path);
        // Our own environment minus any CNI_* variable, then exactly ours.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", FALLBACK_PATH);
        }
        let ifname = if request.ifname.is_empty() {
            "eth0"
        } else {
            &request.ifname
        };
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &request.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", join_paths(&self.config.bin_dirs))
            .env("CNI_ARGS", cni_args(request))
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout also kills the IPAM
            // plugin (or anything else) it started.
            .process_group(0)
            .kill_on_drop(true);
        let exec_error = |source| CniError::Exec {
            plugin: plugin.to_string(),
            source,
        };
        let mut child = spawn(&mut cmd).map_err(exec_error)?;
        let pid = child.id();
        let child_stdin = child.stdin.take();
        let io = async move {
            let write = async move {
                if let Some(mut pipe) = child_stdin {
                    // A plugin may exit without reading everything: not our error.
                    let _ = pipe.write_all(&stdin).await;
                }
            };
            let ((), output) = tokio::join!(write, child.wait_with_output());
            output
        };
        tokio::pin!(io);
        let output = tokio::select! {
            output = &mut io => output.map_err(exec_error)?,
            () = tokio::time::sleep(self.plugin_timeout) => {
                // The plugin is not reaped yet, so its group id is still ours to kill.
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(CniError::Timeout { plugin: plugin.to_string(), timeout: self.plugin_timeout });
            }
        };
        if output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !stderr.trim().is_empty() {
                tracing::debug!(plugin, command, "plugin stderr: {}", stderr.trim());
            }
            return Ok(output.stdout);
        }
        Err(plugin_error(plugin, &output))
    }

    /// Loads the pod network from the conf dir, logging skipped files once
    /// per change.
    fn load(&self) -> Result<NetworkList, String> {
        let (result, skipped) = load_network(&self.config.conf_dir, &self.config.bin_dirs);
        let summary = skipped.join("\n");
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if *last != summary {
            for reason in &skipped {
                tracing::warn!("skipping CNI config {reason}");
            }
            *last = summary;
        }
        result
    }
}

/// Starts a plugin, retrying briefly on ETXTBSY: a plugin script just written
/// by another thread can be briefly held open for writing by a forked child.
fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(5 * attempts));
            }
            other => return other,
        }
    }
}

/// `CNI_ARGS` as the kubelet's runtimes pass them.
pub(crate) fn cni_args(request: &AttachRequest) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        request.pod_namespace, request.pod_name, request.container_id, request.pod_uid
    )
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":")
}

/// The plugin's executable: `type` in the first bin dir that has it.
fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return None;
    }
    bin_dirs.iter().map(|dir| dir.join(plugin)).find(|path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `CNI_NETNS` for DEL: the path while it is a namespace, else empty (the
/// namespace is gone; plugins then release what lives outside of it).
fn netns_for_del(path: &Path) -> String {
    use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, statfs};
    if path.as_os_str().is_empty() {
        return String::new();
    }
    match statfs(path) {
        Ok(fs)
            if fs.filesystem_type() == NSFS_MAGIC || fs.filesystem_type() == PROC_SUPER_MAGIC =>
        {
            path.to_string_lossy().into_owned()
        }
        _ => String::new(),
    }
}

/// The stdin of plugin `index`: its object with the list's `name` and
/// `cniVersion`, `prevResult` when there is one, and `runtimeConfig` holding
/// only the declared capabilities.
pub(crate) fn plugin_stdin(
    list: &NetworkList,
    index: usize,
    prev: Option<&Value>,
    request: &AttachRequest,
) -> Vec<u8> {
    let mut conf = list.plugins[index].clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    match &list.cni_version {
        Some(version) => conf.insert("cniVersion".into(), Value::String(version.clone())),
        None => conf.remove("cniVersion"),
    };
    match prev {
        Some(prev) => conf.insert("prevResult".into(), prev.clone()),
        None => conf.remove("prevResult"),
    };
    let runtime = runtime_config(&list.plugins[index], request);
    if !runtime.is_empty() {
        match conf.get_mut("runtimeConfig") {
            Some(Value::Object(existing)) => existing.extend(runtime),
            _ => {
                conf.insert("runtimeConfig".into(), Value::Object(runtime));
            }
        }
    }
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

/// The dynamic values for the capabilities `plugin` declares (`true`).
fn runtime_config(plugin: &Map<String, Value>, request: &AttachRequest) -> Map<String, Value> {
    let mut runtime = Map::new();
    let Some(capabilities) = plugin.get("capabilities").and_then(Value::as_object) else {
        return runtime;
    };
    let declared = |name: &str| capabilities.get(name) == Some(&Value::Bool(true));
    if declared("portMappings") {
        let mappings = request
            .port_mappings
            .iter()
            .filter(|m| m.host_port > 0)
            .map(|m| {
                let mut entry = Map::new();
                entry.insert("hostPort".into(), m.host_port.into());
                entry.insert("containerPort".into(), m.container_port.into());
                entry.insert("protocol".into(), m.protocol.to_lowercase().into());
                if !m.host_ip.is_empty() {
                    entry.insert("hostIP".into(), m.host_ip.clone().into());
                }
                Value::Object(entry)
            })
            .collect();
        runtime.insert("portMappings".into(), Value::Array(mappings));
    }
    if let Some(dns) = request.dns.as_ref().filter(|_| declared("dns")) {
        runtime.insert(
            "dns".into(),
            serde_json::json!({
                "servers": dns.servers,
                "searches": dns.searches,
                "options": dns.options,
            }),
        );
    }
    if let Some(bw) = request.bandwidth.as_ref().filter(|_| declared("bandwidth")) {
        runtime.insert(
            "bandwidth".into(),
            serde_json::json!({
                "ingressRate": bw.ingress_rate,
                "ingressBurst": bw.ingress_burst,
                "egressRate": bw.egress_rate,
                "egressBurst": bw.egress_burst,
            }),
        );
    }
    runtime
}

/// A successful ADD's stdout: None when empty (the chain's result so far
/// stands), else the parsed result and its raw text.
fn parse_add_output(plugin: &str, out: &[u8]) -> Result<Option<(Value, String)>, CniError> {
    let raw = String::from_utf8_lossy(out).trim().to_string();
    if raw.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(&raw) {
        Ok(value @ Value::Object(_)) => Ok(Some((value, raw))),
        Ok(_) => Err(CniError::InvalidResult {
            plugin: plugin.to_string(),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(CniError::InvalidResult {
            plugin: plugin.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The error of a plugin that exited non-zero: its error object if it
/// printed one, else its stderr, else the exit status.
fn plugin_error(plugin: &str, output: &std::process::Output) -> CniError {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !stderr.is_empty() {
        tracing::debug!(plugin, "failed plugin's stderr: {stderr}");
    }
    let parsed = serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .filter(|v| v.get("msg").is_some() || v.get("code").is_some());
    let (code, msg, details) = match parsed {
        Some(error) => {
            let code = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0);
            let text = |key: &str| {
                error
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut msg = text("msg");
            if msg.is_empty() {
                msg = format!("error code {code}");
            }
            (code, msg, text("details"))
        }
        None => {
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let msg = [stderr, stdout]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or_else(|| format!("exited with {}", output.status));
            (0, msg, String::new())
        }
    };
    CniError::Plugin {
        plugin: plugin.to_string(),
        code,
        msg,
        details,
    }
}

/// The addresses of a result (spec 0.3.0 and later: `ips[].address`; 0.1/0.2:
/// `ip4.ip`, `ip6.ip`), leaving out those on interfaces outside the
/// container (an `interface` index naming one without `sandbox`).
pub(crate) fn result_ips(result: &Value) -> Result<Vec<IpAddr>, String> {
    let parse = |cidr: &str| -> Result<IpAddr, String> {
        let address = cidr.split_once('/').map_or(cidr, |(a, _)| a);
        address.parse().map_err(|_| format!("bad address {cidr:?}"))
    };
    let mut ips = Vec::new();
    if let Some(list) = result.get("ips") {
        let list = list.as_array().ok_or("\"ips\" is not a list")?;
        let interfaces = result.get("interfaces").and_then(Value::as_array);
        for entry in list {
            let address = entry
                .get("address")
                .and_then(Value::as_str)
                .ok_or("an \"ips\" entry has no \"address\"")?;
            let on_host = entry
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| interfaces?.get(usize::try_from(i).ok()?))
                .is_some_and(|iface| {
                    iface
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                });
            if !on_host {
                ips.push(parse(address)?);
            }
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(address) = result
                .get(key)
                .and_then(|v| v.get("ip"))
                .and_then(Value::as_str)
            {
                ips.push(parse(address)?);
            }
        }
    }
    Ok(ips)
}

/// `"a.b.c"` as numbers; None when it is not that shape.
fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    parts.next().is_none().then_some((major, minor, patch))
}

/// Parses a configuration list, or a single plugin configuration (wrapped
/// as a list of one). `source` names it in error messages. Binaries are not
/// looked up here.
pub(crate) fn parse_network(source: &str, bytes: &[u8]) -> Result<NetworkList, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{source}: invalid JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err(format!("{source}: not a JSON object"));
    };
    let name = match object.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => return Err(format!("{source}: no network \"name\"")),
    };
    let cni_version = match object.get("cniVersion") {
        None => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err(format!("{source}: \"cniVersion\" is not a string")),
    };
    let (plugins, list) = if let Some(plugins) = object.get("plugins") {
        let plugins = plugins
            .as_array()
            .ok_or_else(|| format!("{source}: \"plugins\" is not a list"))?;
        if plugins.is_empty() {
            return Err(format!("{source}: \"plugins\" is empty"));
        }
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| format!("{source}: plugin {} is not a JSON object", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        (plugins, Value::Object(object))
    } else if object.contains_key("type") {
        let mut list = Map::new();
        if let Some(version) = &cni_version {
            list.insert("cniVersion".into(), Value::String(version.clone()));
        }
        list.insert("name".into(), Value::String(name.clone()));
        list.insert(
            "plugins".into(),
            Value::Array(vec![Value::Object(object.clone())]),
        );
        (vec![object], Value::Object(list))
    } else {
        return Err(format!(
            "{source}: neither a \"plugins\" list nor a plugin \"type\""
        ));
    };
    for (i, plugin) in plugins.iter().enumerate() {
        match plugin.get("type") {
            Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => {}
            _ => return Err(format!("{source}: plugin {} has no valid \"type\"", i + 1)),
        }
    }
    Ok(NetworkList {
        name,
        cni_version,
        plugins,
        json: list.to_string(),
    })
}

/// The first valid configuration of `conf_dir` in name order, whose plugins
/// all exist in `bin_dirs`, plus the reasons earlier files were skipped.
pub(crate) fn load_network(
    conf_dir: &Path,
    bin_dirs: &[PathBuf],
) -> (Result<NetworkList, String>, Vec<String>) {
    let not_found = || format!("no network config found in {}", conf_dir.display());
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Err(not_found()), Vec::new()),
        Err(e) => {
            return (
                Err(format!("cannot read {}: {e}", conf_dir.display())),
                Vec::new(),
            );
        }
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let ext = path.extension()?.to_str()?;
            (CONFIG_EXTENSIONS.contains(&ext) && path.is_file()).then_some((name, path))
        })
        .collect();
    if files.is_empty() {
        return (Err(not_found()), Vec::new());
    }
    files.sort();
    let mut skipped = Vec::new();
    for (name, path) in files {
        let loaded = std::fs::read(&path)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|bytes| parse_network(&name, &bytes))
            .and_then(|list| {
                for index in 0..list.plugins.len() {
                    let plugin = list.plugin_type(index);
                    if find_plugin(bin_dirs, plugin).is_none() {
                        return Err(format!(
                            "{name}: plugin \"{plugin}\" not found in {}",
                            join_paths(bin_dirs)
                        ));
                    }
                }
                Ok(list)
            });
        match loaded {
            Ok(list) => return (Ok(list), skipped),
            Err(reason) => skipped.push(reason),
        }
    }
    let message = format!(
        "no valid network config in {}: {}",
        conf_dir.display(),
        skipped.join("; ")
    );
    (Err(message), skipped)
}
