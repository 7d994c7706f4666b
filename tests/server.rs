//! `rcri serve` end to end: the socket, the RPCs that work, and the ones that
//! do not yet. Needs root-free tools only, but uses the real `runc` (and
//! `crun` where noted) as handlers; `make test` installs both.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use common::{RCRI, Sandbox, require_tool};
use nix::sys::signal::Signal;
use rcri::proto;
use tonic::Code;

fn runc_and_crun_config(sandbox: &Sandbox) -> std::path::PathBuf {
    let runc = require_tool("runc");
    let crun = require_tool("crun");
    sandbox.write_config(&format!(
        "default_handler = \"runc\"\n\
         [handlers.runc]\nruntime_path = \"{}\"\n\
         [handlers.crun]\nruntime_path = \"{}\"\n\
         [handlers.broken]\nruntime_path = \"/nonexistent/broken-runtime\"\n",
        runc.display(),
        crun.display()
    ))
}

#[tokio::test]
async fn version_names_rcri_and_the_v1_api() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let version = server
        .runtime()
        .await
        .version(proto::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "rcri");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
}

#[tokio::test]
async fn status_lists_handlers_with_features_and_the_default_under_the_empty_name() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let status = server
        .runtime()
        .await
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();

    let conditions: HashMap<_, _> = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .map(|c| (c.r#type.clone(), c))
        .collect();
    assert!(conditions["RuntimeReady"].status);
    let network = &conditions["NetworkReady"];
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(!network.message.is_empty());

    let names: Vec<_> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "crun", "runc"], "the broken handler is dropped");
    let features: HashMap<_, _> = status
        .runtime_handlers
        .iter()
        .map(|h| (h.name.as_str(), h.features.unwrap()))
        .collect();
    // runc 1.1 reports `rro` in `runc features`; crun 1.8 has no `features` command.
    assert!(features["runc"].recursive_read_only_mounts);
    assert!(!features["crun"].recursive_read_only_mounts);
    assert_eq!(features[""], features["runc"], "the default is runc");
    assert!(
        !features["runc"].user_namespaces,
        "runc 1.1 has no idmapped mounts"
    );
    assert!(status.info.is_empty(), "info only when verbose");
}

#[tokio::test]
async fn verbose_status_carries_the_config_and_the_dropped_handlers() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let info = server
        .runtime()
        .await
        .status(proto::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner()
        .info;
    let config: serde_json::Value = serde_json::from_str(&info["config"]).unwrap();
    assert_eq!(config["default_handler"], "runc");
    assert_eq!(
        config["socket"],
        sandbox.socket().display().to_string(),
        "the effective config"
    );
    assert!(config["handlers"]["crun"]["runtime_path"].is_string());
    let dropped: serde_json::Value = serde_json::from_str(&info["droppedHandlers"]).unwrap();
    assert_eq!(dropped[0]["name"], "broken");
    assert!(
        dropped[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("/nonexistent/broken-runtime: no such file"),
        "{dropped}"
    );
}

#[tokio::test]
async fn runtime_config_reports_the_cgroup_driver() {
    for (driver, expected) in [
        ("cgroupfs", proto::CgroupDriver::Cgroupfs),
        ("systemd", proto::CgroupDriver::Systemd),
    ] {
        let sandbox = Sandbox::new();
        sandbox.write_config(&format!(
            "cgroup_driver = \"{driver}\"\n[handlers.runc]\nruntime_path = \"{}\"\n",
            require_tool("runc").display()
        ));
        let server = sandbox.serve();
        let response = server
            .runtime()
            .await
            .runtime_config(proto::RuntimeConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.linux.unwrap().cgroup_driver(), expected);
    }
}

fn pod_cidr_request(cidr: &str) -> proto::UpdateRuntimeConfigRequest {
    proto::UpdateRuntimeConfigRequest {
        runtime_config: Some(proto::RuntimeConfig {
            network_config: Some(proto::NetworkConfig {
                pod_cidr: cidr.to_string(),
            }),
        }),
    }
}

#[tokio::test]
async fn update_runtime_config_keeps_the_pod_cidr_and_refuses_garbage() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let mut client = server.runtime().await;
    client
        .update_runtime_config(pod_cidr_request("10.244.1.0/24,fd00:1::/64"))
        .await
        .unwrap();
    let error = client
        .update_runtime_config(pod_cidr_request("10.244.1.0"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error
            .message()
            .starts_with("pod CIDR \"10.244.1.0\" is not a valid CIDR"),
        "{}",
        error.message()
    );
    client
        .update_runtime_config(pod_cidr_request(""))
        .await
        .unwrap();
    let info = client
        .status(proto::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner()
        .info;
    assert_eq!(
        info["podCIDR"], "10.244.1.0/24,fd00:1::/64",
        "kept, not erased by the empty update"
    );
}

#[tokio::test]
async fn messages_up_to_16_mib_are_accepted() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let mut client = server.runtime().await;
    // Larger than gRPC's 4 MiB default: must reach the handler (and be refused there).
    let error = client
        .update_runtime_config(pod_cidr_request(&"x".repeat(8 << 20)))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::InvalidArgument,
        "{}",
        &error.message()[..80]
    );
    // A client without our limit sends more than 16 MiB: the server refuses it.
    let mut unlimited =
        proto::runtime_service_client::RuntimeServiceClient::new(server.channel().await);
    let error = unlimited
        .update_runtime_config(pod_cidr_request(&"x".repeat(17 << 20)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange, "{}", error.message());
    assert!(
        error.message().contains(&format!("{}", 16 << 20)),
        "{}",
        error.message()
    );
    client
        .version(proto::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn other_rpcs_are_unimplemented_and_say_which() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let mut runtime = server.runtime().await;
    let error = runtime
        .checkpoint_container(proto::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);
    assert_eq!(
        error.message(),
        "runtime.v1.RuntimeService/CheckpointContainer is not implemented by rcri yet"
    );
    let error = runtime
        .stream_containers(proto::StreamContainersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);
    assert!(error.message().contains("StreamContainers"));

    let mut images = server.images().await;
    let error = images
        .stream_images(proto::StreamImagesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);
    assert_eq!(
        error.message(),
        "runtime.v1.ImageService/StreamImages is not implemented by rcri yet"
    );
    // The server is still fine afterwards.
    runtime
        .version(proto::VersionRequest::default())
        .await
        .unwrap();
}

/// An ImageService client that sends the call's deadline but, unlike
/// tonic's channel, does not enforce it itself: the test sees what rcri
/// answers, not the client's own `CANCELLED`.
async fn images_without_a_client_deadline(
    socket: std::path::PathBuf,
) -> proto::image_service_client::ImageServiceClient<
    impl tonic::client::GrpcService<
        tonic::body::Body,
        ResponseBody = hyper::body::Incoming,
        Error = hyper::Error,
        Future = impl Send,
    > + Clone,
> {
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let mut sender = sender.clone();
        async move { sender.send_request(request).await }
    });
    proto::image_service_client::ImageServiceClient::with_origin(
        service,
        "http://localhost".parse().unwrap(),
    )
}

#[tokio::test]
async fn a_call_past_its_deadline_gets_deadline_exceeded() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    // A registry that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut images = images_without_a_client_deadline(sandbox.socket()).await;
    let mut request = tonic::Request::new(proto::PullImageRequest {
        image: Some(proto::ImageSpec {
            image: format!("127.0.0.1:{port}/silent:1"),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    let error = images.pull_image(request).await.unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert_eq!(
        error.message(),
        "the client's deadline of 50ms passed before rcri finished runtime.v1.ImageService/PullImage"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The same connection and the server serve on.
    images
        .list_images(proto::ListImagesRequest::default())
        .await
        .unwrap();
    // A deadline that is met changes nothing.
    let mut request = tonic::Request::new(proto::VersionRequest::default());
    request.set_timeout(std::time::Duration::from_secs(10));
    server.runtime().await.version(request).await.unwrap();
    held.abort();
}

#[tokio::test]
async fn the_socket_is_mode_0660_and_removed_on_sigterm() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let mut server = sandbox.serve();
    let meta = std::fs::metadata(sandbox.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let (status, stderr) = server.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(!sandbox.socket().exists(), "socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_idle_connection_open_exits_at_once() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let mut server = sandbox.serve();
    // As the kubelet does: one connection, kept open between calls.
    let mut runtime = server.runtime().await;
    runtime
        .version(proto::VersionRequest::default())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, stderr) = tokio::task::spawn_blocking(move || server.stop_with(Signal::SIGTERM))
        .await
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("grace period"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_calls_in_flight_a_grace_period_then_exits() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let mut server = sandbox.serve();
    // A pull from a registry that never answers stays in flight.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let (reached, pulling) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        let _ = reached.send(());
        std::future::pending::<()>().await;
        drop(stream);
    });
    let mut images = server.images().await;
    let call = tokio::spawn(async move {
        images
            .pull_image(proto::PullImageRequest {
                image: Some(proto::ImageSpec {
                    image: format!("127.0.0.1:{port}/silent:1"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
    });
    pulling.await.unwrap();
    let started = std::time::Instant::now();
    let (status, stderr) = tokio::task::spawn_blocking(move || server.stop_with(Signal::SIGTERM))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("calls still open after the grace period"),
        "{stderr}"
    );
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    assert!(call.await.unwrap().is_err(), "the call never got an answer");
    held.abort();
}

#[tokio::test]
async fn sigint_also_stops_gracefully() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let mut server = sandbox.serve();
    let (status, stderr) = server.stop_with(Signal::SIGINT);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("signal=\"SIGINT\""), "{stderr}");
}

#[tokio::test]
async fn a_second_rcri_refuses_to_start_while_one_is_live() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let server = sandbox.serve();
    let output = sandbox.run(&["serve"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "another rcri is already running with run_dir {}",
            sandbox.path().join("run").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("locked by pid {}", server.pid())),
        "{stderr}"
    );

    // Another run_dir but the same socket: the live socket is detected.
    let other = Sandbox::new();
    std::fs::write(
        other.config_path(),
        format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\nrun_dir = \"{}\"\n[handlers.runc]\nruntime_path = \"{}\"\n",
            sandbox.socket().display(),
            other.path().join("state").display(),
            other.path().join("run").display(),
            require_tool("runc").display()
        ),
    )
    .unwrap();
    let output = other.run(&["serve"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "another process is already serving on {}",
            sandbox.socket().display()
        )),
        "{stderr}"
    );
    // The first one is untouched.
    server
        .runtime()
        .await
        .version(proto::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    // A socket nobody listens on any more, as a crashed rcri leaves it.
    drop(std::os::unix::net::UnixListener::bind(sandbox.socket()).unwrap());
    assert!(sandbox.socket().exists());
    let server = sandbox.serve();
    server
        .runtime()
        .await
        .version(proto::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn kill_9_leaves_a_stale_socket_that_the_next_start_replaces() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    let mut server = sandbox.serve();
    let (status, _) = server.stop_with(Signal::SIGKILL);
    assert!(!status.success());
    assert!(
        sandbox.socket().exists(),
        "SIGKILL leaves the socket behind"
    );
    let server = sandbox.serve();
    // Seen once under a fully loaded machine: the first call after the
    // restart failed. Retry briefly, and show the log if it keeps failing.
    let mut last_error = None;
    for _ in 0..5 {
        match server
            .runtime()
            .await
            .version(proto::VersionRequest::default())
            .await
        {
            Ok(_) => return,
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{last_error:?}\n{}", server.log_text());
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_replaced() {
    let sandbox = Sandbox::new();
    runc_and_crun_config(&sandbox);
    std::fs::write(sandbox.socket(), "precious").unwrap();
    let output = sandbox.run(&["serve"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{} exists and is not a socket",
            sandbox.socket().display()
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.socket()).unwrap(),
        "precious"
    );
}

#[test]
fn serve_refuses_a_default_handler_whose_binary_is_missing() {
    let sandbox = Sandbox::new();
    sandbox.write_config("[handlers.runc]\nruntime_path = \"/nonexistent/runc\"\n");
    let output = sandbox.run(&["serve"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("default handler \"runc\" is unusable: /nonexistent/runc: no such file"),
        "{stderr}"
    );
    assert!(!sandbox.socket().exists(), "nothing was served");
}

#[test]
fn rcri_binary_is_where_cargo_says() {
    assert!(std::path::Path::new(RCRI).is_file());
}
