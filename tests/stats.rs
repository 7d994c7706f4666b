//! Container and pod stats end to end, under runc, crun and youki: CPU and
//! memory read from the cgroups, the writable layer measured, filters.
//! Needs root, runc, crun, youki, docker-registry and busybox-static
//! (`make test` installs them).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::node::{HANDLERS, Node};
use rcri::proto;
use tonic::Code;

const MB: u64 = 1_000_000;

/// Holds 20 MB in a shell variable, then spins.
const HOG: &str = "x=$(head -c 20000000 /dev/zero | tr '\\0' a); while true; do :; done";

async fn container_stats(node: &Node, id: &str) -> proto::ContainerStats {
    node.client()
        .await
        .container_stats(proto::ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

async fn list(node: &Node, filter: proto::ContainerStatsFilter) -> Vec<String> {
    let mut ids: Vec<String> = node
        .client()
        .await
        .list_container_stats(proto::ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .into_iter()
        .map(|s| s.attributes.unwrap().id)
        .collect();
    ids.sort();
    ids
}

fn value(v: Option<proto::UInt64Value>) -> u64 {
    v.map_or(0, |v| v.value)
}

fn working_set(stats: &proto::ContainerStats) -> u64 {
    value(stats.memory.as_ref().unwrap().working_set_bytes)
}

fn cpu_ns(stats: &proto::ContainerStats) -> u64 {
    value(stats.cpu.as_ref().unwrap().usage_core_nano_seconds)
}

fn layer_bytes(stats: &proto::ContainerStats) -> u64 {
    value(stats.writable_layer.as_ref().unwrap().used_bytes)
}

#[tokio::test]
async fn stats_of_containers_and_pods_under_each_handler() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod_name = format!("stats-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        let created = node.create(&pod, "created", "sleep 1000").await.unwrap();
        let hog = node.run(&pod, "hog", HOG).await;

        // A created container has stats too, with timestamps.
        let stats = container_stats(&node, &created).await;
        let attributes = stats.attributes.clone().unwrap();
        assert_eq!(attributes.id, created);
        assert_eq!(attributes.metadata.unwrap().name, "created");
        assert_eq!(attributes.labels["container"], "created");
        assert!(stats.cpu.unwrap().timestamp > 0);
        assert!(stats.memory.unwrap().timestamp > 0);
        let layer = stats.writable_layer.unwrap();
        assert!(layer.timestamp > 0);
        assert!(!layer.fs_id.unwrap().mountpoint.is_empty());

        // Memory: the 20 MB held show in the working set.
        let mut stats = container_stats(&node, &hog).await;
        for _ in 0..100 {
            if working_set(&stats) > 20 * MB {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stats = container_stats(&node, &hog).await;
        }
        let memory = stats.memory.unwrap();
        assert!(working_set(&stats) > 20 * MB, "{handler}: {memory:?}");
        assert!(
            value(memory.usage_bytes) >= working_set(&stats),
            "{memory:?}"
        );
        assert!(value(memory.rss_bytes) > 20 * MB, "{memory:?}");
        assert!(value(memory.page_faults) > 0, "{memory:?}");

        // CPU: usage grows, and a second sample gives a rate near one core.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = container_stats(&node, &hog).await;
        assert!(cpu_ns(&later) > cpu_ns(&stats), "{handler}: {later:?}");
        let rate = value(later.cpu.as_ref().unwrap().usage_nano_cores);
        assert!(
            rate > 200_000_000,
            "{handler}: a spinning shell uses {rate} nano-cores"
        );

        // The writable layer grows with a file written in the rootfs.
        let before = layer_bytes(&later);
        node.out(&hog, &["sh", "-c", "head -c 5000000 /dev/zero > /big"])
            .await;
        let after = layer_bytes(&container_stats(&node, &hog).await);
        assert!(after >= before + 5 * MB, "{handler}: {before} -> {after}");

        // Filters: id (or prefix), pod, labels; unknown ones match nothing.
        let mut both = vec![created.clone(), hog.clone()];
        both.sort();
        let filter = |id: &str, pod: &str, labels: &[(&str, &str)]| proto::ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        };
        assert_eq!(list(&node, filter("", &pod, &[])).await, both);
        assert_eq!(list(&node, filter(&hog, "", &[])).await, vec![hog.clone()]);
        assert_eq!(
            list(&node, filter(&hog[..12], &pod, &[])).await,
            vec![hog.clone()]
        );
        assert_eq!(
            list(&node, filter("", &pod, &[("container", "created")])).await,
            vec![created.clone()]
        );
        assert!(
            list(&node, filter("", &pod, &[("container", "nope")]))
                .await
                .is_empty()
        );
        assert!(
            list(&node, filter("0000deadbeef", "", &[]))
                .await
                .is_empty()
        );
        assert!(
            list(&node, filter("", "0000deadbeef", &[]))
                .await
                .is_empty()
        );
        let all = node
            .client()
            .await
            .list_container_stats(proto::ListContainerStatsRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .stats;
        assert!(
            all.iter()
                .any(|s| s.attributes.as_ref().unwrap().id == created)
        );

        // The pod: its containers, and its own usage covering theirs.
        let pod_stats = node
            .client()
            .await
            .pod_sandbox_stats(proto::PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert_eq!(pod_stats.attributes.as_ref().unwrap().id, pod);
        assert_eq!(
            pod_stats.attributes.as_ref().unwrap().labels["app"],
            pod_name
        );
        let linux = pod_stats.linux.unwrap();
        let mut ids: Vec<String> = linux
            .containers
            .iter()
            .map(|c| c.attributes.as_ref().unwrap().id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, both);
        let cpu = linux.cpu.unwrap();
        assert!(cpu.timestamp > 0);
        assert!(value(cpu.usage_core_nano_seconds) >= cpu_ns(&later));
        assert!(value(linux.memory.unwrap().working_set_bytes) > 20 * MB);
        assert!(value(linux.process.unwrap().process_count) >= 2);
        if let Some(network) = linux.network {
            assert!(network.interfaces.iter().all(|i| i.name != "lo"));
        }

        let listed = node
            .client()
            .await
            .list_pod_sandbox_stats(proto::ListPodSandboxStatsRequest {
                filter: Some(proto::PodSandboxStatsFilter {
                    id: String::new(),
                    label_selector: HashMap::from([("app".into(), pod_name.clone())]),
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod);

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let node = Node::start().await;
    let mut client = node.client().await;
    let error = client
        .container_stats(proto::ContainerStatsRequest {
            container_id: "0000deadbeef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
    let error = client
        .pod_sandbox_stats(proto::PodSandboxStatsRequest {
            pod_sandbox_id: "0000deadbeef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
    let listed = client
        .list_pod_sandbox_stats(proto::ListPodSandboxStatsRequest {
            filter: Some(proto::PodSandboxStatsFilter {
                id: "0000deadbeef".into(),
                label_selector: HashMap::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(listed.is_empty());
}
