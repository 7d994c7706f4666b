//! rcri's CNI invoker against the real plugins of Debian's
//! `containernetworking-plugins` (bridge, host-local, portmap, loopback).
//!
//! Needs root, `ip` (iproute2) and `busybox`. Each test makes its own bridge
//! `rcri-tXXXX` on a private /24 of 10.199.0.0/16, its own namespaces
//! `rcri-test-…`, and removes them afterwards; the host's own interfaces and
//! routes are not touched (the bridge's connected route goes with it).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rcri::network::{AttachRequest, Cni, CniConfig, CniError, PortMapping};
use serde_json::json;

const PLUGIN_DIR: &str = "/usr/lib/cni";

fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

fn require_tools() {
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        assert!(
            Path::new(PLUGIN_DIR).join(plugin).is_file(),
            "the CNI plugin {PLUGIN_DIR}/{plugin} is missing: apt-get install containernetworking-plugins"
        );
    }
    for tool in ["ip", "busybox"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is missing: apt-get install iproute2 busybox");
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the CNI tests create bridges and namespaces: run them as root"
    );
}

fn run(args: &[&str]) -> String {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A private network: a test bridge on its own /24, host-local state in a
/// tempdir, and a conf dir holding bridge + portmap. The bridge is deleted on drop.
struct TestNet {
    dir: tempfile::TempDir,
    bridge: String,
    name: String,
    subnet: u8,
}

impl TestNet {
    fn new() -> TestNet {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let tag = format!("{:04x}", random() & 0xffff);
        let bridge = format!("rcri-t{tag}");
        let name = format!("rcri-test-{tag}");
        let subnet = free_subnet();
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.path().join("ipam"),
                        "ranges": [[{"subnet": format!("10.199.{subnet}.0/24")}]],
                        "routes": [{"dst": format!("10.199.{subnet}.0/24")}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).unwrap();
        TestNet {
            dir,
            bridge,
            name,
            subnet,
        }
    }

    fn cni(&self, extra_bin_dir: Option<&Path>) -> Cni {
        let mut bin_dirs: Vec<PathBuf> = extra_bin_dir.map(Path::to_path_buf).into_iter().collect();
        bin_dirs.push(PathBuf::from(PLUGIN_DIR));
        Cni::new(CniConfig {
            conf_dir: self.dir.path().join("net.d"),
            bin_dirs,
        })
    }

    fn in_subnet(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 199, self.subnet])
    }

    fn gateway(&self) -> String {
        format!("10.199.{}.1", self.subnet)
    }

    /// The addresses host-local holds for this network.
    fn reservations(&self) -> Vec<String> {
        let dir = self.dir.path().join("ipam").join(&self.name);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<IpAddr>().is_ok())
            .collect()
    }

    fn request(&self, ns: &NetNs) -> AttachRequest {
        AttachRequest {
            container_id: format!("{}-{}", self.name, ns.name),
            netns: ns.path(),
            ifname: "eth0".into(),
            pod_name: ns.name.clone(),
            pod_namespace: "cni-test".into(),
            pod_uid: format!("uid-{}", ns.name),
            ..AttachRequest::default()
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A /24 of 10.199.0.0/16 that no host route uses yet, different for each
/// test of this process.
fn free_subnet() -> u8 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = u32::try_from(random() % 200).unwrap();
    for _ in 0..250 {
        let x = u8::try_from(1 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 250).unwrap();
        if run(&[
            "ip",
            "-4",
            "route",
            "show",
            "root",
            &format!("10.199.{x}.0/24"),
        ])
        .trim()
        .is_empty()
        {
            return x;
        }
    }
    panic!("no free /24 in 10.199.0.0/16");
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NetNs {
    name: String,
    deleted: bool,
}

impl NetNs {
    fn new() -> NetNs {
        let name = format!("rcri-test-{:08x}", random() as u32);
        run(&["ip", "netns", "add", &name]);
        NetNs {
            name,
            deleted: false,
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    fn delete(&mut self) {
        run(&["ip", "netns", "del", &self.name]);
        self.deleted = true;
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// A TCP server in a namespace answering every connection with `reply`.
struct Server(std::process::Child);

impl Server {
    fn start(ns: &NetNs, port: u16, reply: &str) -> Server {
        let port = port.to_string();
        let child = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "busybox", "nc", "-ll", "-p", &port,
            ])
            .args(["-e", "busybox", "echo", reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects (in `ns`, or on the host) until the server answers, for up to 10 s.
fn fetch(ns: Option<&NetNs>, ip: &str, port: u16) -> String {
    let port = port.to_string();
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["ip", "netns", "exec", ns.name.as_str()]);
    }
    args.extend(["busybox", "nc", "-w", "2", ip, port.as_str()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !text.is_empty() || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn first_v4(ips: &[IpAddr]) -> IpAddr {
    *ips.iter().find(|ip| ip.is_ipv4()).expect("an IPv4 address")
}

#[tokio::test]
async fn a_pod_gets_an_address_in_the_subnet_and_del_releases_it() {
    let net = TestNet::new();
    let cni = net.cni(None);
    assert_eq!(cni.network_status(), Ok(net.name.clone()));
    let mut ns = NetNs::new();
    let request = net.request(&ns);

    let added = cni.add(&request).await.unwrap();
    assert_eq!(added.network_name, net.name);
    let ip = first_v4(&added.ips);
    assert!(
        net.in_subnet(ip),
        "{ip} is not in 10.199.{}.0/24",
        net.subnet
    );
    assert!(
        ns.exec(&["ip", "-o", "addr", "show", "dev", "eth0"])
            .contains(&format!("inet {ip}/24")),
        "eth0 in the namespace lacks {ip}"
    );
    assert_eq!(net.reservations(), [ip.to_string()]);
    // The result is what the bridge chain printed last (portmap passes it on).
    let result: serde_json::Value = serde_json::from_str(&added.result_json).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");

    // lo comes from the loopback plugin, a network of its own.
    let lo_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        lo_dir.path().join("99-loopback.conf"),
        json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}).to_string(),
    )
    .unwrap();
    let lo = Cni::new(CniConfig {
        conf_dir: lo_dir.path().to_path_buf(),
        bin_dirs: vec![PathBuf::from(PLUGIN_DIR)],
    });
    let lo_request = AttachRequest {
        ifname: "lo".into(),
        ..request.clone()
    };
    let lo_added = lo.add(&lo_request).await.unwrap();
    assert!(
        ns.exec(&["ip", "-o", "link", "show", "dev", "lo"])
            .contains("UP"),
        "lo is not up"
    );
    lo.del(
        &lo_request,
        Some(&lo_added.config_json),
        Some(&lo_added.result_json),
    )
    .await
    .unwrap();

    cni.del(&request, Some(&added.config_json), Some(&added.result_json))
        .await
        .unwrap();
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    assert!(
        !ns.exec(&["ip", "-o", "link"]).contains("eth0"),
        "eth0 is still in the namespace"
    );
    // Idempotent, also once the namespace is gone and without a cached result.
    cni.del(&request, Some(&added.config_json), Some(&added.result_json))
        .await
        .unwrap();
    ns.delete();
    cni.del(&request, Some(&added.config_json), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn del_after_the_namespace_is_gone_still_releases_the_address() {
    let net = TestNet::new();
    let cni = net.cni(None);
    let mut ns = NetNs::new();
    let request = net.request(&ns);
    let added = cni.add(&request).await.unwrap();
    assert_eq!(net.reservations().len(), 1);
    ns.delete();
    cni.del(&request, Some(&added.config_json), Some(&added.result_json))
        .await
        .unwrap();
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
}

#[tokio::test]
async fn two_pods_reach_each_other_and_a_host_port_reaches_a_pod() {
    let net = TestNet::new();
    let cni = net.cni(None);
    let (a, b) = (NetNs::new(), NetNs::new());
    let host_port = u16::try_from(30000 + random() % 10000).unwrap();
    let request_a = AttachRequest {
        port_mappings: vec![PortMapping {
            host_port: i32::from(host_port),
            container_port: 8080,
            protocol: "TCP".into(),
            host_ip: String::new(),
        }],
        ..net.request(&a)
    };
    let request_b = net.request(&b);
    let added_a = cni.add(&request_a).await.unwrap();
    let added_b = cni.add(&request_b).await.unwrap();
    let (ip_a, ip_b) = (first_v4(&added_a.ips), first_v4(&added_b.ips));
    assert_ne!(ip_a, ip_b);
    assert!(net.in_subnet(ip_a) && net.in_subnet(ip_b));

    let _server = Server::start(&a, 8080, "hello-from-a");
    assert_eq!(fetch(Some(&b), &ip_a.to_string(), 8080), "hello-from-a");
    // The host reaches the pod through portmap's DNAT on its gateway address.
    assert_eq!(fetch(None, &net.gateway(), host_port), "hello-from-a");

    for (request, added) in [(&request_a, &added_a), (&request_b, &added_b)] {
        cni.del(request, Some(&added.config_json), Some(&added.result_json))
            .await
            .unwrap();
    }
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    let nat = run(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !nat.contains(&format!("--dport {host_port} ")),
        "portmap left a DNAT rule for {host_port}"
    );
}

#[tokio::test]
async fn a_failing_plugin_after_the_bridge_rolls_the_allocation_back() {
    let net = TestNet::new();
    let fake_bin = tempfile::tempdir().unwrap();
    let script = fake_bin.path().join("refuse");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"policy refused the pod\",\"details\":\"by test\"}'\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = net.dir.path().join("net.d/10-test.conflist");
    let mut list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    list["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "refuse"}));
    std::fs::write(&conf, list.to_string()).unwrap();

    let cni = net.cni(Some(fake_bin.path()));
    let ns = NetNs::new();
    let error = cni.add(&net.request(&ns)).await.unwrap_err();
    assert!(
        matches!(error, CniError::Plugin { code: 100, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "plugin refuse failed: policy refused the pod: by test"
    );
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    assert!(
        !ns.exec(&["ip", "-o", "link"]).contains("eth0"),
        "eth0 is still in the namespace"
    );
}

#[tokio::test]
async fn many_pods_at_once_leave_no_address_behind() {
    let net = TestNet::new();
    let cni = net.cni(None);
    let namespaces: Vec<NetNs> = (0..12).map(|_| NetNs::new()).collect();
    let requests: Vec<AttachRequest> = namespaces.iter().map(|ns| net.request(ns)).collect();
    let added = futures_join(requests.iter().map(|r| {
        let cni = cni.clone();
        let r = r.clone();
        async move { cni.add(&r).await.unwrap() }
    }))
    .await;
    let mut ips: Vec<IpAddr> = added.iter().map(|a| first_v4(&a.ips)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), requests.len(), "duplicate addresses");
    assert_eq!(net.reservations().len(), requests.len());
    futures_join(requests.iter().zip(&added).map(|(r, a)| {
        let cni = cni.clone();
        let (r, a) = (r.clone(), a.clone());
        async move {
            cni.del(&r, Some(&a.config_json), Some(&a.result_json))
                .await
                .unwrap()
        }
    }))
    .await;
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
