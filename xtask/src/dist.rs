//! `cargo xtask dist`: what an operator installs, from a machine that has
//! the toolchain. Into `target/dist/` (or `--out`):
//!
//! * `vipwatch_<version>-1_<arch>.deb`, built by cargo-deb from the release
//!   binary (the XDP object is embedded in it), the systemd unit, the
//!   sysusers.d entry, the example configuration and the manual pages
//!   (metadata in `vipwatch/Cargo.toml`);
//! * `vipwatch-<version>-<arch>-linux-gnu.tar.gz`: the same files laid out
//!   from `/` (`tar -C / -xzf` installs them), for other distributions.
//!
//! The manual pages are generated from the clap definitions by the binary
//! itself (`vipwatch manpages DIR`), so they cannot drift from `--help`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    build, prerequisites,
    util::{self, TAG},
};

#[derive(clap::Args)]
pub struct Options {
    /// Where to put the package and the tarball (default: target/dist).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Where the files the package takes from the workspace are (paths as in
/// vipwatch/Cargo.toml's `[package.metadata.deb]`), and where they go.
const FILES: &[(&str, &str, u32)] = &[
    (
        "dist/vipwatch.service",
        "lib/systemd/system/vipwatch.service",
        0o644,
    ),
    (
        "dist/vipwatch.sysusers",
        "usr/lib/sysusers.d/vipwatch.conf",
        0o644,
    ),
    ("dist/vipwatch.toml", "etc/vipwatch/vipwatch.toml", 0o644),
    ("README.md", "usr/share/doc/vipwatch/README.md", 0o644),
];

pub fn dist(options: Options) -> anyhow::Result<()> {
    let root = util::workspace_root();
    let out = options
        .out
        .unwrap_or_else(|| root.join("target").join("dist"));
    let toolchain = prerequisites::ensure()?;
    let cargo_deb = prerequisites::ensure_cargo_deb()?;
    let vipwatch = build::build_with(&toolchain, build::Options { release: true })?;
    let version = version_of(&vipwatch)?;
    let arch = std::env::consts::ARCH;

    // The manual pages, where the package metadata expects them.
    let man = root.join("target").join("dist").join("man");
    if man.exists() {
        fs::remove_dir_all(&man).with_context(|| format!("removing {}", man.display()))?;
    }
    util::run_quiet(Command::new(&vipwatch).arg("manpages").arg(&man))?;

    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let deb = out.join(format!("vipwatch_{version}-1_{}.deb", deb_arch(arch)));
    util::run_quiet(
        Command::new(&cargo_deb)
            .args(["--package", "vipwatch", "--no-build", "--output"])
            .arg(&deb)
            .current_dir(root),
    )
    .context("cargo-deb failed")?;

    let tarball = out.join(format!("vipwatch-{version}-{arch}-linux-gnu.tar.gz"));
    let staging = out.join(format!("vipwatch-{version}-{arch}"));
    stage(root, &vipwatch, &man, &staging)?;
    util::run_quiet(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&staging)
            .arg("."),
    )
    .context("tar failed")?;
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;

    eprintln!("{TAG} built {}", deb.display());
    eprintln!("{TAG} built {}", tarball.display());
    Ok(())
}

/// The tarball's tree: the package's files, laid out from `/`.
fn stage(root: &Path, vipwatch: &Path, man: &Path, staging: &Path) -> anyhow::Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let mut files: Vec<(PathBuf, PathBuf, u32)> = FILES
        .iter()
        .map(|(from, to, mode)| (root.join(from), staging.join(to), *mode))
        .collect();
    files.push((vipwatch.to_owned(), staging.join("usr/bin/vipwatch"), 0o755));
    for page in fs::read_dir(man).with_context(|| format!("reading {}", man.display()))? {
        let page = page?.path();
        let name = page.file_name().context("a manual page without a name")?;
        files.push((
            page.clone(),
            staging.join("usr/share/man/man1").join(name),
            0o644,
        ));
    }
    for (from, to, mode) in files {
        let dir = to.parent().context("a staged file has no directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `vipwatch --version` says `vipwatch X.Y.Z`.
fn version_of(vipwatch: &Path) -> anyhow::Result<String> {
    let out = util::run_quiet(Command::new(vipwatch).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["vipwatch", version] => Ok((*version).to_owned()),
        _ => bail!("unexpected `vipwatch --version` output: {text:?}"),
    }
}

/// Debian's name for the architecture.
fn deb_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
