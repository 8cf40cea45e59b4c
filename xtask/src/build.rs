//! `cargo xtask build [--release]`: prerequisites, then the vipwatch binary
//! (whose build script builds and embeds the XDP object) and any helper
//! binaries of the end-to-end test crate.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::{
    prerequisites::{self, Toolchain},
    util::{self, TAG},
};

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Installs what is missing, builds, and says where the binary is.
pub fn build(options: Options) -> anyhow::Result<PathBuf> {
    let toolchain = prerequisites::ensure()?;
    let vipwatch = build_with(&toolchain, options)?;
    eprintln!("{TAG} built {}", vipwatch.display());
    Ok(vipwatch)
}

/// Builds the binaries and returns the path of `vipwatch`, read from
/// cargo's JSON messages so it is right wherever the target directory is.
pub fn build_with(toolchain: &Toolchain, options: Options) -> anyhow::Result<PathBuf> {
    let Options { release } = options;
    let mut cargo = toolchain.cargo();
    // `--bins` with the test crate builds its helper binaries, if it has
    // any, and nothing of it otherwise.
    cargo
        .args([
            "build",
            "--package",
            "vipwatch",
            "--package",
            "vipwatch-tests",
            "--bins",
        ])
        .arg("--message-format=json-render-diagnostics")
        .args(release.then_some("--release"))
        .stdout(Stdio::piped());
    let mut child = cargo.spawn().with_context(|| {
        format!(
            "could not start `{}`; is cargo on PATH?",
            util::display(&cargo)
        )
    })?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's stdout was not captured")?;

    let manifest = util::workspace_root().join("vipwatch").join("Cargo.toml");
    let mut vipwatch = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || message["target"]["name"] != "vipwatch"
            || message["manifest_path"].as_str().map(PathBuf::from) != Some(manifest.clone())
        {
            continue;
        }
        if let Some(executable) = message["executable"].as_str() {
            vipwatch = Some(PathBuf::from(executable));
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); the errors are above",
            util::display(&cargo)
        );
    }
    vipwatch.context("cargo built the vipwatch package but reported no `vipwatch` executable; check vipwatch/Cargo.toml's [[bin]]")
}
