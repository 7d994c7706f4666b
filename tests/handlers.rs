//! Per-handler options, checked through the CRI with the real runc:
//! `runtime_root`, `runtime_args`, `privileged_without_host_devices`,
//! `allowed_annotations`, and features a handler lacks. Needs root, runc,
//! crun, docker-registry and busybox-static (`make test` installs them).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::node::{Node, pod_security, security};
use common::require_tool;
use rcri::proto;
use tonic::Code;

async fn run_config(node: &Node, pod: &str, config: proto::ContainerConfig) -> String {
    let id = node
        .client()
        .await
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {}", e.message()))
        .into_inner()
        .container_id;
    node.start_container(&id).await.unwrap();
    id
}

/// `runc --root ROOT state ID` succeeds.
fn runc_knows(root: &Path, id: &str) -> bool {
    Command::new(require_tool("runc"))
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn runtime_root_keeps_each_handler_s_containers_apart() {
    let roots = tempfile::tempdir().unwrap();
    let own_root = roots.path().join("rooted");
    let node = Node::start_with(&format!(
        "[handlers.rooted]\nruntime_path = \"{}\"\nruntime_root = \"{}\"\n",
        require_tool("runc").display(),
        own_root.display()
    ))
    .await;
    let default_root = node.sandbox.path().join("run/runtimes/runc");

    let rooted_pod = node.run_pod("rooted", "rooted").await;
    let rooted = node.run(&rooted_pod, "app", "exec sleep 1000").await;
    let plain_pod = node.run_pod("plain", "runc").await;
    let plain = node.run(&plain_pod, "app", "exec sleep 1000").await;

    // The runtime's state lives under the handler's own root...
    for id in [&rooted_pod, &rooted] {
        assert!(
            own_root.join(id).join("state.json").is_file(),
            "{id} is not under {}",
            own_root.display()
        );
        assert!(!default_root.join(id).exists());
        assert!(runc_knows(&own_root, id));
        assert!(!runc_knows(&default_root, id), "the default root sees {id}");
    }
    // ...and the default handler's under its default root only.
    for id in [&plain_pod, &plain] {
        assert!(default_root.join(id).join("state.json").is_file());
        assert!(!own_root.join(id).exists());
        assert!(!runc_knows(&own_root, id), "the other root sees {id}");
    }
    // Everything still works through the handler's own root.
    assert_eq!(node.out(&rooted, &["echo", "hi"]).await, "hi\n");
    node.remove_pod(&rooted_pod).await;
    node.remove_pod(&plain_pod).await;
    assert!(!own_root.join(&rooted).exists());
    node.assert_clean();
}

#[tokio::test]
async fn runtime_args_come_before_every_verb_and_reach_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let argv_log = dir.path().join("argv.log");
    // A thin wrapper: logs its arguments, then runs the real runc.
    let wrapper = dir.path().join("runc-logged");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n",
            argv_log.display(),
            require_tool("runc").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let node = Node::start_with(&format!(
        "[handlers.debug]\nruntime_path = \"{}\"\nruntime_args = [\"--debug\", \"--log-format\", \"json\"]\n",
        wrapper.display()
    ))
    .await;
    let pod = node.run_pod("debug", "debug").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;
    assert_eq!(node.out(&app, &["echo", "hi"]).await, "hi\n");

    // The observable effect in runc itself: `--debug` with JSON logs makes
    // `create` log debug entries as JSON to the container's runtime log.
    let runtime_log = node
        .sandbox
        .path()
        .join("run/containers")
        .join(&app)
        .join("runtime.log");
    let log = std::fs::read_to_string(&runtime_log).unwrap();
    let debug_entries = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "debug")
        .count();
    assert!(
        debug_entries > 0,
        "no JSON debug entries in {}: {log}",
        runtime_log.display()
    );
    // The same container on a handler without the flags logs no debug entries.
    let plain_pod = node.run_pod("plain", "runc").await;
    let plain = node.run(&plain_pod, "app", "exec sleep 1000").await;
    let plain_log = std::fs::read_to_string(
        node.sandbox
            .path()
            .join("run/containers")
            .join(&plain)
            .join("runtime.log"),
    )
    .unwrap_or_default();
    assert!(!plain_log.contains("debug"), "{plain_log}");

    node.remove_pod(&pod).await;
    node.remove_pod(&plain_pod).await;
    node.assert_clean();

    // Every call put the handler's flags first, then (but for `features`)
    // its root, then the verb.
    let root = node.sandbox.path().join("run/runtimes/debug");
    let flags = "--debug --log-format json ";
    let root_flag = format!("--root {} ", root.display());
    let calls = std::fs::read_to_string(&argv_log).unwrap();
    let mut verbs = Vec::new();
    for call in calls.lines() {
        let rest = call
            .strip_prefix(flags)
            .unwrap_or_else(|| panic!("{call:?} does not start with {flags:?}"));
        if rest == "features" {
            verbs.push(rest.to_string());
            continue;
        }
        let rest = rest
            .strip_prefix(&root_flag)
            .unwrap_or_else(|| panic!("{call:?}: no {root_flag:?} after the flags"));
        let verb = rest
            .split(' ')
            .find(|w| !w.starts_with('-') && !w.starts_with('/'))
            .unwrap_or_default()
            .to_string();
        verbs.push(verb);
    }
    for verb in ["features", "create", "start", "exec", "kill", "delete"] {
        assert!(verbs.iter().any(|v| v == verb), "no `{verb}` call: {calls}");
    }
}

#[tokio::test]
async fn privileged_without_host_devices_keeps_host_devices_out() {
    let node = Node::start_with(&format!(
        "[handlers.nodev]\nruntime_path = \"{}\"\nprivileged_without_host_devices = true\n",
        require_tool("runc").display()
    ))
    .await;
    // Devices this host has and no container gets by default.
    let host_only: Vec<&str> = ["loop0", "loop-control", "vda"]
        .into_iter()
        .filter(|d| Path::new("/dev").join(d).exists())
        .collect();
    assert!(
        !host_only.is_empty(),
        "this test needs a host device such as /dev/loop0"
    );
    for (handler, expect_host_devices) in [("runc", true), ("nodev", false)] {
        let mut pod_config = node.pod_config(&format!("priv-{handler}"));
        pod_security(&mut pod_config).privileged = true;
        let pod = node.run_pod_with(pod_config, handler).await;
        let mut config = node.container_config("privileged", "exec sleep 1000");
        security(&mut config).privileged = true;
        let id = run_config(&node, &pod, config).await;
        let devices = node.out(&id, &["ls", "/dev"]).await;
        let devices: Vec<&str> = devices.lines().collect();
        for device in &host_only {
            assert_eq!(
                devices.contains(device),
                expect_host_devices,
                "{handler}: /dev/{device} in {devices:?}"
            );
        }
        // The defaults are there either way.
        for device in ["null", "zero", "urandom", "tty"] {
            assert!(devices.contains(&device), "{handler}: {devices:?}");
        }
        // Still privileged: full capabilities.
        let status = node.out(&id, &["cat", "/proc/self/status"]).await;
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim()
            .to_string();
        assert_ne!(cap_eff, "00000000a80425fb", "{handler}: {cap_eff}");
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

fn bundle_annotations(path: &Path) -> HashMap<String, String> {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("config.json")).unwrap()).unwrap();
    serde_json::from_value(spec["annotations"].clone()).unwrap_or_default()
}

#[tokio::test]
async fn only_allowed_annotations_reach_the_oci_spec() {
    let node = Node::start_with(&format!(
        "[handlers.annotated]\nruntime_path = \"{}\"\nallowed_annotations = [\"example.com/allowed\", \"io.example.sandbox/*\"]\n",
        require_tool("runc").display()
    ))
    .await;
    let annotations = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for (handler, allowed) in [("annotated", true), ("runc", false)] {
        let mut pod_config = node.pod_config(&format!("annotations-{handler}"));
        pod_config.annotations = annotations(&[
            ("example.com/allowed", "pod"),
            ("example.com/allowed-not", "pod"),
            ("io.example.sandbox/mode", "strict"),
            ("other.io/secret", "pod"),
        ]);
        let pod = node.run_pod_with(pod_config, handler).await;
        let mut config = node.container_config("app", "exec sleep 1000");
        config.annotations = annotations(&[
            ("example.com/allowed", "container"),
            ("io.example.sandbox/level", "2"),
            ("io.example.other/level", "3"),
        ]);
        let app = run_config(&node, &pod, config).await;

        let run = node.sandbox.path().join("run");
        let pause = bundle_annotations(&run.join("pods").join(&pod));
        let container = bundle_annotations(&run.join("containers").join(&app));
        for (what, found) in [("pause", &pause), ("container", &container)] {
            // rcri's own annotations are always there.
            assert_eq!(
                found.get("io.kubernetes.cri.sandbox-id"),
                Some(&pod),
                "{handler} {what}: {found:?}"
            );
            for key in ["example.com/allowed-not", "other.io/secret"] {
                assert!(!found.contains_key(key), "{handler} {what}: {found:?}");
            }
        }
        assert!(!container.contains_key("io.example.other/level"));
        if allowed {
            assert_eq!(pause["example.com/allowed"], "pod");
            assert_eq!(pause["io.example.sandbox/mode"], "strict");
            // The container's own value wins over the pod's.
            assert_eq!(container["example.com/allowed"], "container");
            assert_eq!(container["io.example.sandbox/mode"], "strict");
            assert_eq!(container["io.example.sandbox/level"], "2");
        } else {
            for key in ["example.com/allowed", "io.example.sandbox/mode"] {
                assert!(!pause.contains_key(key), "{handler}: {pause:?}");
                assert!(!container.contains_key(key), "{handler}: {container:?}");
            }
        }
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

/// The features `Status` reports for each handler.
async fn features(node: &Node) -> HashMap<String, proto::RuntimeHandlerFeatures> {
    node.client()
        .await
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .into_iter()
        .filter(|h| !h.name.is_empty())
        .map(|h| (h.name, h.features.unwrap_or_default()))
        .collect()
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test]
async fn features_a_handler_lacks_are_refused_with_invalid_argument() {
    let node = Node::start().await;
    let features = features(&node).await;
    for handler in ["runc", "crun"] {
        // User namespaces: neither runtime here reports idmapped mounts.
        assert!(
            !features[handler].user_namespaces,
            "{handler}: {features:?}"
        );
        let mut pod_config = node.pod_config(&format!("userns-{handler}"));
        pod_security(&mut pod_config).namespace_options = Some(proto::NamespaceOption {
            userns_options: Some(proto::UserNamespace {
                mode: proto::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        std::fs::create_dir_all(&pod_config.log_directory).unwrap();
        let error = node
            .client()
            .await
            .run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(pod_config),
                runtime_handler: handler.into(),
            })
            .await
            .expect_err("a user namespace on a handler without them");
        assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
        assert!(
            error.message().starts_with(&format!(
                "runtime handler \"{handler}\" does not support user namespaces"
            )),
            "{}",
            error.message()
        );
        node.assert_clean();
    }

    // Recursive read-only mounts: runc has them, crun 1.8 does not.
    assert!(features["runc"].recursive_read_only_mounts);
    assert!(!features["crun"].recursive_read_only_mounts);
    let source = tempfile::tempdir().unwrap();
    let pod = node.run_pod("rro-crun", "crun").await;
    let mut config = node.container_config("rro", "exec sleep 1000");
    config.mounts = vec![proto::Mount {
        container_path: "/rro".into(),
        host_path: source.path().display().to_string(),
        readonly: true,
        recursive_read_only: true,
        ..Default::default()
    }];
    let error = node
        .client()
        .await
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .expect_err("rro on crun");
    assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
    assert!(
        error.message().starts_with(
            "runtime handler \"crun\" does not support recursive read-only mounts (mount /rro)"
        ),
        "{}",
        error.message()
    );
    // Nothing of the refused container is left; the pod goes on.
    let root = node.sandbox.path();
    assert!(entries(&root.join("state/containers")).is_empty());
    assert!(entries(&root.join("run/containers")).is_empty());
    let app = node.run(&pod, "app", "exec sleep 1000").await;
    assert_eq!(node.out(&app, &["echo", "ok"]).await, "ok\n");
    node.remove_pod(&pod).await;
    node.assert_clean();
}

fn hangup(node: &Node) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

async fn handler_names(node: &Node) -> Vec<String> {
    node.client()
        .await
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .collect()
}

/// Waits until the server's log holds `needle` `count` times.
async fn wait_for_log(node: &Node, needle: &str, count: usize) {
    for _ in 0..500 {
        if node.server.log_text().matches(needle).count() >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "no {needle:?} (x{count}) in the log:\n{}",
        node.server.log_text()
    );
}

#[tokio::test]
async fn sighup_reloads_the_handler_table_and_running_pods_keep_theirs() {
    let runc = require_tool("runc");
    let crun = require_tool("crun");
    let mut node = Node::start_with(&format!(
        "[handlers.extra]\nruntime_path = \"{}\"\n",
        runc.display()
    ))
    .await;
    assert_eq!(
        handler_names(&node).await,
        ["", "crun", "extra", "runc", "youki"]
    );
    let old_pod = node.run_pod("old", "extra").await;
    let old_app = node.run(&old_pod, "app", "exec sleep 1000").await;

    // A new table: `extra`, `crun` and `youki` gone, `fresh` (crun) added; the log
    // level is not applied by a reload and is named as needing a restart.
    node.sandbox.write_config(&format!(
        "default_handler = \"runc\"\nlog_level = \"debug\"\n[handlers.runc]\nruntime_path = \"{}\"\n[handlers.fresh]\nruntime_path = \"{}\"\n",
        runc.display(),
        crun.display()
    ));
    hangup(&node);
    wait_for_log(&node, "runtime handlers reloaded", 1).await;
    assert_eq!(handler_names(&node).await, ["", "fresh", "runc"]);
    let log = node.server.log_text();
    assert!(
        log.contains("restart rcri to apply them") && log.contains("log_level"),
        "{log}"
    );

    // New pods use the new table at once.
    let error = node
        .client()
        .await
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(node.pod_config("late")),
            runtime_handler: "extra".into(),
        })
        .await
        .expect_err("extra is gone");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "runtime handler \"extra\" is not configured; configured handlers: fresh, runc"
    );
    let fresh_pod = node.run_pod("fresh", "fresh").await;
    let fresh = node.run(&fresh_pod, "app", "exec sleep 1000").await;
    let runtime = node.out(&fresh, &["cat", "/proc/1/cgroup"]).await;
    assert!(!runtime.is_empty());
    assert!(
        node.sandbox
            .path()
            .join("run/runtimes/fresh")
            .join(&fresh)
            .exists(),
        "the fresh pod runs under crun's root for `fresh`"
    );

    // The running pod keeps its handler: exec, new containers, stop.
    assert_eq!(node.out(&old_app, &["echo", "still"]).await, "still\n");
    let second = node.run(&old_pod, "second", "exec sleep 1000").await;
    assert!(runc_knows(
        &node.sandbox.path().join("run/runtimes/extra"),
        &second
    ));

    // A configuration that does not load is refused; the table stays.
    node.sandbox
        .write_config("default_handler = \"runc\"\n[handlers.runc\n");
    hangup(&node);
    wait_for_log(&node, "reload refused", 1).await;
    assert_eq!(handler_names(&node).await, ["", "fresh", "runc"]);
    // So is one whose default handler is unusable.
    node.sandbox.write_config(
        "default_handler = \"gone\"\n[handlers.gone]\nruntime_path = \"/nonexistent/gone\"\n",
    );
    hangup(&node);
    wait_for_log(&node, "reload refused", 2).await;
    assert!(
        node.server.log_text().contains("/nonexistent/gone"),
        "the refusal says why"
    );
    assert_eq!(handler_names(&node).await, ["", "fresh", "runc"]);

    // After a restart with the new configuration the old pod still has
    // its handler, from its record.
    node.sandbox.write_config(&format!(
        "default_handler = \"runc\"\n[handlers.runc]\nruntime_path = \"{}\"\n[handlers.fresh]\nruntime_path = \"{}\"\n",
        runc.display(),
        crun.display()
    ));
    node.server.stop_with(nix::sys::signal::Signal::SIGTERM);
    node.server = node.sandbox.serve();
    assert_eq!(handler_names(&node).await, ["", "fresh", "runc"]);
    assert_eq!(node.out(&second, &["echo", "after"]).await, "after\n");
    node.client()
        .await
        .stop_container(proto::StopContainerRequest {
            container_id: old_app.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        node.wait_exited(&old_app).await.state,
        proto::ContainerState::ContainerExited as i32
    );
    node.remove_pod(&old_pod).await;
    node.remove_pod(&fresh_pod).await;
    node.assert_clean();
}
