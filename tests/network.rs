//! Pod networks end to end with Debian's CNI plugins (bridge, host-local,
//! portmap, loopback): addresses, pod-to-pod traffic, clean-up, and
//! NetworkReady following the configuration directory. Needs root and
//! containernetworking-plugins (`make test` installs them). Only a test
//! bridge of its own is touched; the host's routes stay as they are.

mod common;

use std::process::Command;
use std::time::Duration;

use common::node::{HANDLERS, Node};
use common::require_tool;
use rcri::proto;

/// A private subnet and bridge for one test, removed when dropped.
struct TestNetwork {
    bridge: String,
    prefix: String,
}

impl TestNetwork {
    fn new(seed: u32) -> TestNetwork {
        let unique = std::process::id().wrapping_add(seed);
        TestNetwork {
            bridge: format!("rcri{:x}", unique % 0xfffff),
            prefix: format!("10.{}.{}", 200 + unique % 50, unique % 250),
        }
    }

    fn conflist(&self, host_local_dir: &std::path::Path) -> String {
        require_tool("ip");
        assert!(
            std::path::Path::new("/usr/lib/cni/bridge").exists(),
            "these tests need Debian's containernetworking-plugins (apt-get install containernetworking-plugins)"
        );
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "rcri-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": host_local_dir,
                        "ranges": [[{"subnet": format!("{}.0/24", self.prefix)}]]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"}
            ]
        })
        .to_string()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// host-local keeps one file per allocated address: none may be left.
fn assert_no_addresses_reserved(ipam: &std::path::Path) {
    let reserved: Vec<_> = std::fs::read_dir(ipam.join("rcri-test"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        reserved.is_empty(),
        "addresses left allocated: {reserved:?}"
    );
}

async fn network_condition(node: &Node) -> proto::RuntimeCondition {
    node.client()
        .await
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap()
}

#[tokio::test]
async fn network_ready_follows_the_conf_dir_without_a_restart() {
    let node = Node::start().await;
    let condition = network_condition(&node).await;
    assert!(!condition.status);
    assert_eq!(condition.reason, "NetworkPluginNotReady");
    assert!(
        condition.message.contains("no network config"),
        "{}",
        condition.message
    );

    let network = TestNetwork::new(1);
    let dir = node.sandbox.cni_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-test.conflist"),
        network.conflist(&node.sandbox.path().join("ipam")),
    )
    .unwrap();
    assert!(
        network_condition(&node).await.status,
        "picked up without a restart"
    );

    std::fs::write(dir.join("10-test.conflist"), "{ broken").unwrap();
    let condition = network_condition(&node).await;
    assert!(!condition.status);
    assert!(
        condition.message.contains("10-test.conflist"),
        "names the broken file: {}",
        condition.message
    );
    std::fs::remove_file(dir.join("10-test.conflist")).unwrap();
    assert!(!network_condition(&node).await.status);
}

#[tokio::test]
async fn pods_get_addresses_reach_each_other_and_release_them() {
    let node = Node::start().await;
    let network = TestNetwork::new(2);
    let ipam = node.sandbox.path().join("ipam");
    let dir = node.sandbox.cni_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-test.conflist"), network.conflist(&ipam)).unwrap();

    for handler in HANDLERS {
        let server_pod = node.run_pod(&format!("srv-{handler}"), handler).await;
        let client_pod = node.run_pod(&format!("cli-{handler}"), handler).await;
        let ip_of = |pod: String| {
            let node = &node;
            async move {
                node.client()
                    .await
                    .pod_sandbox_status(proto::PodSandboxStatusRequest {
                        pod_sandbox_id: pod,
                        verbose: false,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status
                    .unwrap()
                    .network
                    .unwrap()
                    .ip
            }
        };
        let server_ip = ip_of(server_pod.clone()).await;
        let client_ip = ip_of(client_pod.clone()).await;
        assert!(
            server_ip.starts_with(&format!("{}.", network.prefix)),
            "{server_ip}"
        );
        assert_ne!(server_ip, client_ip);

        let server = node
            .run(&server_pod, "web", "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www")
            .await;
        let client = node.run(&client_pod, "client", "exec sleep 1000").await;
        let addresses = node
            .out(&server, &["ip", "-4", "addr", "show", "eth0"])
            .await;
        assert!(addresses.contains(&server_ip), "{addresses}");
        let lo = node.out(&server, &["ip", "link", "show", "lo"]).await;
        assert!(lo.contains("UP"), "loopback is up: {lo}");

        let mut answer = String::new();
        for _ in 0..50 {
            let response = node
                .exec(
                    &client,
                    &["wget", "-qO-", &format!("http://{server_ip}:8080/")],
                    5,
                )
                .await
                .unwrap();
            answer = String::from_utf8_lossy(&response.stdout).into_owned();
            if response.exit_code == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answer.trim(), "hello-from-pod", "{handler}: pod-to-pod TCP");

        node.remove_pod(&server_pod).await;
        node.remove_pod(&client_pod).await;
    }
    assert_no_addresses_reserved(&ipam);
    node.assert_clean();
}

#[tokio::test]
async fn a_failing_plugin_fails_the_pod_with_its_message_and_rolls_back() {
    let node = Node::start().await;
    let bin = node.sandbox.path().join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = node.sandbox.script(
        "cni-bin/failing",
        "cat > /dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no addresses left\",\"details\":\"pool exhausted\"}'; exit 1; fi\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >> \"$(dirname \"$0\")/../cni-calls\"",
    );
    assert!(script.exists());
    let dir = node.sandbox.cni_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-fail.conflist"),
        serde_json::json!({"cniVersion": "1.0.0", "name": "failing", "plugins": [{"type": "failing"}]}).to_string(),
    )
    .unwrap();
    // The plugin directory is rcri's configured one: rewrite the config with it.
    let config = std::fs::read_to_string(node.sandbox.config_path())
        .unwrap()
        .replace(
            "network.cni_conf_dir",
            &format!(
                "network.cni_bin_dirs = [\"{}\"]\nnetwork.cni_conf_dir",
                bin.display()
            ),
        );
    std::fs::write(node.sandbox.config_path(), config).unwrap();
    let mut node = node;
    let (status, _) = node.server.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success());
    node.server = node.sandbox.serve();

    let error = node
        .client()
        .await
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(node.pod_config("doomed")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        error.message().contains("no addresses left"),
        "{}",
        error.message()
    );
    let calls = std::fs::read_to_string(node.sandbox.path().join("cni-calls")).unwrap_or_default();
    assert!(
        calls.contains("DEL "),
        "the failed ADD was rolled back with DEL: {calls:?}"
    );
    let pods = node
        .client()
        .await
        .list_pod_sandbox(proto::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty());
    node.assert_clean();
}

#[tokio::test]
async fn a_host_port_reaches_the_container_and_churn_leaks_nothing() {
    let node = Node::start().await;
    let network = TestNetwork::new(3);
    let ipam = node.sandbox.path().join("ipam");
    let dir = node.sandbox.cni_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-test.conflist"), network.conflist(&ipam)).unwrap();

    // hostPort → containerPort through the portmap plugin.
    let host_port = 20000 + (std::process::id() % 20000) as i32;
    let mut config = node.pod_config("published");
    config.port_mappings = vec![proto::PortMapping {
        protocol: proto::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let pod = node
        .client()
        .await
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    node.run(
        &pod,
        "web",
        "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 8080 -h /www",
    )
    .await;
    let gateway = format!("{}.1:{host_port}", network.prefix);
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&gateway.parse().unwrap(), Duration::from_secs(2))
        {
            use std::io::{Read, Write};
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let _ = stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            answer.clear();
            let _ = stream.read_to_string(&mut answer);
            if answer.contains("published") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answer.contains("published"),
        "host port {gateway} answered: {answer:?}"
    );
    node.remove_pod(&pod).await;

    // 50 pods made and removed: no address stays allocated, nothing stays behind.
    for i in 0..50 {
        let pod = node.run_pod(&format!("churn-{i}"), HANDLERS[i % 2]).await;
        node.remove_pod(&pod).await;
    }
    assert_no_addresses_reserved(&ipam);
    node.assert_clean();
}
