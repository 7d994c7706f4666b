//! ImageService end to end: the real `rcri` pulling from a real
//! `docker-registry` on 127.0.0.1 holding images these tests build.
//! Needs root (layers keep ownership and device nodes; overlay mounts) and
//! `docker-registry` + `busybox-static`, which `make test` installs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::registry::{
    Compression, ImageBuilder, Layer, Platform, Pushed, TestRegistry, TokenAuthProxy,
};
use common::{Sandbox, Server, require_tool};
use rcri::proto::{self, image_service_client::ImageServiceClient};
use tonic::Code;
use tonic::transport::Channel;

/// One rcri with its own state, and the registry it pulls from.
struct Fixture {
    sandbox: Sandbox,
    server: Server,
    registry: TestRegistry,
}

impl Fixture {
    fn start() -> Fixture {
        Self::start_with(TestRegistry::start(), "")
    }

    fn start_with(registry: TestRegistry, extra_config: &str) -> Fixture {
        let sandbox = Sandbox::new();
        sandbox.write_config(&format!(
            "[handlers.runc]\nruntime_path = \"{}\"\n{extra_config}",
            require_tool("runc").display()
        ));
        let server = sandbox.serve();
        Fixture {
            sandbox,
            server,
            registry,
        }
    }

    async fn images(&self) -> ImageServiceClient<Channel> {
        self.server.images().await
    }

    fn store(&self) -> PathBuf {
        self.sandbox.path().join("state/images")
    }

    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.store()
            .join("layers")
            .join(diff_id.trim_start_matches("sha256:"))
    }

    /// Names in a store directory.
    fn listing(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn restart(&mut self) {
        let (status, log) = self.server.stop_with(nix::sys::signal::Signal::SIGTERM);
        assert!(status.success(), "{log}");
        self.server = self.sandbox.serve();
    }
}

fn spec(image: &str) -> Option<proto::ImageSpec> {
    Some(proto::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<String, tonic::Status> {
    pull_with(client, image, None).await
}

async fn pull_with(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<proto::AuthConfig>,
) -> Result<String, tonic::Status> {
    client
        .pull_image(proto::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(client: &mut ImageServiceClient<Channel>, image: &str) -> Option<proto::Image> {
    client
        .image_status(proto::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn list(client: &mut ImageServiceClient<Channel>) -> Vec<proto::Image> {
    client
        .list_images(proto::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(client: &mut ImageServiceClient<Channel>, image: &str) {
    client
        .remove_image(proto::RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

/// An image whose layers exercise every kind of tar entry and whiteout.
fn layered_image() -> common::registry::Image {
    let base = Layer::new()
        .dir("etc", 0o755)
        .file("etc/hostname", "base\n", 0o644)
        .file("etc/removed", "gone in layer 2\n", 0o644)
        .dir("data", 0o755)
        .file("data/old-1", "old\n", 0o644)
        .file("data/old-2", "old\n", 0o644)
        .file_owned("home-file", "owned\n", 0o4750, 1000, 1001)
        .char_device("null-copy", 1, 3)
        .fifo("pipe");
    let top = Layer::new()
        .whiteout("etc/removed")
        .dir("data", 0o700)
        .opaque("data")
        .file("data/new", "new\n", 0o600)
        .file("etc/original", "linked\n", 0o644)
        .hardlink("etc/link", "etc/original")
        .symlink("etc/motd", "/etc/hostname")
        .xattr("etc/original", "user.rcri", "yes");
    ImageBuilder::busybox()
        .layer(base)
        .layer(top.compression(Compression::None))
        .user("1000:1000")
        .build_oci()
}

#[tokio::test]
async fn pulls_a_multi_layer_image_and_reports_it() {
    let fixture = Fixture::start();
    let pushed = fixture
        .registry
        .push("test/layered", "v1", &layered_image())
        .await;
    let mut client = fixture.images().await;
    let reference = fixture.registry.reference("test/layered", "v1");
    let image_ref = pull(&mut client, &reference).await.unwrap();
    assert_eq!(
        image_ref, pushed.config_digest,
        "the image id is the config digest"
    );

    let image = status(&mut client, &reference)
        .await
        .expect("pulled image is known");
    assert_eq!(image.id, pushed.config_digest);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert_eq!(
        image.repo_digests,
        [format!(
            "{}/test/layered@{}",
            fixture.registry.addr(),
            pushed.manifest_digest
        )]
    );
    assert_eq!(image.size, pushed.total_size - pushed.manifest_size);
    assert_eq!(image.uid, Some(proto::Int64Value { value: 1000 }));
    // Found by id, by short id and by repo digest too.
    for alias in [
        pushed.config_digest.clone(),
        pushed.config_digest["sha256:".len()..].to_string(),
        pushed.config_digest[7..19].to_string(),
        image.repo_digests[0].clone(),
    ] {
        assert_eq!(
            status(&mut client, &alias).await.map(|i| i.id),
            Some(image.id.clone()),
            "{alias}"
        );
    }
    // Verbose status carries the image config.
    let info = client
        .image_status(proto::ImageStatusRequest {
            image: spec(&reference),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let verbose: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(verbose["imageSpec"]["config"]["User"], "1000:1000");

    // Each layer unpacked once, in its own directory.
    let layers: Vec<PathBuf> = pushed
        .layers
        .iter()
        .map(|(_, diff_id, _)| fixture.layer_dir(diff_id))
        .collect();
    assert_eq!(fixture.listing("layers").len(), 3);
    check_layers_through_overlay(&layers);
}

/// Mounts the layers as a container would see them and checks what the
/// whiteouts, opaque directory and special files became.
fn check_layers_through_overlay(layers: &[PathBuf]) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let layout = rcri::image::rootfs::RootfsLayout::under(dir.path());
    rcri::image::rootfs::mount(layers, &layout).unwrap();
    let root = &layout.merged;
    let check = || {
        assert!(root.join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "base\n"
        );
        assert!(
            !root.join("etc/removed").exists(),
            "whiteout hides the lower file"
        );
        let data: Vec<_> = std::fs::read_dir(root.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(data, ["new"], "opaque directory hides the lower entries");
        let owned = std::fs::metadata(root.join("home-file")).unwrap();
        assert_eq!(
            (owned.uid(), owned.gid(), owned.mode() & 0o7777),
            (1000, 1001, 0o4750)
        );
        let dev = std::fs::metadata(root.join("null-copy")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
        assert!(
            std::fs::metadata(root.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let original = std::fs::metadata(root.join("etc/original")).unwrap();
        assert_eq!(
            original.ino(),
            std::fs::metadata(root.join("etc/link")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/motd")).unwrap(),
            Path::new("/etc/hostname")
        );
    };
    let result = std::panic::catch_unwind(check);
    rcri::image::rootfs::unmount(&layout).unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn an_image_with_many_layers_mounts() {
    let fixture = Fixture::start();
    let mut builder = ImageBuilder::busybox();
    for i in 0..80 {
        builder = builder.layer(Layer::new().file(&format!("layer-{i}"), format!("{i}\n"), 0o644));
    }
    let pushed = fixture
        .registry
        .push("test/many", "1", &builder.build_oci())
        .await;
    let mut client = fixture.images().await;
    pull(&mut client, &fixture.registry.reference("test/many", "1"))
        .await
        .unwrap();
    let layers: Vec<PathBuf> = pushed
        .layers
        .iter()
        .map(|(_, d, _)| fixture.layer_dir(d))
        .collect();
    assert_eq!(layers.len(), 81);
    let dir = tempfile::tempdir().unwrap();
    let layout = rcri::image::rootfs::RootfsLayout::under(dir.path());
    rcri::image::rootfs::mount(&layers, &layout).unwrap();
    let seen = std::fs::read_to_string(layout.merged.join("layer-79")).map_err(|e| e.to_string());
    std::fs::write(layout.merged.join("written"), "upper").unwrap();
    rcri::image::rootfs::unmount(&layout).unwrap();
    assert_eq!(seen, Ok("79\n".to_string()));
    assert!(
        layout.upper.join("written").exists(),
        "writes land in the container's own layer"
    );
}

#[tokio::test]
async fn an_index_resolves_to_this_platform() {
    let fixture = Fixture::start();
    let amd64 = ImageBuilder::busybox()
        .label("platform", "amd64")
        .build_oci();
    let arm64 = ImageBuilder::busybox()
        .label("platform", "arm64")
        .platform(&Platform::new("linux", "arm64").with_variant("v8"))
        .build_oci();
    let other = if Platform::host().architecture == "amd64" {
        &arm64
    } else {
        &amd64
    };
    let host = if Platform::host().architecture == "amd64" {
        &amd64
    } else {
        &arm64
    };
    let index = fixture
        .registry
        .push_index(
            "test/multi",
            "latest",
            &[
                (other.platform.clone(), other),
                (host.platform.clone(), host),
            ],
        )
        .await;
    let mut client = fixture.images().await;
    let reference = fixture.registry.reference("test/multi", "latest");
    let id = pull(&mut client, &reference).await.unwrap();
    assert_eq!(id, host.config_digest());
    let image = status(&mut client, &reference).await.unwrap();
    assert_eq!(
        image.repo_digests,
        [format!(
            "{}/test/multi@{}",
            fixture.registry.addr(),
            index.manifest_digest
        )],
        "the repo digest is the index's, as the tag points at it"
    );
}

#[tokio::test]
async fn zstd_and_uncompressed_layers_and_docker_schema_2() {
    let fixture = Fixture::start();
    let zstd = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .file("zstd-file", "z\n", 0o644)
                .compression(Compression::Zstd),
        )
        .build_oci();
    let docker = ImageBuilder::busybox()
        .layer(Layer::new().file("docker-file", "d\n", 0o644))
        .build_docker_schema2();
    fixture.registry.push("test/zstd", "1", &zstd).await;
    fixture.registry.push("test/docker", "1", &docker).await;
    let mut client = fixture.images().await;
    for (repo, image) in [("test/zstd", &zstd), ("test/docker", &docker)] {
        let id = pull(&mut client, &fixture.registry.reference(repo, "1"))
            .await
            .unwrap();
        assert_eq!(id, image.config_digest(), "{repo}");
    }
    let layers = fixture.listing("layers");
    assert_eq!(
        layers.len(),
        3,
        "the busybox layer is shared and stored once: {layers:?}"
    );
}

#[tokio::test]
async fn references_are_normalised_through_a_mirror() {
    let registry = TestRegistry::start();
    let mirror = format!(
        "[registries.\"docker.io\"]\nmirrors = [\"{}\"]\n",
        registry.url()
    );
    let fixture = Fixture::start_with(registry, &mirror);
    let image = ImageBuilder::busybox().build_oci();
    fixture
        .registry
        .push("library/busybox", "latest", &image)
        .await;
    let mut client = fixture.images().await;
    let id = pull(&mut client, "busybox").await.unwrap();
    assert_eq!(id, image.config_digest());
    let image = status(&mut client, "docker.io/library/busybox:latest")
        .await
        .unwrap();
    assert_eq!(image.repo_tags, ["docker.io/library/busybox:latest"]);
    assert!(image.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    assert!(status(&mut client, "busybox:latest").await.is_some());
}

#[tokio::test]
async fn bad_references_and_unknown_images_are_precise_errors() {
    let fixture = Fixture::start();
    fixture
        .registry
        .push("test/exists", "1", &ImageBuilder::busybox().build_oci())
        .await;
    let mut client = fixture.images().await;

    let error = pull(&mut client, "Not/A:Valid:Ref").await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("\"Not/A:Valid:Ref\""),
        "{}",
        error.message()
    );
    let error = pull(&mut client, "").await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);

    let error = pull(
        &mut client,
        &fixture.registry.reference("test/exists", "nope"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{}", error.message());
    assert!(
        error.message().contains("MANIFEST_UNKNOWN"),
        "{}",
        error.message()
    );
    let error = pull(&mut client, &fixture.registry.reference("test/absent", "1"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{}", error.message());
    assert!(
        error.message().contains("test/absent:1: not found"),
        "{}",
        error.message()
    );

    // Nothing listens on this port.
    let closed = format!("127.0.0.1:{}/test/x:1", common::registry::free_port());
    let error = pull(&mut client, &closed).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    assert!(
        error.message().contains("cannot reach registry"),
        "{}",
        error.message()
    );

    assert!(list(&mut client).await.is_empty());
    assert!(fixture.listing("layers").is_empty());
    assert!(fixture.listing("tmp").is_empty());
    // A missing image has no status, and that is not an error.
    assert!(
        status(&mut client, "docker.io/library/never:pulled")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn tampered_and_truncated_blobs_store_nothing() {
    let fixture = Fixture::start();
    let image = ImageBuilder::busybox()
        .layer(Layer::new().file("payload", vec![7u8; 300_000], 0o644))
        .build_oci();
    let pushed = fixture.registry.push("test/tampered", "1", &image).await;
    let (payload_digest, _, _) = pushed.layers[1].clone();
    fixture.registry.tamper_blob(&payload_digest);
    let mut client = fixture.images().await;
    let reference = fixture.registry.reference("test/tampered", "1");
    let error = pull(&mut client, &reference).await.unwrap_err();
    assert_eq!(error.code(), Code::DataLoss, "{}", error.message());
    assert!(
        error.message().contains(&payload_digest),
        "{}",
        error.message()
    );
    assert!(list(&mut client).await.is_empty());
    assert!(fixture.listing("tmp").is_empty());
    assert!(!fixture.layer_dir(&pushed.layers[1].1).exists());

    fixture.registry.truncate_blob(&payload_digest);
    let error = pull(&mut client, &reference).await.unwrap_err();
    assert!(
        matches!(error.code(), Code::Unavailable | Code::DataLoss),
        "{:?}: {}",
        error.code(),
        error.message()
    );
    assert!(list(&mut client).await.is_empty());
    assert!(fixture.listing("tmp").is_empty());
}

#[tokio::test]
async fn a_layer_escaping_its_directory_is_refused_by_name() {
    let fixture = Fixture::start();
    for (repo, layer, entry) in [
        (
            "test/dotdot",
            Layer::new().raw_entry("../../escaped", "x"),
            "../../escaped",
        ),
        (
            "test/symlink",
            Layer::new().symlink_escape("evil", "/tmp", "planted", "x"),
            "evil/planted",
        ),
    ] {
        let image = ImageBuilder::busybox().layer(layer).build_oci();
        fixture.registry.push(repo, "1", &image).await;
        let mut client = fixture.images().await;
        let error = pull(&mut client, &fixture.registry.reference(repo, "1"))
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            Code::FailedPrecondition,
            "{}",
            error.message()
        );
        assert!(error.message().contains(entry), "{}", error.message());
        assert!(list(&mut client).await.is_empty());
    }
    assert!(!Path::new("/tmp/planted").exists());
    assert!(fixture.listing("tmp").is_empty());
}

#[tokio::test]
async fn basic_auth_credentials_from_the_request() {
    let registry = TestRegistry::start_with_basic_auth("alice", "wonderland");
    let fixture = Fixture::start_with(registry, "");
    let image = ImageBuilder::busybox().build_oci();
    fixture.registry.push("test/private", "1", &image).await;
    let reference = fixture.registry.reference("test/private", "1");
    let mut client = fixture.images().await;

    let error = pull(&mut client, &reference).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{}", error.message());
    assert!(
        error.message().contains(fixture.registry.addr()),
        "names the registry: {}",
        error.message()
    );
    let wrong = proto::AuthConfig {
        username: "alice".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let error = pull_with(&mut client, &reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{}", error.message());

    use base64::Engine;
    let encoded = proto::AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:wonderland"),
        ..Default::default()
    };
    let id = pull_with(&mut client, &reference, Some(encoded))
        .await
        .unwrap();
    assert_eq!(id, image.config_digest());
}

#[tokio::test]
async fn bearer_token_flow_and_one_fetch_per_layer_for_concurrent_pulls() {
    let registry = TestRegistry::start();
    let proxy = TokenAuthProxy::start(&registry, "bob", "builder");
    let fixture = Fixture::start_with(registry, "");
    let image = ImageBuilder::busybox()
        .layer(Layer::new().file("big", vec![3u8; 2_000_000], 0o644))
        .build_oci();
    let pushed = fixture.registry.push("test/token", "1", &image).await;
    let reference = proxy.reference("test/token", "1");
    let auth = proto::AuthConfig {
        username: "bob".into(),
        password: "builder".into(),
        ..Default::default()
    };
    let mut client = fixture.images().await;
    let error = pull(&mut client, &reference).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{}", error.message());

    let pulls = (0..4).map(|_| {
        let mut client = client.clone();
        let (reference, auth) = (reference.clone(), auth.clone());
        tokio::spawn(async move { pull_with(&mut client, &reference, Some(auth)).await })
    });
    for pull in futures_util::future::join_all(pulls).await {
        assert_eq!(pull.unwrap().unwrap(), pushed.config_digest);
    }
    let requests = proxy.requests();
    for (digest, _, _) in &pushed.layers {
        let fetches = requests
            .iter()
            .filter(|r| {
                r.starts_with("GET ")
                    && r.contains(&format!("/blobs/{digest}"))
                    && r.ends_with("200")
            })
            .count();
        assert_eq!(fetches, 1, "layer {digest} fetched once: {requests:#?}");
    }
    assert!(proxy.token_requests() >= 1);
    assert_eq!(list(&mut client).await.len(), 1);
}

#[tokio::test]
async fn remove_by_tag_id_and_digest_and_free_layers() {
    let fixture = Fixture::start();
    let shared = ImageBuilder::busybox()
        .layer(Layer::new().file("a", "a", 0o644))
        .build_oci();
    let other = ImageBuilder::busybox()
        .layer(Layer::new().file("b", "b", 0o644))
        .build_oci();
    let pushed_a: Pushed = fixture.registry.push("test/a", "1", &shared).await;
    fixture.registry.push("test/a", "2", &shared).await;
    let pushed_b: Pushed = fixture.registry.push("test/b", "1", &other).await;
    let mut client = fixture.images().await;
    let (a1, a2, b1) = (
        fixture.registry.reference("test/a", "1"),
        fixture.registry.reference("test/a", "2"),
        fixture.registry.reference("test/b", "1"),
    );
    for r in [&a1, &a2, &b1] {
        pull(&mut client, r).await.unwrap();
    }
    let before = fsinfo(&mut client).await;
    assert_eq!(
        status(&mut client, &a1).await.unwrap().repo_tags,
        [a1.clone(), a2.clone()]
    );

    remove(&mut client, &a1).await;
    let a = status(&mut client, &a2)
        .await
        .expect("one tag of two removed: the image stays");
    assert_eq!(a.repo_tags, std::slice::from_ref(&a2));
    assert!(status(&mut client, &a1).await.is_none());

    remove(&mut client, &pushed_a.config_digest).await;
    assert!(status(&mut client, &a2).await.is_none());
    assert!(
        !fixture.layer_dir(&pushed_a.layers[1].1).exists(),
        "its own layer is freed"
    );
    assert!(
        fixture.layer_dir(&pushed_b.layers[0].1).exists(),
        "the shared busybox layer stays"
    );
    let after = fsinfo(&mut client).await;
    assert!(after < before, "{after:?} < {before:?}");

    let digest_ref = status(&mut client, &b1).await.unwrap().repo_digests[0].clone();
    remove(&mut client, &digest_ref).await;
    assert!(list(&mut client).await.is_empty());
    assert!(fixture.listing("layers").is_empty());
    // Removing what is not there succeeds.
    remove(&mut client, &b1).await;
    remove(
        &mut client,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await;
}

async fn fsinfo(client: &mut ImageServiceClient<Channel>) -> (u64, u64) {
    let info = client
        .image_fs_info(proto::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &info.image_filesystems[0];
    assert!(
        fs.fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .ends_with("state/images")
    );
    assert_eq!(info.container_filesystems.len(), 1);
    (fs.used_bytes.unwrap().value, fs.inodes_used.unwrap().value)
}

#[tokio::test]
async fn list_filter_and_a_moved_tag() {
    let fixture = Fixture::start();
    let v1 = ImageBuilder::busybox().label("v", "1").build_oci();
    let v2 = ImageBuilder::busybox().label("v", "2").build_oci();
    let mut client = fixture.images().await;
    let reference = fixture.registry.reference("test/moving", "latest");
    fixture.registry.push("test/moving", "latest", &v1).await;
    pull(&mut client, &reference).await.unwrap();
    fixture.registry.push("test/moving", "latest", &v2).await;
    pull(&mut client, &reference).await.unwrap();
    let images = list(&mut client).await;
    assert_eq!(images.len(), 2);
    let old = images.iter().find(|i| i.id == v1.config_digest()).unwrap();
    assert!(old.repo_tags.is_empty(), "the tag moved to the new image");
    assert_eq!(
        old.repo_digests.len(),
        1,
        "the old image stays reachable by digest"
    );

    let filtered = client
        .list_images(proto::ListImagesRequest {
            filter: Some(proto::ImageFilter {
                image: spec(&reference),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, v2.config_digest());
}

#[tokio::test]
async fn images_survive_a_restart() {
    let mut fixture = Fixture::start();
    let image = ImageBuilder::busybox().build_oci();
    fixture.registry.push("test/kept", "1", &image).await;
    let reference = fixture.registry.reference("test/kept", "1");
    pull(&mut fixture.images().await, &reference).await.unwrap();
    fixture.restart();
    let found = status(&mut fixture.images().await, &reference)
        .await
        .unwrap();
    assert_eq!(found.id, image.config_digest());
}

#[tokio::test]
async fn kill_9_during_a_pull_leaves_nothing_corrupt() {
    let mut fixture = Fixture::start();
    // Incompressible layers so the pull takes a moment.
    let noise = |seed: u64| -> Vec<u8> {
        let mut x = seed;
        (0..6_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let image = ImageBuilder::busybox()
        .layer(Layer::new().file("noise-1", noise(1), 0o644))
        .layer(Layer::new().file("noise-2", noise(2), 0o644))
        .build_oci();
    fixture.registry.push("test/big", "1", &image).await;
    let reference = fixture.registry.reference("test/big", "1");
    for delay_ms in [5, 40, 120] {
        let mut client = fixture.images().await;
        let pulling = tokio::spawn({
            let reference = reference.clone();
            async move { pull(&mut client, &reference).await }
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let (status_code, _) = fixture.server.stop_with(nix::sys::signal::Signal::SIGKILL);
        assert!(!status_code.success());
        let _ = pulling.await;
        fixture.server = fixture.sandbox.serve();
        let mut client = fixture.images().await;
        let images = list(&mut client).await;
        assert!(
            images.is_empty() || images[0].id == image.config_digest(),
            "either no image or the whole image: {images:?}"
        );
        assert!(
            fixture.listing("tmp").is_empty(),
            "partial downloads are cleaned at start"
        );
        remove(&mut client, &reference).await;
    }
    let mut client = fixture.images().await;
    assert_eq!(
        pull(&mut client, &reference).await.unwrap(),
        image.config_digest()
    );
    let layers = fixture.listing("layers");
    assert_eq!(layers.len(), 3, "{layers:?}");
}

/// In-process: layers a container holds outlive the removal of their image
/// and are freed when the container lets go.
#[tokio::test]
async fn layers_held_by_a_container_outlive_their_image() {
    use rcri::image::registry::RegistryClient;
    use rcri::image::store::ImageStore;
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox()
        .layer(Layer::new().file("held", "x", 0o644))
        .build_oci();
    let pushed = registry.push("test/held", "1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let store =
        ImageStore::open(dir.path(), RegistryClient::new(Default::default()).unwrap()).unwrap();
    let record = store
        .pull(&registry.reference("test/held", "1"), None)
        .await
        .unwrap();
    let layer = store.layer_dirs(&record)[1].clone();
    assert!(layer.is_dir());

    store.hold_layers("container-1", &record);
    store.remove(&record.id).await.unwrap();
    assert!(
        store.find(&record.id).await.unwrap().is_none(),
        "the image is gone"
    );
    assert!(
        layer.is_dir(),
        "its layers stay while the container uses them"
    );
    store.release_layers("container-1").await.unwrap();
    assert!(!layer.exists(), "and are freed when it is gone");
    assert_eq!(pushed.layers.len(), 2);
}
