//! The `rcri` command line as an operator meets it: `--help`, `--version`
//! and `rcri config check`.

mod common;

use std::process::Command;

use common::{RCRI, Sandbox, require_tool};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_and_help() {
    let output = Command::new(RCRI).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        format!("rcri {}\n", env!("CARGO_PKG_VERSION"))
    );

    let output = Command::new(RCRI).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    assert!(help.contains("serve"), "{help}");
    assert!(help.contains("config"), "{help}");

    let output = Command::new(RCRI)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&output).contains("--config <FILE>"));

    let output = Command::new(RCRI).arg("bogus").output().unwrap();
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let sandbox = Sandbox::new();
    let runc = require_tool("runc");
    sandbox.write_config(&format!(
        "[handlers.runc]\nruntime_path = \"{}\"\n[handlers.gone]\nruntime_path = \"/nonexistent/gone\"\n",
        runc.display()
    ));
    let output = sandbox.run(&["config", "check"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    assert!(shown.contains("default_handler = \"runc\""), "{shown}");
    assert!(
        shown.contains(&format!("runtime_path = \"{}\"", runc.display())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "runtime_root = \"{}\"",
            sandbox.path().join("run/runtimes/runc").display()
        )),
        "the root is derived from run_dir: {shown}"
    );
    assert!(
        stderr(&output)
            .contains("warning: handler \"gone\" is dropped: /nonexistent/gone: no such file"),
        "{}",
        stderr(&output)
    );
    // What it prints is itself a valid configuration.
    let reparsed = sandbox.path().join("shown.toml");
    std::fs::write(&reparsed, &shown).unwrap();
    let output = Command::new(RCRI)
        .args(["config", "check", "--config"])
        .arg(&reparsed)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn config_check_prints_every_error_and_exits_1() {
    let sandbox = Sandbox::new();
    let main = sandbox.write_config("colour = \"blue\"\n");
    let dropins = sandbox.path().join("rcri.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(dropins.join("10-x.toml"), "cgroup_driver = 7\n").unwrap();
    let output = Command::new(RCRI)
        .args(["config", "check", "--config"])
        .arg(&main)
        .arg("--config-dir")
        .arg(&dropins)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!("{}:5:1: unknown field `colour`", main.display())),
        "{errors}"
    );
    assert!(
        errors.contains(&format!(
            "{}:1:17: cgroup_driver: ",
            dropins.join("10-x.toml").display()
        )),
        "{errors}"
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn dropins_apply_in_name_order() {
    let sandbox = Sandbox::new();
    let runc = require_tool("runc");
    let crun = require_tool("crun");
    let main = sandbox.write_config(&format!(
        "[handlers.runc]\nruntime_path = \"{}\"\n[handlers.crun]\nruntime_path = \"{}\"\n",
        runc.display(),
        crun.display()
    ));
    let dropins = sandbox.path().join("rcri.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(dropins.join("20-late.toml"), "default_handler = \"crun\"\n").unwrap();
    std::fs::write(
        dropins.join("10-early.toml"),
        "default_handler = \"runc\"\n",
    )
    .unwrap();
    std::fs::write(dropins.join("99-ignored.conf"), "not toml at all").unwrap();
    let output = Command::new(RCRI)
        .args(["config", "check", "--config"])
        .arg(&main)
        .arg("--config-dir")
        .arg(&dropins)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    assert!(shown.contains("default_handler = \"crun\""), "{shown}");
    assert!(
        shown.contains("10-early.toml, "),
        "sources are listed in order: {shown}"
    );
}

#[test]
fn a_missing_config_file_given_explicitly_is_an_error() {
    let output = Command::new(RCRI)
        .args(["config", "check", "--config", "/nonexistent/rcri.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/rcri.toml: cannot read configuration file"),
        "{}",
        stderr(&output)
    );
}
