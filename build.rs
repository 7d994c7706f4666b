//! Generates the CRI v1 server and client code from `proto/api.proto`.
//! protoc comes from the `protoc-bin-vendored` crate so a fresh machine needs
//! no system package to build rcri.

use std::path::PathBuf;

const GENERATED: &str = "runtime.v1.rs";
const STUB_MESSAGE: &str = "\"Not yet implemented\"";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=build.rs");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_with_config(config, &["proto/api.proto"], &["proto"])?;
    name_unimplemented_rpcs()?;
    build_pause()?;
    Ok(())
}

/// Compiles the built-in pause program as a static binary, which rcri
/// embeds and installs into the pause container's rootfs at start.
fn build_pause() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/pause/main.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("rcri-pause");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let status = std::process::Command::new(rustc)
        .args([
            "--edition=2024",
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
            "src/pause/main.rs",
            "-o",
        ])
        .arg(&out)
        .status()?;
    if !status.success() {
        return Err(format!(
            "compiling the static pause binary failed ({status}); static linking needs libc6-dev"
        )
        .into());
    }
    Ok(())
}

/// The default stubs answer `Unimplemented` with a generic text; rewrite each
/// one so the operator sees which RPC rcri does not implement yet.
fn name_unimplemented_rpcs() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(std::env::var("OUT_DIR")?).join(GENERATED);
    let source = std::fs::read_to_string(&path)?;
    let mut service = String::new();
    let mut rpc = String::new();
    let mut out = String::with_capacity(source.len() + 4096);
    let mut rewritten = 0;
    for line in source.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("pub trait ") {
            service = rest
                .split([':', ' '])
                .next()
                .unwrap_or_default()
                .to_string();
        } else if let Some(rest) = trimmed.strip_prefix("async fn ") {
            rpc = rest.split('(').next().unwrap_or_default().to_string();
        }
        if trimmed.contains(STUB_MESSAGE) {
            let message = format!(
                "\"runtime.v1.{service}/{} is not implemented by rcri yet\"",
                camel_case(&rpc)
            );
            out.push_str(&line.replace(STUB_MESSAGE, &message));
            rewritten += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if rewritten == 0 {
        return Err("no default stubs found in the generated code; did tonic change?".into());
    }
    std::fs::write(&path, out)?;
    Ok(())
}

fn camel_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}
