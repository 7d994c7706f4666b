use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;

use super::*;

/// A directory standing in for PATH, holding fake runtime binaries.
struct FakePath {
    dir: tempfile::TempDir,
}

impl FakePath {
    fn with(names: &[&str]) -> FakePath {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakePath { dir }
    }

    fn env(&self) -> OsString {
        self.dir.path().as_os_str().to_owned()
    }

    fn bin(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn texts(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect()
}

fn embedded() -> (String, String) {
    (EMBEDDED_NAME.to_string(), EMBEDDED_DEFAULT.to_string())
}

fn refused(result: Result<Config, ConfigErrors>) -> Vec<String> {
    result
        .expect_err("the configuration should be refused")
        .0
        .into_iter()
        .map(|e| e.0)
        .collect()
}

#[test]
fn embedded_default_offers_the_runtimes_on_path() {
    let path = FakePath::with(&["runc", "crun"]);
    let config = Config::from_texts(&[embedded()], &path.env()).unwrap();
    assert_eq!(config.default_handler, "runc");
    assert_eq!(
        config.handlers.keys().collect::<Vec<_>>(),
        ["crun", "runc"],
        "runsc is absent, so it is left out without a warning"
    );
    assert!(config.dropped_handlers.is_empty());
    let runc = &config.handlers["runc"];
    assert_eq!(runc.runtime_path, PathBuf::from(path.bin("runc")));
    assert_eq!(runc.runtime_root, PathBuf::from("/run/rcri/runtimes/runc"));
    assert_eq!(config.socket, PathBuf::from("/run/rcri/rcri.sock"));
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/rcri"));
    assert_eq!(config.cgroup_driver, CgroupDriver::Cgroupfs);
}

#[test]
fn embedded_default_without_runc_defaults_to_crun() {
    let path = FakePath::with(&["crun", "runsc"]);
    let config = Config::from_texts(&[embedded()], &path.env()).unwrap();
    assert_eq!(config.default_handler, "crun");
    assert_eq!(
        config.handlers["runsc"].runtime_args,
        ["--platform=systrap"],
        "runsc's flags come from the embedded configuration"
    );
}

#[test]
fn no_runtime_at_all_is_an_error_that_says_what_to_install() {
    let path = FakePath::with(&[]);
    let errors = refused(Config::from_texts(&[embedded()], &path.env()));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("no usable runtime handler: install runc, crun or runsc"));
}

#[test]
fn unknown_key_names_key_file_and_line() {
    let path = FakePath::with(&["runc"]);
    let file = "socket = \"/run/x.sock\"\n[handlers.runc]\nruntime_pth = \"/usr/bin/runc\"\n";
    let errors = refused(Config::from_texts(
        &texts(&[("/etc/rcri/rcri.toml", file)]),
        &path.env(),
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("/etc/rcri/rcri.toml:3:1: unknown field `runtime_pth`"),
        "{}",
        errors[0]
    );
}

#[test]
fn wrong_type_names_file_and_line() {
    let path = FakePath::with(&["runc"]);
    let file = "\n\nstate_dir = 42\n";
    let errors = refused(Config::from_texts(&texts(&[("a.toml", file)]), &path.env()));
    assert!(
        errors[0].starts_with("a.toml:3:13: state_dir: "),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("invalid type: integer `42`"),
        "{}",
        errors[0]
    );
}

#[test]
fn bad_toml_and_bad_enum_values_are_reported_for_every_file() {
    let path = FakePath::with(&["runc"]);
    let errors = refused(Config::from_texts(
        &texts(&[
            ("main.toml", "cgroup_driver = \"cgroupv3\"\n"),
            ("10-drop.toml", "[handlers.runc\n"),
        ]),
        &path.env(),
    ));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("main.toml:1:17: cgroup_driver: unknown variant `cgroupv3`"),
        "{}",
        errors[0]
    );
    assert!(errors[1].starts_with("10-drop.toml:1:"), "{}", errors[1]);
}

#[test]
fn later_dropins_override_earlier_values_field_by_field() {
    let path = FakePath::with(&["runc", "crun"]);
    let main = format!(
        "default_handler = \"runc\"\n[handlers.runc]\nruntime_path = \"{}\"\nruntime_args = [\"--a\"]\n[handlers.crun]\n",
        path.bin("runc")
    );
    let config = Config::from_texts(
        &texts(&[
            ("main.toml", &main),
            (
                "10-a.toml",
                "default_handler = \"crun\"\n[handlers.runc]\nruntime_args = [\"--b\"]\n",
            ),
            (
                "20-b.toml",
                "[handlers.runc]\nruntime_args = [\"--c\"]\nallowed_annotations = [\"io.x/*\"]\n",
            ),
        ]),
        &path.env(),
    )
    .unwrap();
    assert_eq!(config.default_handler, "crun");
    let runc = &config.handlers["runc"];
    assert_eq!(runc.runtime_args, ["--c"]);
    assert_eq!(runc.allowed_annotations, ["io.x/*"]);
    assert_eq!(
        runc.runtime_path,
        PathBuf::from(path.bin("runc")),
        "kept from main.toml"
    );
    assert_eq!(config.sources, ["main.toml", "10-a.toml", "20-b.toml"]);
}

#[test]
fn dropins_over_the_embedded_default_keep_autodetection() {
    let path = FakePath::with(&["runc"]);
    let config = Config::from_texts(
        &[
            embedded(),
            (
                "/etc/rcri/rcri.d/50-sock.toml".into(),
                "socket = \"/run/other.sock\"\n".into(),
            ),
        ],
        &path.env(),
    )
    .unwrap();
    assert_eq!(config.socket, PathBuf::from("/run/other.sock"));
    assert_eq!(config.handlers.keys().collect::<Vec<_>>(), ["runc"]);
}

#[test]
fn missing_binary_of_the_default_handler_is_fatal_and_says_where() {
    let path = FakePath::with(&[]);
    let file =
        "default_handler = \"runc\"\n[handlers.runc]\nruntime_path = \"/nonexistent/runc\"\n";
    let errors = refused(Config::from_texts(&texts(&[("r.toml", file)]), &path.env()));
    assert_eq!(
        errors,
        [
            "r.toml:1: default handler \"runc\" is unusable: /nonexistent/runc: no such file (set at r.toml:3)"
        ]
    );
}

#[test]
fn missing_binary_of_another_handler_drops_it_with_the_reason() {
    let path = FakePath::with(&["runc"]);
    let file = "[handlers.runc]\n[handlers.kata-like]\nruntime_path = \"/nonexistent/rt\"\n";
    let config = Config::from_texts(&texts(&[("r.toml", file)]), &path.env()).unwrap();
    assert_eq!(config.default_handler, "runc");
    assert_eq!(config.handlers.keys().collect::<Vec<_>>(), ["runc"]);
    assert_eq!(
        config.dropped_handlers,
        [DroppedHandler {
            name: "kata-like".into(),
            reason: "/nonexistent/rt: no such file (set at r.toml:3)".into()
        }]
    );
}

#[test]
fn handler_not_on_path_is_dropped_when_configured_explicitly() {
    let path = FakePath::with(&["runc"]);
    let file = "[handlers.runc]\n[handlers.youki]\n";
    let config = Config::from_texts(&texts(&[("r.toml", file)]), &path.env()).unwrap();
    assert_eq!(config.dropped_handlers.len(), 1);
    assert!(
        config.dropped_handlers[0]
            .reason
            .starts_with("\"youki\" was not found on PATH"),
        "{:?}",
        config.dropped_handlers
    );
}

#[test]
fn relative_paths_are_refused() {
    let path = FakePath::with(&["runc", "crun"]);
    let file =
        "socket = \"rcri.sock\"\n[handlers.runc]\n[handlers.crun]\nruntime_path = \"bin/crun\"\n";
    let errors = refused(Config::from_texts(&texts(&[("r.toml", file)]), &path.env()));
    assert_eq!(
        errors,
        ["r.toml:1: socket = \"rcri.sock\" must be an absolute path"]
    );
    let file = "[handlers.runc]\n[handlers.crun]\nruntime_path = \"bin/crun\"\n";
    let config = Config::from_texts(&texts(&[("r.toml", file)]), &path.env()).unwrap();
    assert_eq!(
        config.dropped_handlers[0].reason,
        "runtime_path \"bin/crun\" is not an absolute path (set at r.toml:3)"
    );
    let file = "[handlers.runc]\nruntime_root = \"state\"\n";
    let errors = refused(Config::from_texts(&texts(&[("r.toml", file)]), &path.env()));
    assert_eq!(
        errors,
        [
            "default handler \"runc\" is unusable: runtime_root \"state\" is not an absolute path (set at r.toml:2)"
        ]
    );
}

#[test]
fn non_executable_binary_is_named() {
    let path = FakePath::with(&["runc"]);
    let plain = path.dir.path().join("not-exec");
    std::fs::write(&plain, "data").unwrap();
    let file = format!("[handlers.runc]\nruntime_path = \"{}\"\n", plain.display());
    let errors = refused(Config::from_texts(
        &texts(&[("r.toml", &file)]),
        &path.env(),
    ));
    assert!(
        errors[0].contains("not-exec: not executable (no execute permission)"),
        "{errors:?}"
    );
}

#[test]
fn shim_v2_is_reserved() {
    let path = FakePath::with(&["runc", "containerd-shim-kata-v2"]);
    let file = format!(
        "[handlers.runc]\n[handlers.kata]\nruntime_type = \"shim-v2\"\nruntime_path = \"{}\"\n",
        path.bin("containerd-shim-kata-v2")
    );
    let config = Config::from_texts(&texts(&[("r.toml", &file)]), &path.env()).unwrap();
    assert_eq!(config.dropped_handlers[0].name, "kata");
    assert!(
        config.dropped_handlers[0]
            .reason
            .starts_with("runtime_type \"shim-v2\" is reserved"),
        "{:?}",
        config.dropped_handlers
    );
}

#[test]
fn default_handler_must_be_configured() {
    let path = FakePath::with(&["runc", "crun"]);
    let file = "default_handler = \"runsc\"\n[handlers.runc]\n[handlers.crun]\n";
    let errors = refused(Config::from_texts(&texts(&[("r.toml", file)]), &path.env()));
    assert_eq!(
        errors,
        [
            "r.toml:1: default_handler = \"runsc\" names no configured handler; configured handlers: crun, runc"
        ]
    );
}

#[test]
fn handler_names_must_be_dns_labels() {
    let path = FakePath::with(&["runc", "My_Runtime"]);
    let file = format!(
        "[handlers.runc]\n[handlers.My_Runtime]\nruntime_path = \"{}\"\n",
        path.bin("My_Runtime")
    );
    let config = Config::from_texts(&texts(&[("r.toml", &file)]), &path.env()).unwrap();
    assert!(
        config.dropped_handlers[0]
            .reason
            .contains("is not a valid RuntimeClass handler"),
        "{:?}",
        config.dropped_handlers
    );
    assert!(is_dns_label("runc"));
    assert!(is_dns_label("kata-qemu2"));
    assert!(!is_dns_label("-x"));
    assert!(!is_dns_label(""));
    assert!(!is_dns_label(&"a".repeat(64)));
}

#[test]
fn annotation_patterns_allow_only_a_trailing_star() {
    let path = FakePath::with(&["runc"]);
    let file = "[handlers.runc]\n[handlers.crun]\nruntime_path = \"/bin/sh\"\nallowed_annotations = [\"io.*.x\"]\n";
    let config = Config::from_texts(&texts(&[("r.toml", file)]), &path.env()).unwrap();
    assert!(
        config.dropped_handlers[0]
            .reason
            .starts_with("allowed_annotations entry \"io.*.x\""),
        "{:?}",
        config.dropped_handlers
    );
}

#[test]
fn invalid_log_level_is_an_error() {
    let path = FakePath::with(&["runc"]);
    let errors = refused(Config::from_texts(
        &texts(&[("r.toml", "log_level = \"rcri=loud\"\n")]),
        &path.env(),
    ));
    assert!(
        errors[0].starts_with("r.toml:1: log_level = \"rcri=loud\" is not a valid log filter"),
        "{errors:?}"
    );
}

#[test]
fn effective_configuration_round_trips_through_toml() {
    let path = FakePath::with(&["runc", "crun", "runsc"]);
    let config = Config::from_texts(&[embedded()], &path.env()).unwrap();
    let shown = config.to_toml();
    let again = Config::from_texts(&texts(&[("shown.toml", &shown)]), &path.env()).unwrap();
    assert_eq!(again.handlers, config.handlers);
    assert_eq!(again.default_handler, config.default_handler);
    let json: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
    assert_eq!(json["default_handler"], "runc");
}

#[test]
fn type_errors_in_tables_name_the_full_key() {
    let path = FakePath::with(&["runc"]);
    let file = "[handlers.runc]\nprivileged_without_host_devices = \"yes\"\n";
    let errors = refused(Config::from_texts(&texts(&[("r.toml", file)]), &path.env()));
    assert!(
        errors[0].starts_with(
            "r.toml:2:35: handlers.runc.privileged_without_host_devices: invalid type: string"
        ),
        "{errors:?}"
    );
}

#[test]
fn line_and_column_count_from_one() {
    assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_and_column("ab", 99), (1, 3));
}

#[test]
fn the_example_configuration_uses_only_known_keys() {
    let example = include_str!("../../config/rcri.toml");
    toml::from_str::<FileConfig>(example).expect("config/rcri.toml parses");
    toml::from_str::<FileConfig>(EMBEDDED_DEFAULT).expect("config/default.toml parses");
}

#[test]
fn registries_merge_and_mirrors_must_be_urls() {
    let path = FakePath::with(&["runc"]);
    let config = Config::from_texts(
        &texts(&[
            ("a.toml", "[registries.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n"),
            ("b.toml", "[registries.\"registry.k8s.io\"]\ninsecure = true\n[registries.\"docker.io\"]\nmirrors = [\"https://mirror.example/v2-prefix\"]\n"),
        ]),
        &path.env(),
    )
    .unwrap();
    assert_eq!(
        config.registries["registry.k8s.io"],
        RegistryConfig {
            mirrors: vec!["http://127.0.0.1:5000".into()],
            insecure: true
        }
    );
    assert!(!config.registries["docker.io"].insecure);
    let shown = config.to_toml();
    assert!(
        shown.contains("[registries.\"registry.k8s.io\"]"),
        "{shown}"
    );

    let errors = refused(Config::from_texts(
        &texts(&[(
            "r.toml",
            "[registries.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n",
        )]),
        &path.env(),
    ));
    assert_eq!(
        errors,
        [
            "r.toml:2: registries.\"docker.io\".mirrors: \"127.0.0.1:5000\" must start with http:// or https://"
        ]
    );
    let errors = refused(Config::from_texts(
        &texts(&[("r.toml", "[registries.\"docker.io\"]\nmirror = []\n")]),
        &path.env(),
    ));
    assert!(
        errors[0].starts_with("r.toml:2:1: unknown field `mirror`"),
        "{errors:?}"
    );
}

#[test]
fn network_settings_default_and_must_be_absolute() {
    let path = FakePath::with(&["runc"]);
    let config = Config::from_texts(&[embedded()], &path.env()).unwrap();
    assert_eq!(config.network.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
    assert_eq!(
        config.network.cni_bin_dirs,
        [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    );
    let errors = refused(Config::from_texts(
        &texts(&[(
            "r.toml",
            "[network]\ncni_conf_dir = \"net.d\"\ncni_bin_dirs = [\"/x\", \"bin\"]\n",
        )]),
        &path.env(),
    ));
    assert_eq!(
        errors,
        [
            "r.toml:2: network.cni_conf_dir = \"net.d\" must be an absolute path",
            "r.toml:3: network.cni_bin_dirs entry \"bin\" must be an absolute path"
        ]
    );
}

#[test]
fn create_timeout_parses_and_is_checked() {
    let path = FakePath::with(&["runc", "runsc"]);
    let file = "[handlers.runc]\n[handlers.runsc]\ncreate_timeout = \"90s\"\n";
    let config = Config::from_texts(&texts(&[("r.toml", file)]), &path.env()).unwrap();
    assert_eq!(
        config.handlers["runc"].create_timeout,
        DEFAULT_CREATE_TIMEOUT
    );
    assert_eq!(
        config.handlers["runsc"].create_timeout,
        std::time::Duration::from_secs(90)
    );
    assert!(config.to_toml().contains("create_timeout = \"90s\""));
    let file = "[handlers.runc]\n[handlers.runsc]\ncreate_timeout = \"soon\"\n";
    let config = Config::from_texts(&texts(&[("r.toml", file)]), &path.env()).unwrap();
    assert_eq!(
        config.dropped_handlers[0].reason,
        "create_timeout \"soon\" is not a duration such as \"90s\" or \"4m\" (set at r.toml:3)"
    );
    assert_eq!(
        parse_duration("500ms"),
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(
        parse_duration("2h"),
        Some(std::time::Duration::from_secs(7200))
    );
    assert_eq!(parse_duration("0s"), None);
    assert_eq!(parse_duration("5"), None);
}

#[test]
fn streaming_settings_default_and_are_checked() {
    let path = FakePath::with(&["runc"]);
    let config = Config::from_texts(&[embedded()], &path.env()).unwrap();
    assert_eq!(config.streaming.address.to_string(), "127.0.0.1");
    assert_eq!(config.streaming.port, 0);
    let config = Config::from_texts(
        &[
            embedded(),
            (
                "s.toml".to_string(),
                "[streaming]\naddress = \"::1\"\nport = 10010\n".to_string(),
            ),
        ],
        &path.env(),
    )
    .unwrap();
    assert_eq!(config.streaming.address.to_string(), "::1");
    assert_eq!(config.streaming.port, 10010);
    let errors = refused(Config::from_texts(
        &texts(&[(
            "s.toml",
            "[streaming]\naddress = \"localhost\"\nport = 70000\n",
        )]),
        &path.env(),
    ));
    assert!(
        errors.contains(
            &"s.toml:2: streaming.address = \"localhost\" is not an IP address".to_string()
        ),
        "{errors:?}"
    );
    assert!(
        errors.contains(
            &"s.toml:3: streaming.port = 70000 is not a TCP port (0 to 65535; 0 picks a free one)"
                .to_string()
        ),
        "{errors:?}"
    );
}

#[test]
fn streaming_idle_timeout_and_tls_are_checked() {
    let path = FakePath::with(&["runc"]);
    let config = Config::from_texts(&[embedded()], &path.env()).unwrap();
    assert_eq!(
        config.streaming.idle_timeout,
        std::time::Duration::from_secs(4 * 3600)
    );
    assert_eq!(config.streaming.tls, None);
    let config = Config::from_texts(
        &[
            embedded(),
            (
                "s.toml".to_string(),
                "[streaming]\nidle_timeout = \"30m\"\ntls_cert_file = \"/etc/rcri/cert.pem\"\ntls_key_file = \"/etc/rcri/key.pem\"\n".to_string(),
            ),
        ],
        &path.env(),
    )
    .unwrap();
    assert_eq!(
        config.streaming.idle_timeout,
        std::time::Duration::from_secs(1800)
    );
    assert_eq!(
        config.streaming.tls.as_ref().unwrap().key_file,
        PathBuf::from("/etc/rcri/key.pem")
    );
    let errors = refused(Config::from_texts(
        &texts(&[(
            "s.toml",
            "[streaming]\nidle_timeout = \"soon\"\ntls_cert_file = \"cert.pem\"\n",
        )]),
        &path.env(),
    ));
    assert!(
        errors.contains(&"s.toml:2: streaming.idle_timeout = \"soon\" is not a duration such as \"30m\" or \"4h\"".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(
            &"s.toml:3: streaming.tls_cert_file and streaming.tls_key_file must be set together"
                .to_string()
        ),
        "{errors:?}"
    );
}
