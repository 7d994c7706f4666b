//! The invoker against fake plugins: shell scripts that record their
//! environment and stdin and print a canned result or error.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cni::{parse_network, result_ips};
use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    bin: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (conf, bin, log) = (
            dir.path().join("net.d"),
            dir.path().join("bin"),
            dir.path().join("log"),
        );
        for d in [&conf, &bin, &log] {
            std::fs::create_dir(d).unwrap();
        }
        Fixture {
            _dir: dir,
            conf,
            bin,
            log,
        }
    }

    fn cni(&self) -> Cni {
        Cni::new(CniConfig {
            conf_dir: self.conf.clone(),
            bin_dirs: vec![self.bin.clone(), PathBuf::from("/nonexistent/cni")],
        })
    }

    /// A plugin that records its call, env and stdin, then runs `body`.
    fn script(&self, name: &str, body: &str) {
        let log = self.log.display();
        let text = format!(
            "#!/bin/sh\n\
             env | grep '^CNI_' | sort > '{log}/{name}.'\"$CNI_COMMAND\".env\n\
             cat > '{log}/{name}.'\"$CNI_COMMAND\".stdin\n\
             echo \"{name} $CNI_COMMAND\" >> '{log}/calls'\n\
             {body}\n"
        );
        let path = self.bin.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin printing `result` on ADD and nothing on DEL.
    fn ok_plugin(&self, name: &str, result: &str) {
        let file = self.log.join(format!("{name}.result"));
        std::fs::write(&file, result).unwrap();
        self.script(
            name,
            &format!(
                "[ \"$CNI_COMMAND\" = ADD ] && cat '{}'\nexit 0",
                file.display()
            ),
        );
    }

    /// A plugin whose ADD prints `error` and exits 1; its DEL succeeds.
    fn failing_plugin(&self, name: &str, error: &str) {
        let file = self.log.join(format!("{name}.error"));
        std::fs::write(&file, error).unwrap();
        self.script(
            name,
            &format!(
                "[ \"$CNI_COMMAND\" = ADD ] || exit 0\ncat '{}'\nexit 1",
                file.display()
            ),
        );
    }

    fn conf(&self, file: &str, config: &Value) {
        std::fs::write(self.conf.join(file), config.to_string()).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn env(&self, plugin: &str, command: &str) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.log.join(format!("{plugin}.{command}.env")))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn stdin(&self, plugin: &str, command: &str) -> Value {
        let raw = std::fs::read(self.log.join(format!("{plugin}.{command}.stdin"))).unwrap();
        serde_json::from_slice(&raw).unwrap()
    }
}

fn request() -> AttachRequest {
    AttachRequest {
        container_id: "c0ffee".into(),
        netns: PathBuf::from("/proc/self/ns/net"),
        ifname: "eth0".into(),
        pod_name: "web-1".into(),
        pod_namespace: "shop".into(),
        pod_uid: "1234-5678".into(),
        ..AttachRequest::default()
    }
}

fn result_v1(address: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/proc/self/ns/net"}],
        "ips": [{"address": address, "interface": 0}],
    })
    .to_string()
}

fn list(plugins: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "podnet", "plugins": plugins})
}

#[tokio::test]
async fn env_and_cni_args_are_exact() {
    let f = Fixture::new();
    f.ok_plugin("a", &result_v1("10.1.0.5/24"));
    f.conf("10-pod.conflist", &list(json!([{"type": "a"}])));
    let added = f.cni().add(&request()).await.unwrap();
    assert_eq!(added.network_name, "podnet");
    let bin_path = format!("{}:/nonexistent/cni", f.bin.display());
    let expect = |command: &str, netns: &str| -> BTreeMap<String, String> {
        [
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=1234-5678"),
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns),
            ("CNI_PATH", &bin_path),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(f.env("a", "ADD"), expect("ADD", "/proc/self/ns/net"));

    // DEL passes a live namespace on, and an empty CNI_NETNS once it is gone
    // or is no longer a namespace (an unmounted pin file).
    let cni = f.cni();
    cni.del(
        &request(),
        Some(&added.config_json),
        Some(&added.result_json),
    )
    .await
    .unwrap();
    assert_eq!(f.env("a", "DEL"), expect("DEL", "/proc/self/ns/net"));
    let stale = f.log.join("stale-netns");
    std::fs::write(&stale, "").unwrap();
    for netns in [f.log.join("gone"), stale] {
        let gone = AttachRequest {
            netns,
            ifname: String::new(),
            ..request()
        };
        cni.del(&gone, Some(&added.config_json), None)
            .await
            .unwrap();
        assert_eq!(f.env("a", "DEL"), expect("DEL", ""));
    }
}

#[tokio::test]
async fn plugin_config_carries_list_fields_and_only_declared_capabilities() {
    let f = Fixture::new();
    f.ok_plugin("a", &result_v1("10.1.0.5/24"));
    f.ok_plugin("b", &result_v1("10.1.0.5/24"));
    f.ok_plugin("c", &result_v1("10.1.0.5/24"));
    f.conf(
        "10-pod.conflist",
        &json!({
            "cniVersion": "0.4.0",
            "name": "podnet",
            "plugins": [
                {"type": "a", "bridge": "br9", "capabilities": {"portMappings": true, "dns": false}},
                {"type": "b", "cniVersion": "9.9.9", "name": "other"},
                {"type": "c", "capabilities": {"dns": true, "bandwidth": true, "ips": true},
                 "runtimeConfig": {"mine": 1}},
            ]
        }),
    );
    let req = AttachRequest {
        port_mappings: vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: String::new(),
            },
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: "udp".into(),
                host_ip: "127.0.0.1".into(),
            },
            PortMapping {
                host_port: 0,
                container_port: 9090,
                protocol: "tcp".into(),
                host_ip: String::new(),
            },
        ],
        dns: Some(Dns {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["shop.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        bandwidth: Some(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 2_000,
            egress_rate: 3_000_000,
            egress_burst: 4_000,
        }),
        ..request()
    };
    f.cni().add(&req).await.unwrap();

    let a = f.stdin("a", "ADD");
    assert_eq!(a["name"], "podnet");
    assert_eq!(a["cniVersion"], "0.4.0");
    assert_eq!(a["bridge"], "br9");
    assert_eq!(
        a["runtimeConfig"],
        json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]})
    );
    let b = f.stdin("b", "ADD");
    assert_eq!(
        (&b["name"], &b["cniVersion"]),
        (&json!("podnet"), &json!("0.4.0"))
    );
    assert!(b.get("runtimeConfig").is_none(), "{b}");
    let c = f.stdin("c", "ADD");
    assert_eq!(
        c["runtimeConfig"],
        json!({
            "mine": 1,
            "dns": {"servers": ["10.96.0.10"], "searches": ["shop.svc.cluster.local"], "options": ["ndots:5"]},
            "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 2_000, "egressRate": 3_000_000, "egressBurst": 4_000},
        })
    );

    // Declared but not provided: dns and bandwidth are left out, portMappings is an empty list.
    f.cni().add(&request()).await.unwrap();
    assert_eq!(
        f.stdin("a", "ADD")["runtimeConfig"],
        json!({"portMappings": []})
    );
    assert_eq!(f.stdin("c", "ADD")["runtimeConfig"], json!({"mine": 1}));
}

#[tokio::test]
async fn add_chains_prev_results_and_del_runs_in_reverse_with_the_cached_result() {
    let f = Fixture::new();
    let first = result_v1("10.1.0.5/24");
    let last = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/proc/self/ns/net"}],
        "ips": [{"address": "fd00::5/64", "interface": 0}, {"address": "10.1.0.5/24", "interface": 0}],
        "dns": {},
    })
    .to_string();
    f.ok_plugin("a", &first);
    f.ok_plugin("b", ""); // a chained plugin with nothing to add
    f.ok_plugin("c", &last);
    f.conf(
        "10-pod.conflist",
        &list(json!([{"type": "a"}, {"type": "b"}, {"type": "c"}])),
    );
    let cni = f.cni();
    let added = cni.add(&request()).await.unwrap();
    assert!(f.stdin("a", "ADD").get("prevResult").is_none());
    let first_value: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(f.stdin("b", "ADD")["prevResult"], first_value);
    assert_eq!(f.stdin("c", "ADD")["prevResult"], first_value);
    assert_eq!(added.result_json, last);
    let v6: IpAddr = "fd00::5".parse().unwrap();
    let v4: IpAddr = "10.1.0.5".parse().unwrap();
    assert_eq!(added.ips, vec![v6, v4]);
    assert_eq!(added.pod_ips(), vec![v4, v6]);
    assert_eq!(
        serde_json::from_str::<Value>(&added.config_json).unwrap(),
        list(json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]))
    );

    // The conf dir changes: DEL still runs the cached chain.
    std::fs::remove_file(f.conf.join("10-pod.conflist")).unwrap();
    cni.del(
        &request(),
        Some(&added.config_json),
        Some(&added.result_json),
    )
    .await
    .unwrap();
    assert_eq!(
        f.calls(),
        ["a ADD", "b ADD", "c ADD", "c DEL", "b DEL", "a DEL"]
    );
    let last_value: Value = serde_json::from_str(&last).unwrap();
    for plugin in ["a", "b", "c"] {
        let stdin = f.stdin(plugin, "DEL");
        assert_eq!(stdin["prevResult"], last_value, "{plugin}");
        assert_eq!(stdin["name"], "podnet");
    }

    // After a crash there may be no cached result; DEL goes on without one.
    cni.del(&request(), Some(&added.config_json), None)
        .await
        .unwrap();
    assert!(f.stdin("a", "DEL").get("prevResult").is_none());
    // Without a cached config, DEL needs the conf dir, which is now empty.
    let error = cni.del(&request(), None, None).await.unwrap_err();
    assert!(matches!(error, CniError::NotReady(_)), "{error}");
}

#[tokio::test]
async fn del_before_spec_0_4_gets_no_prev_result() {
    let f = Fixture::new();
    f.ok_plugin("a", &result_v1("10.1.0.5/24"));
    f.conf(
        "10-pod.conflist",
        &json!({"cniVersion": "0.3.1", "name": "old", "plugins": [{"type": "a"}]}),
    );
    let cni = f.cni();
    let added = cni.add(&request()).await.unwrap();
    cni.del(
        &request(),
        Some(&added.config_json),
        Some(&added.result_json),
    )
    .await
    .unwrap();
    assert!(f.stdin("a", "DEL").get("prevResult").is_none());
    assert_eq!(f.stdin("a", "DEL")["cniVersion"], "0.3.1");
}

#[tokio::test]
async fn a_failing_plugin_rolls_back_what_ran_and_reports_its_own_message() {
    let f = Fixture::new();
    let first = result_v1("10.1.0.5/24");
    f.ok_plugin("a", &first);
    f.failing_plugin(
        "b",
        r#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate for range 0","details":"no IP addresses available in range set"}"#,
    );
    f.ok_plugin("c", &result_v1("10.1.0.5/24"));
    f.conf(
        "10-pod.conflist",
        &list(json!([{"type": "a"}, {"type": "b"}, {"type": "c"}])),
    );
    let error = f.cni().add(&request()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "plugin b failed: failed to allocate for range 0: no IP addresses available in range set"
    );
    assert!(
        matches!(error, CniError::Plugin { code: 11, .. }),
        "{error:?}"
    );
    assert_eq!(f.calls(), ["a ADD", "b ADD", "b DEL", "a DEL"]);
    let first_value: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(f.stdin("a", "DEL")["prevResult"], first_value);
    assert_eq!(f.env("a", "DEL")["CNI_NETNS"], "/proc/self/ns/net");
}

#[tokio::test]
async fn failures_without_an_error_object_and_broken_results_are_reported() {
    let f = Fixture::new();
    f.script("noisy", "echo 'cannot open bridge' >&2\nexit 2");
    f.conf("10-pod.conflist", &list(json!([{"type": "noisy"}])));
    let error = f.cni().add(&request()).await.unwrap_err();
    assert_eq!(error.to_string(), "plugin noisy failed: cannot open bridge");
    assert_eq!(f.calls(), ["noisy ADD", "noisy DEL"]);

    let f = Fixture::new();
    f.script("silent", "exit 3");
    f.conf("10-pod.conflist", &list(json!([{"type": "silent"}])));
    let error = f.cni().add(&request()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "plugin silent failed: exited with exit status: 3"
    );

    let f = Fixture::new();
    f.ok_plugin("garbled", "{not json");
    f.conf("10-pod.conflist", &list(json!([{"type": "garbled"}])));
    let error = f.cni().add(&request()).await.unwrap_err();
    assert!(
        matches!(error, CniError::InvalidResult { ref plugin, .. } if plugin == "garbled"),
        "{error}"
    );
    assert_eq!(f.calls(), ["garbled ADD", "garbled DEL"]);

    let f = Fixture::new();
    f.ok_plugin("badip", &result_v1("10.1.0.500/24"));
    f.conf("10-pod.conflist", &list(json!([{"type": "badip"}])));
    let error = f.cni().add(&request()).await.unwrap_err();
    assert!(
        error.to_string().contains("bad address \"10.1.0.500/24\""),
        "{error}"
    );
    assert_eq!(f.calls(), ["badip ADD", "badip DEL"]);
}

#[tokio::test]
async fn a_plugin_past_its_timeout_is_killed_with_what_it_started() {
    let f = Fixture::new();
    let pid_file = f.log.join("sleeper.pid");
    f.script(
        "slow",
        &format!("sleep 30 &\necho $! > '{}'\nwait", pid_file.display()),
    );
    f.conf("10-pod.conflist", &list(json!([{"type": "slow"}])));
    let cni = f.cni().with_plugin_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let error = cni.add(&request()).await.unwrap_err();
    assert!(matches!(error, CniError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie waiting for its (killed) parent's reaper.
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) =>
            {
                break;
            }
            Ok(_) if Instant::now() > deadline => panic!("the plugin's child survived the timeout"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[test]
fn network_status_follows_the_conf_dir() {
    let f = Fixture::new();
    f.ok_plugin("a", "");
    let cni = f.cni();
    let dir = f.conf.display().to_string();
    assert_eq!(
        cni.network_status(),
        Err(format!("no network config found in {dir}"))
    );
    let missing = Cni::new(CniConfig {
        conf_dir: f.conf.join("nope"),
        bin_dirs: vec![f.bin.clone()],
    });
    assert_eq!(
        missing.network_status(),
        Err(format!("no network config found in {dir}/nope"))
    );

    // Other extensions are not configs.
    std::fs::write(f.conf.join("00-notes.txt"), "hello").unwrap();
    assert_eq!(
        cni.network_status(),
        Err(format!("no network config found in {dir}"))
    );

    f.conf(
        "20-b.conflist",
        &json!({"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "a"}]}),
    );
    assert_eq!(cni.network_status(), Ok("b".to_string()));
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "a"}]}),
    );
    assert_eq!(cni.network_status(), Ok("a".to_string()));
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "a2", "plugins": [{"type": "a"}]}),
    );
    assert_eq!(cni.network_status(), Ok("a2".to_string()));
    // Broken files earlier in name order are skipped.
    std::fs::write(f.conf.join("05-bad.conflist"), "{").unwrap();
    f.conf(
        "07-nobin.conflist",
        &json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "a"}, {"type": "bridge"}]}),
    );
    assert_eq!(cni.network_status(), Ok("a2".to_string()));

    std::fs::remove_file(f.conf.join("10-a.conflist")).unwrap();
    std::fs::remove_file(f.conf.join("20-b.conflist")).unwrap();
    let error = cni.network_status().unwrap_err();
    assert!(
        error.starts_with(&format!(
            "no valid network config in {dir}: 05-bad.conflist: invalid JSON: "
        )),
        "{error}"
    );
    assert!(
        error.ends_with(&format!(
            "; 07-nobin.conflist: plugin \"bridge\" not found in {}:/nonexistent/cni",
            f.bin.display()
        )),
        "{error}"
    );

    // The missing plugin is installed: ready again without a new Cni.
    f.ok_plugin("bridge", "");
    assert_eq!(cni.network_status(), Ok("x".to_string()));
}

#[tokio::test]
async fn a_single_plugin_conf_is_wrapped_as_a_list() {
    let f = Fixture::new();
    f.ok_plugin("a", &result_v1("10.1.0.7/24"));
    let single = json!({"cniVersion": "1.0.0", "name": "single", "type": "a", "ipam": {"type": "host-local"}});
    f.conf("10-single.conf", &single);
    let cni = f.cni();
    assert_eq!(cni.network_status(), Ok("single".to_string()));
    let added = cni.add(&request()).await.unwrap();
    assert_eq!(added.ips, vec!["10.1.0.7".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        serde_json::from_str::<Value>(&added.config_json).unwrap(),
        json!({"cniVersion": "1.0.0", "name": "single", "plugins": [single]})
    );
    assert_eq!(f.stdin("a", "ADD"), single);

    // `.json` counts too; a `.conf` with a `plugins` list is read as a list.
    std::fs::remove_file(f.conf.join("10-single.conf")).unwrap();
    f.conf(
        "50-x.json",
        &json!({"cniVersion": "1.0.0", "name": "j", "type": "a"}),
    );
    assert_eq!(cni.network_status(), Ok("j".to_string()));
    f.conf("40-l.conf", &list(json!([{"type": "a"}])));
    assert_eq!(cni.network_status(), Ok("podnet".to_string()));
}

#[test]
fn config_errors_say_what_is_wrong() {
    let cases: [(&str, &str); 6] = [
        ("[]", "f: not a JSON object"),
        (r#"{"plugins": [{"type": "a"}]}"#, "f: no network \"name\""),
        (r#"{"name": "n", "plugins": []}"#, "f: \"plugins\" is empty"),
        (
            r#"{"name": "n", "plugins": [{"type": "a"}, {"bridge": "x"}]}"#,
            "f: plugin 2 has no valid \"type\"",
        ),
        (
            r#"{"name": "n", "plugins": [{"type": "../../bin/sh"}]}"#,
            "f: plugin 1 has no valid \"type\"",
        ),
        (
            r#"{"name": "n", "ipam": {}}"#,
            "f: neither a \"plugins\" list nor a plugin \"type\"",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            parse_network("f", text.as_bytes()).unwrap_err(),
            expected,
            "{text}"
        );
    }
}

#[test]
fn results_of_each_spec_version_give_their_addresses() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // 0.4.0: the host side of the veth has no sandbox; its address is not the pod's.
    let v040 = json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:00"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/var/run/netns/x"},
        ],
        "ips": [
            {"version": "4", "address": "10.22.0.1/16", "interface": 0},
            {"version": "4", "address": "10.22.0.9/16", "gateway": "10.22.0.1", "interface": 2},
            {"version": "6", "address": "2001:db8::9/64", "gateway": "2001:db8::1", "interface": 2},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    });
    assert_eq!(
        result_ips(&v040).unwrap(),
        [ip("10.22.0.9"), ip("2001:db8::9")]
    );
    // 1.0.0: no "version"; an address without interface index counts.
    let v100 = json!({
        "cniVersion": "1.0.0",
        "ips": [{"address": "fd12:3456::a/64"}, {"address": "192.168.5.3/24", "gateway": "192.168.5.1"}],
    });
    assert_eq!(
        result_ips(&v100).unwrap(),
        [ip("fd12:3456::a"), ip("192.168.5.3")]
    );
    // 0.2.0.
    let v020 =
        json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.3/8"}, "ip6": {"ip": "fe80::3/64"}});
    assert_eq!(result_ips(&v020).unwrap(), [ip("10.0.0.3"), ip("fe80::3")]);
    assert!(
        result_ips(&json!({"cniVersion": "1.0.0"}))
            .unwrap()
            .is_empty()
    );
    assert!(result_ips(&json!({"ips": [{"gateway": "10.0.0.1"}]})).is_err());
    assert!(result_ips(&json!({"ips": [{"address": "banana/24"}]})).is_err());

    let result = AttachResult {
        ips: vec![ip("fd00::1"), ip("fd00::2"), ip("10.0.0.1")],
        result_json: String::new(),
        network_name: String::new(),
        config_json: String::new(),
    };
    assert_eq!(
        result.pod_ips(),
        [ip("10.0.0.1"), ip("fd00::1"), ip("fd00::2")]
    );
}

#[tokio::test]
async fn a_missing_plugin_at_del_is_reported_but_the_others_still_run() {
    let f = Fixture::new();
    f.ok_plugin("a", &result_v1("10.1.0.5/24"));
    let config = list(json!([{"type": "a"}, {"type": "gone"}])).to_string();
    let error = f
        .cni()
        .del(&request(), Some(&config), None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "plugin \"gone\" not found in {}:/nonexistent/cni",
            f.bin.display()
        )
    );
    assert_eq!(f.calls(), ["a DEL"]);
    let error = f.cni().del(&request(), Some("{"), None).await.unwrap_err();
    assert!(matches!(error, CniError::InvalidConfig(_)), "{error}");
}

/// The futures can be awaited in the gRPC handlers (which need `Send`).
#[allow(dead_code)]
fn futures_are_send(cni: &Cni, request: &AttachRequest) {
    fn send<T: Send>(_: T) {}
    send(cni.add(request));
    send(cni.del(request, None, None));
}
