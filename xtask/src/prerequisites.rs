//! Checks, and installs when missing, what building and testing vipwatch
//! needs, before every command that builds:
//!
//! * the nightly toolchain's `rust-src`: aya-build compiles the XDP program
//!   with nightly and `-Z build-std=core`, which needs core's source;
//! * `bpf-linker` 0.13.0, built against LLVM 22, which links the BPF object
//!   (and, only to build it, the Debian packages with LLVM 22's libraries);
//! * the tools the end-to-end tests drive: `nft`, `ip`, `nsenter`/`unshare`.
//!
//! When everything is present this costs a few process spawns (well under a
//! second) and prints nothing; no apt or cargo call is made. Each thing it
//! installs gets one line. It only installs from Debian's archive (apt),
//! crates.io (`cargo install`) and rustup's components, and only
//! auto-installs Debian packages as root on Debian; anywhere else it prints
//! the command to run and stops.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, TAG};

/// The bpf-linker release the workspace's aya crates are tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where Debian's `llvm-22-dev` puts LLVM; bpf-linker's `llvm-sys` reads it.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// A Debian package we need, why, and a file that shows it is installed on
/// machines without dpkg (a bare name is looked up like a command).
struct Package {
    name: &'static str,
    why: &'static str,
    probe: &'static str,
}

/// Needed only to build bpf-linker, so only checked when it is missing.
const LLVM_PACKAGES: &[Package] = &[
    Package {
        name: "llvm-22-dev",
        why: "LLVM 22, to build bpf-linker",
        probe: "/usr/lib/llvm-22/bin/llvm-config",
    },
    Package {
        name: "libpolly-22-dev",
        why: "LLVM 22's Polly, linked into bpf-linker",
        probe: "/usr/lib/llvm-22/include/polly",
    },
    Package {
        name: "libclang-22-dev",
        why: "LLVM 22's clang libraries, to build bpf-linker",
        probe: "/usr/lib/llvm-22/lib/libclangBasic.a",
    },
];

/// Driven by the end-to-end tests (and by the demo lab).
const TEST_TOOL_PACKAGES: &[Package] = &[
    Package {
        name: "nftables",
        why: "`nft`, used by the end-to-end tests",
        probe: "nft",
    },
    Package {
        name: "iproute2",
        why: "`ip`, which builds the test namespaces and veth links",
        probe: "ip",
    },
    Package {
        name: "util-linux",
        why: "`nsenter`/`unshare`, used by the end-to-end tests",
        probe: "nsenter",
    },
];

/// The classic ping-loop baseline of `cargo xtask bench`.
const BENCH_TOOL_PACKAGES: &[Package] = &[
    Package {
        name: "iputils-ping",
        why: "`ping`, for the ping-loop baseline of the benchmark",
        probe: "ping",
    },
    Package {
        name: "iputils-arping",
        why: "`arping`, for the ping-loop baseline of the benchmark",
        probe: "arping",
    },
];

/// Installs what the benchmark's baseline script needs.
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    ensure_packages(&BENCH_TOOL_PACKAGES.iter().collect::<Vec<_>>())
}

/// What the checks found, for the commands that run cargo afterwards.
pub struct Toolchain {
    /// `PATH` for child processes when the right bpf-linker is not the one
    /// `PATH` already finds first (say ~/.cargo/bin is not on it); `None`
    /// leaves `PATH` untouched, which matters: vipwatch's build script
    /// reruns whenever `PATH` changes.
    path: Option<OsString>,
}

impl Toolchain {
    /// `cargo` run in the workspace root, with a `PATH` on which aya-build
    /// finds bpf-linker.
    pub fn cargo(&self) -> Command {
        let Self { path } = self;
        let mut cargo = Command::new("cargo");
        cargo.current_dir(util::workspace_root());
        if let Some(path) = path {
            cargo.env("PATH", path);
        }
        cargo
    }
}

/// Checks every prerequisite and installs what is missing.
pub fn ensure() -> anyhow::Result<Toolchain> {
    ensure_rust_src()?;

    let linker = find_bpf_linker();
    let mut packages: Vec<&Package> = TEST_TOOL_PACKAGES.iter().collect();
    if linker.is_none() {
        packages.extend(LLVM_PACKAGES);
    }
    ensure_packages(&packages)?;

    let (linker, installed) = match linker {
        Some(linker) => (linker, false),
        None => (install_bpf_linker()?, true),
    };
    let toolchain = Toolchain {
        path: path_for(&linker)?,
    };
    if installed {
        // Without bpf-linker, vipwatch's build script embeds an empty stub,
        // and it is not rerun when bpf-linker appears (it watches the eBPF
        // sources and PATH only): forget any such build so the next one
        // embeds the real XDP object.
        util::run_quiet(toolchain.cargo().args(["clean", "--package", "vipwatch"]))
            .context("could not clean vipwatch's earlier build after installing bpf-linker; run `cargo clean`")?;
    }
    Ok(toolchain)
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let output = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context(
            "could not run rustup: vipwatch's XDP program is built with the nightly toolchain through \
             rustup; install rustup (https://rustup.rs), then `rustup toolchain install nightly --component rust-src`",
        )?;
    if !output.status.success() {
        bail!(
            "the nightly toolchain is not installed (aya-build compiles the XDP program with it); run \
             `rustup toolchain install nightly --component rust-src`\n{}",
            util::tail(&output.stderr)
        );
    }
    let installed = String::from_utf8_lossy(&output.stdout);
    if installed.lines().any(|line| line.trim() == "rust-src") {
        return Ok(());
    }
    eprintln!(
        "{TAG} installing rust-src for the nightly toolchain (aya-build rebuilds `core` for BPF from it)"
    );
    util::run_quiet(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src to the nightly toolchain; run `rustup component add rust-src --toolchain nightly` by hand")?;
    Ok(())
}

/// The first `bpf-linker` that reports the version we need: the one on
/// `PATH`, else the one `cargo install` leaves in `$CARGO_HOME/bin`.
fn find_bpf_linker() -> Option<PathBuf> {
    let installed = cargo_home().map(|home| home.join("bin").join("bpf-linker"));
    util::which("bpf-linker")
        .into_iter()
        .chain(installed)
        .find(|linker| {
            Command::new(linker)
                .arg("--version")
                .output()
                .is_ok_and(|output| {
                    output.status.success()
                        && String::from_utf8_lossy(&output.stdout)
                            .split_whitespace()
                            .any(|word| word == BPF_LINKER_VERSION)
                })
        })
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
}

/// `PATH` with `linker`'s directory in front, unless `PATH` already finds it.
fn path_for(linker: &Path) -> anyhow::Result<Option<OsString>> {
    if util::which("bpf-linker").as_deref() == Some(linker) {
        return Ok(None);
    }
    let dir = linker
        .parent()
        .context("bpf-linker's path has no directory")?;
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)),
    )
    .with_context(|| {
        format!(
            "cannot put {} on PATH (does it contain ':'?)",
            dir.display()
        )
    })?;
    Ok(Some(path))
}

fn install_bpf_linker() -> anyhow::Result<PathBuf> {
    eprintln!(
        "{TAG} installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 with `cargo install` (a few minutes)"
    );
    let install = |locked: bool| {
        let mut cargo = Command::new("cargo");
        cargo
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--quiet"])
            .args(locked.then_some("--locked"))
            .env("LLVM_PREFIX", LLVM_PREFIX);
        util::run_quiet(&mut cargo)
    };
    if let Err(locked_error) = install(true) {
        // bpf-linker's own Cargo.lock can stop resolving (a yanked crate);
        // only then is a fresh resolution worth a try.
        let message = format!("{locked_error:#}");
        if !["--locked", "Cargo.lock", "lock file", "failed to select"]
            .iter()
            .any(|hint| message.contains(hint))
        {
            return Err(locked_error).context(
                "could not build bpf-linker; check that the LLVM 22 packages (llvm-22-dev libpolly-22-dev \
                 libclang-22-dev) are installed under /usr/lib/llvm-22",
            );
        }
        eprintln!(
            "{TAG} bpf-linker's lock file does not resolve; retrying `cargo install` without --locked"
        );
        install(false).context("could not build bpf-linker, with or without its lock file")?;
    }
    find_bpf_linker().with_context(|| {
        format!(
            "`cargo install bpf-linker` succeeded, but no bpf-linker on PATH or in $CARGO_HOME/bin reports \
             version {BPF_LINKER_VERSION}; check `bpf-linker --version`"
        )
    })
}

fn ensure_packages(packages: &[&Package]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|package| package.name).collect();
    let names = names.join(" ");
    let install = format!("apt-get install -y --no-install-recommends {names}");
    let list: String = missing
        .iter()
        .map(|package| format!("\n  {} ({})", package.name, package.why))
        .collect();
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "missing packages:{list}\ninstall their equivalents with your distribution's package manager \
             (on Debian: `apt-get update && {install}`), then rerun this command"
        );
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages:{list}\ninstall them with `sudo apt-get update && sudo {install}`, then rerun this command"
        );
    }

    for package in &missing {
        eprintln!(
            "{TAG} installing Debian package {} ({})",
            package.name, package.why
        );
    }
    util::run_quiet(Command::new("apt-get").arg("update"))
        .context("`apt-get update` failed; check the network and the apt sources under /etc/apt")?;
    util::run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing.iter().map(|package| package.name))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install {names}; `apt-cache policy {names}` shows whether your apt sources offer them"))?;

    let still_missing = missing_packages(&missing);
    if !still_missing.is_empty() {
        let names: Vec<&str> = still_missing.iter().map(|package| package.name).collect();
        bail!(
            "apt-get reported success but {} are still not installed; try `{install}` by hand",
            names.join(" ")
        );
    }
    Ok(())
}

/// The packages of `packages` that are not installed: asked of dpkg where
/// there is one (one spawn for all of them), else judged by their probe.
fn missing_packages<'a>(packages: &[&'a Package]) -> Vec<&'a Package> {
    let dpkg_says = util::which("dpkg-query").and_then(|dpkg_query| {
        // Exits 1 if a name is unknown to dpkg, but still lists the rest.
        Command::new(dpkg_query)
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(packages.iter().map(|package| package.name))
            .output()
            .ok()
    });
    match dpkg_says {
        Some(output) => {
            let listing = String::from_utf8_lossy(&output.stdout);
            let installed: Vec<&str> = listing
                .lines()
                .filter(|line| line.ends_with(" install ok installed"))
                .filter_map(|line| line.split([' ', ':']).next())
                .collect();
            packages
                .iter()
                .copied()
                .filter(|package| !installed.contains(&package.name))
                .collect()
        }
        None => packages
            .iter()
            .copied()
            .filter(|package| !probe_finds(package.probe))
            .collect(),
    }
}

fn probe_finds(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    // Not root's PATH necessarily: look in the sbin directories too.
    util::which(probe).is_some()
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(probe).exists())
}
