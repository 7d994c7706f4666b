//! A broken runtime handler is never a hang or a riddle: scripted fake
//! runtimes inject the faults (a create that hangs, a create that fails with
//! its own words, a binary removed after start, a `state` that prints
//! garbage or fails). Needs root, runc (the default handler), crun,
//! docker-registry and busybox-static, which `make test` installs.

mod common;

use std::time::{Duration, Instant};

use common::{Sandbox, require_tool};
use rcri::proto;
use tonic::Code;

/// A fake runc-compatible runtime: `create` does what `on_create` says,
/// every other verb succeeds quietly.
const FAKE_RUNTIME: &str = r#"
log=/dev/null
while [ $# -gt 0 ]; do
  case "$1" in
    --log) log="$2"; shift 2 ;;
    --root) shift 2 ;;
    create) shift; break ;;
    *) exit 0 ;;
  esac
done
ON_CREATE
"#;

fn pod_config(name: &str) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

fn start(sandbox: &Sandbox, handler: &str, on_create: &str, extra: &str) -> common::Server {
    let fake = sandbox.script(handler, &FAKE_RUNTIME.replace("ON_CREATE", on_create));
    sandbox.write_config(&format!(
        "default_handler = \"runc\"\n[handlers.runc]\nruntime_path = \"{}\"\n[handlers.{handler}]\nruntime_path = \"{}\"\n{extra}",
        require_tool("runc").display(),
        fake.display()
    ));
    sandbox.serve()
}

async fn run_pod(server: &common::Server, handler: &str) -> tonic::Status {
    server
        .runtime()
        .await
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(pod_config(handler)),
            runtime_handler: handler.into(),
        })
        .await
        .expect_err("the broken handler must fail the pod")
}

fn assert_nothing_left(sandbox: &Sandbox) {
    for dir in ["state/pods", "run/pods"] {
        let left: Vec<_> = std::fs::read_dir(sandbox.path().join(dir))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&sandbox.path().display().to_string()),
        "mounts left"
    );
    let monitors = common::node::processes_mentioning(&sandbox.path().display().to_string());
    assert!(monitors.is_empty(), "processes left: {monitors:?}");
}

#[tokio::test]
async fn a_create_that_hangs_fails_with_deadline_exceeded_after_the_handler_timeout() {
    let sandbox = Sandbox::new();
    let server = start(
        &sandbox,
        "hang",
        "exec sleep 120",
        "create_timeout = \"2s\"\n",
    );
    let started = Instant::now();
    let error = run_pod(&server, "hang").await;
    assert_eq!(error.code(), Code::DeadlineExceeded, "{}", error.message());
    assert!(
        error.message().starts_with("runtime handler \"hang\""),
        "the first words say which handler: {}",
        error.message()
    );
    assert!(
        error.message().contains("create_timeout"),
        "{}",
        error.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_left(&sandbox);
}

#[tokio::test]
async fn a_failing_create_reports_the_runtime_s_own_words() {
    let sandbox = Sandbox::new();
    let server = start(
        &sandbox,
        "failing",
        r#"echo '{"level":"error","msg":"cannot frobnicate the widget"}' >> "$log"; echo "also on stderr" >&2; exit 1"#,
        "",
    );
    let error = run_pod(&server, "failing").await;
    assert!(
        error.message().contains("cannot frobnicate the widget"),
        "{}",
        error.message()
    );
    assert_nothing_left(&sandbox);
}

#[tokio::test]
async fn a_runtime_binary_removed_after_start_is_named() {
    let sandbox = Sandbox::new();
    let server = start(&sandbox, "vanished", "exit 0", "");
    let binary = sandbox.path().join("vanished");
    std::fs::remove_file(&binary).unwrap();
    let error = run_pod(&server, "vanished").await;
    assert!(
        error.message().contains(&binary.display().to_string()),
        "names the missing binary: {}",
        error.message()
    );
    assert_nothing_left(&sandbox);
    // The other handlers still work.
    let pod = server
        .runtime()
        .await
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(pod_config("fine")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut client = server.runtime().await;
    client
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    client
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    assert_nothing_left(&sandbox);
}

/// The real runc behind a wrapper whose `state` does what `on_state` says
/// and whose `kill` does nothing, so a stopped container's exit must be
/// asked of `state`.
fn broken_state_runtime(dir: &std::path::Path, on_state: &str) -> std::path::PathBuf {
    let path = dir.join("broken-state");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nverb=\nfor a in \"$@\"; do case \"$a\" in -*|/*) ;; *) verb=$a; break ;; esac; done\ncase \"$verb\" in\n  state) {on_state} ;;\n  kill) exit 0 ;;\n  *) exec {} \"$@\" ;;\nesac\n",
            require_tool("runc").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    path
}

/// StopContainer fails in bounded time naming the runtime and quoting what
/// it said; ContainerStatus and a restart of rcri are unaffected; once the
/// container really exits, the pod is removed cleanly.
async fn a_broken_state_is_named(on_state: &str, quoted: &str) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = broken_state_runtime(dir.path(), on_state);
    let mut node = common::node::Node::start_with(&format!(
        "[handlers.broken]\nruntime_path = \"{}\"\n",
        runtime.display()
    ))
    .await;
    let pod = node.run_pod("broken", "broken").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    let started = Instant::now();
    let error = node
        .client()
        .await
        .stop_container(proto::StopContainerRequest {
            container_id: app.clone(),
            timeout: 0,
        })
        .await
        .expect_err("the container cannot be confirmed stopped");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(error.code(), Code::DeadlineExceeded, "{}", error.message());
    let message = error.message();
    assert!(
        message.starts_with(&format!("container {app} did not exit")),
        "{message}"
    );
    assert!(
        message.contains(&runtime.display().to_string()),
        "names the runtime: {message}"
    );
    assert!(message.contains(quoted), "quotes the runtime: {message}");

    // Status still answers, at once, and so does a restarted rcri.
    let status = node.status(&app).await;
    assert_eq!(status.state, proto::ContainerState::ContainerRunning as i32);
    node.server.stop_with(nix::sys::signal::Signal::SIGKILL);
    node.server = node.sandbox.serve();
    let started = Instant::now();
    let status = node.status(&app).await;
    assert_eq!(status.state, proto::ContainerState::ContainerRunning as i32);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Once the container really exits, everything goes away.
    let killed = std::process::Command::new(require_tool("runc"))
        .arg("--root")
        .arg(node.sandbox.path().join("run/runtimes/broken"))
        .args(["kill", &app, "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
    node.wait_exited(&app).await;
    node.remove_pod(&pod).await;
    node.assert_clean();
}

#[tokio::test]
async fn a_runtime_printing_garbage_for_state_is_named_and_quoted() {
    a_broken_state_is_named(
        "echo 'ceci n est pas un etat'; exit 0",
        "ceci n est pas un etat",
    )
    .await;
}

#[tokio::test]
async fn a_runtime_failing_state_is_named_and_quoted() {
    a_broken_state_is_named(
        "echo 'state: the frobnicator jammed' >&2; exit 1",
        "state: the frobnicator jammed",
    )
    .await;
}
