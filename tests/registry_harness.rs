//! Self-test of the registry harness (tests/common/registry.rs): a real
//! `docker-registry`, images built in memory, the token-auth proxy.

mod common;

use std::io::Read as _;

use common::registry::{
    Compression, ImageBuilder, Layer, Platform, RegistryClient, TestRegistry, TokenAuthProxy,
    block_on, media, sha256_digest,
};
use serde_json::Value;

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The body as JSON (`reqwest` has no `json` feature here).
async fn json(response: reqwest::Response) -> Value {
    assert!(response.status().is_success(), "{}", response.status());
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Name bytes, entry type, link name bytes, PAX records.
type Listed = (Vec<u8>, tar::EntryType, Vec<u8>, Vec<(String, Vec<u8>)>);

fn entries(tar_bytes: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let pax = match entry.pax_extensions().unwrap() {
                Some(records) => records
                    .map(|r| {
                        let r = r.unwrap();
                        (r.key().unwrap().to_string(), r.value_bytes().to_vec())
                    })
                    .collect(),
                None => Vec::new(),
            };
            (
                entry.path_bytes().to_vec(),
                entry.header().entry_type(),
                entry
                    .link_name_bytes()
                    .map(|l| l.to_vec())
                    .unwrap_or_default(),
                pax,
            )
        })
        .collect()
}

#[tokio::test]
async fn pushes_busybox_oci_gzip_and_reads_it_back() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox()
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hello"])
        .env("FOO=bar")
        .working_dir("/tmp")
        .user("33:33")
        .stop_signal("SIGUSR1")
        .label("app", "demo")
        .expose("8080/tcp")
        .build_oci();
    let pushed = registry.push("library/busybox", "1.0", &image).await;
    assert_eq!(pushed.manifest_digest, image.digest());
    assert_eq!(
        pushed.reference,
        format!("{}/library/busybox:1.0", registry.addr())
    );
    assert_eq!(pushed.layers.len(), 1);
    assert_eq!(pushed.total_size, image.total_size());

    let client = registry.client();
    let manifest = client
        .get(
            "/v2/library/busybox/manifests/1.0",
            Some(media::OCI_MANIFEST),
        )
        .await;
    assert_eq!(manifest.status(), 200);
    assert_eq!(header(&manifest, "content-type"), media::OCI_MANIFEST);
    assert_eq!(
        header(&manifest, "docker-content-digest"),
        pushed.manifest_digest
    );
    assert_eq!(manifest.bytes().await.unwrap(), image.manifest);

    let config_path = format!("/v2/library/busybox/blobs/{}", pushed.config_digest);
    let config = json(client.get(&config_path, None).await).await;
    assert_eq!(config["config"]["User"], "33:33");
    assert_eq!(
        config["config"]["ExposedPorts"]["8080/tcp"],
        serde_json::json!({})
    );
    assert_eq!(config["rootfs"]["diff_ids"][0], pushed.layers[0].1);

    let (layer_digest, diff_id, size) = &pushed.layers[0];
    let blob = client
        .get(&format!("/v2/library/busybox/blobs/{layer_digest}"), None)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(blob.len() as u64, *size);
    assert_eq!(&sha256_digest(&blob), layer_digest);
    let tar_bytes = gunzip(&blob);
    assert_eq!(&sha256_digest(&tar_bytes), diff_id);
    let listed = entries(&tar_bytes);
    let find = |name: &str| listed.iter().find(|e| e.0 == name.as_bytes()).unwrap();
    assert_eq!(find("bin/busybox").1, tar::EntryType::Regular);
    assert_eq!(find("bin/sh").1, tar::EntryType::Link);
    assert_eq!(find("bin/sh").2, b"bin/busybox");
    assert_eq!(find("tmp").1, tar::EntryType::Directory);
    assert!(find("etc/passwd").0.starts_with(b"etc/"));

    // A second push of the same image uploads nothing new.
    let again = registry.push("library/busybox", "latest", &image).await;
    assert_eq!(again.manifest_digest, pushed.manifest_digest);
}

#[tokio::test]
async fn pushes_docker_schema2() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc", 0o755)
                .file("etc/hello", "hi\n", 0o644),
        )
        .cmd(&["/hello"])
        .build_docker_schema2();
    let pushed = registry.push("docker/thing", "v2", &image).await;
    let response = registry
        .client()
        .get(
            "/v2/docker/thing/manifests/v2",
            Some(media::DOCKER_MANIFEST),
        )
        .await;
    assert_eq!(header(&response, "content-type"), media::DOCKER_MANIFEST);
    let manifest = json(response).await;
    assert_eq!(manifest["config"]["mediaType"], media::DOCKER_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], media::DOCKER_LAYER_GZIP);
    assert_eq!(manifest["config"]["digest"], pushed.config_digest);
}

#[tokio::test]
async fn pushes_oci_index_and_docker_manifest_list() {
    let registry = TestRegistry::start();
    let amd64 = ImageBuilder::new()
        .architecture("amd64")
        .layer(Layer::new().file("arch", "amd64\n", 0o644))
        .build_oci();
    let arm64 = ImageBuilder::new()
        .architecture("arm64")
        .variant("v8")
        .layer(Layer::new().file("arch", "arm64\n", 0o644))
        .build_oci();
    let platforms = [
        (Platform::new("linux", "amd64"), &amd64),
        (Platform::new("linux", "arm64").with_variant("v8"), &arm64),
    ];
    let index = registry.push_index("multi", "latest", &platforms).await;
    assert_eq!(index.children.len(), 2);
    let response = registry
        .client()
        .get("/v2/multi/manifests/latest", Some(media::OCI_INDEX))
        .await;
    assert_eq!(header(&response, "content-type"), media::OCI_INDEX);
    assert_eq!(
        header(&response, "docker-content-digest"),
        index.manifest_digest
    );
    let body = json(response).await;
    assert_eq!(body["manifests"][1]["platform"]["architecture"], "arm64");
    assert_eq!(body["manifests"][1]["platform"]["variant"], "v8");
    assert_eq!(body["manifests"][0]["digest"], amd64.digest());

    // Children are reachable by digest.
    let child = registry
        .client()
        .get(
            &format!("/v2/multi/manifests/{}", arm64.digest()),
            Some(media::OCI_MANIFEST),
        )
        .await;
    assert_eq!(child.status(), 200);

    let docker_amd64 = ImageBuilder::new()
        .layer(Layer::new().file("arch", "amd64\n", 0o644))
        .build_docker_schema2();
    let list = registry
        .push_manifest_list(
            "multi",
            "docker",
            &[(Platform::new("linux", "amd64"), &docker_amd64)],
        )
        .await;
    let response = registry
        .client()
        .get(
            "/v2/multi/manifests/docker",
            Some(media::DOCKER_MANIFEST_LIST),
        )
        .await;
    assert_eq!(
        header(&response, "content-type"),
        media::DOCKER_MANIFEST_LIST
    );
    assert_eq!(
        header(&response, "docker-content-digest"),
        list.manifest_digest
    );
}

#[tokio::test]
async fn basic_auth_registry_needs_credentials() {
    let registry = TestRegistry::start_with_basic_auth("alice", "s3cret");
    let image = ImageBuilder::new()
        .layer(Layer::new().file("x", "x", 0o644))
        .build_oci();

    let refused = registry
        .anonymous_client()
        .try_push("private/app", "1", &image)
        .await
        .unwrap_err();
    assert_eq!(refused.status, Some(401), "{refused}");
    let wrong = RegistryClient::new(registry.addr(), Some(("alice", "nope")))
        .try_push("private/app", "1", &image)
        .await
        .unwrap_err();
    assert_eq!(wrong.status, Some(401), "{wrong}");

    let pushed = registry.push("private/app", "1", &image).await;
    let path = "/v2/private/app/manifests/1";
    let anonymous = registry
        .anonymous_client()
        .get(path, Some(media::OCI_MANIFEST))
        .await;
    assert_eq!(anonymous.status(), 401);
    assert!(header(&anonymous, "www-authenticate").starts_with("Basic realm="));
    let ok = registry.client().get(path, Some(media::OCI_MANIFEST)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(header(&ok, "docker-content-digest"), pushed.manifest_digest);
}

/// A plain #[test]: the proxy owns its runtime, pushes go through block_on.
#[test]
fn token_proxy_runs_the_bearer_flow() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::new()
        .layer(Layer::new().file("hello", "world\n", 0o644))
        .build_oci();
    let pushed = block_on(registry.push("team/app", "v1", &image));
    let proxy = TokenAuthProxy::start(&registry, "bob", "hunter2");

    block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let manifest_url = format!("{}/v2/team/app/manifests/v1", proxy.url());

        let challenge = http.get(&manifest_url).send().await.unwrap();
        assert_eq!(challenge.status(), 401);
        let www = header(&challenge, "www-authenticate");
        assert_eq!(
            www,
            format!(
                "Bearer realm=\"{}/token\",service=\"test-registry\",scope=\"repository:team/app:pull\"",
                proxy.url()
            )
        );

        let token_url = format!(
            "{}/token?service=test-registry&scope=repository:team/app:pull",
            proxy.url()
        );
        let denied = http
            .get(&token_url)
            .basic_auth("bob", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        let token = http
            .get(&token_url)
            .basic_auth("bob", Some("hunter2"))
            .send()
            .await
            .unwrap();
        let token = json(token).await;
        assert_eq!(token["expires_in"], 300);
        let token = token["token"].as_str().unwrap().to_string();

        let manifest = http
            .get(&manifest_url)
            .bearer_auth(&token)
            .header("Accept", media::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(manifest.status(), 200);
        assert_eq!(
            header(&manifest, "docker-content-digest"),
            pushed.manifest_digest
        );
        assert_eq!(manifest.bytes().await.unwrap(), image.manifest);

        let blob_url = format!("{}/v2/team/app/blobs/{}", proxy.url(), pushed.layers[0].0);
        let head = http
            .head(&blob_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            header(&head, "content-length"),
            pushed.layers[0].2.to_string()
        );
        let blob = http
            .get(&blob_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(blob.bytes().await.unwrap(), image.layers[0].data);

        // The token is scoped to team/app.
        let other = http
            .get(format!("{}/v2/other/manifests/v1", proxy.url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 401);

        proxy.revoke_tokens();
        let revoked = http
            .get(&manifest_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), 401);
    });
    assert_eq!(proxy.token_requests(), 2);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.starts_with("HEAD /v2/team/app/blobs/") && r.ends_with("-> 200")),
        "{:?}",
        proxy.requests()
    );
}

#[tokio::test]
async fn tamper_and_truncate_blobs() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::new()
        .layer(Layer::new().file("data", vec![7u8; 10_000], 0o644))
        .layer(Layer::new().file("more", vec![9u8; 10_000], 0o644))
        .build_oci();
    let pushed = registry.push("victim", "1", &image).await;
    let client = registry.client();
    let fetch = |digest: String| {
        let client = client.clone();
        async move {
            client
                .get(&format!("/v2/victim/blobs/{digest}"), None)
                .await
                .bytes()
                .await
                .unwrap()
        }
    };

    let (digest, _, size) = pushed.layers[0].clone();
    let before = fetch(digest.clone()).await;
    registry.tamper_blob(&digest);
    let after = fetch(digest.clone()).await;
    assert_eq!(after.len() as u64, size);
    assert_ne!(after, before);
    assert_ne!(sha256_digest(&after), digest);

    let (digest, _, size) = pushed.layers[1].clone();
    registry.truncate_blob(&digest);
    let cut = fetch(digest).await;
    assert_eq!(cut.len() as u64, size / 2);
}

#[test]
fn layer_builder_writes_every_entry_kind() {
    let layer = Layer::new()
        .compression(Compression::Zstd)
        .dir("etc", 0o755)
        .file_owned("etc/owned", "x", 0o4755, 1000, 1001)
        .xattr("etc/owned", "user.note", b"hello")
        .symlink("etc/link", "/etc/owned")
        .hardlink("etc/hard", "etc/owned")
        .char_device("dev/null", 1, 3)
        .fifo("run/pipe")
        .whiteout("usr/share/doc")
        .opaque("var/cache")
        .raw_entry("../escape", "evil")
        .raw_entry("/absolute", "evil")
        .symlink_escape("sneaky", "../../..", "pwned", "evil")
        .file(&format!("long/{}", "n".repeat(150)), "long", 0o644);
    let built = layer.build();
    assert_eq!(built.media_type, media::OCI_LAYER_ZSTD);
    assert_eq!(built.digest, sha256_digest(&built.data));
    let mut tar_bytes = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(built.data.as_slice())
        .unwrap()
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert_eq!(tar_bytes, layer.tar_bytes());
    assert_eq!(sha256_digest(&tar_bytes), built.diff_id);

    let listed = entries(&tar_bytes);
    let names: Vec<String> = listed
        .iter()
        .map(|e| String::from_utf8_lossy(&e.0).to_string())
        .collect();
    assert_eq!(
        names,
        [
            "etc",
            "etc/owned",
            "etc/link",
            "etc/hard",
            "dev/null",
            "run/pipe",
            "usr/share/.wh.doc",
            "var/cache/.wh..wh..opq",
            "../escape",
            "/absolute",
            "sneaky",
            "sneaky/pwned",
            &format!("long/{}", "n".repeat(150)),
        ]
    );
    assert_eq!(
        listed[1].3,
        [("SCHILY.xattr.user.note".to_string(), b"hello".to_vec())]
    );
    assert_eq!(listed[2].1, tar::EntryType::Symlink);
    assert_eq!(listed[2].2, b"/etc/owned");
    assert_eq!(listed[3].1, tar::EntryType::Link);
    assert_eq!(listed[4].1, tar::EntryType::Char);
    assert_eq!(listed[5].1, tar::EntryType::Fifo);
    assert_eq!(listed[10].2, b"../../..");

    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let owned = archive.entries().unwrap().nth(1).unwrap().unwrap();
    assert_eq!(owned.header().mode().unwrap(), 0o4755);
    assert_eq!(owned.header().uid().unwrap(), 1000);
    assert_eq!(owned.header().gid().unwrap(), 1001);

    // Gzip and none compress the same tar.
    let gzip = layer.clone().compression(Compression::Gzip).build();
    assert_eq!(gzip.diff_id, built.diff_id);
    assert_eq!(gunzip(&gzip.data), tar_bytes);
    let plain = layer.compression(Compression::None).build();
    assert_eq!(plain.digest, plain.diff_id);
}
