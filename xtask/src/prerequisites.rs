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
//! installs gets one line. It only installs from the distribution's archive
//! (apt), crates.io (`cargo install`) and rustup's components, and only
//! installs packages as root on Debian or Ubuntu (`/etc/os-release`), when
//! apt's sources have them. Anywhere else (Fedora, another distribution,
//! no root, an archive without LLVM 22) it prints the exact steps for that
//! system and stops.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, TAG};

/// The bpf-linker release the workspace's aya crates are tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version bpf-linker 0.13 is built against (its `llvm-22`
/// feature): its `llvm-sys` links exactly this major version.
const LLVM_MAJOR: u32 = 22;
/// Where Debian's and Ubuntu's `llvm-22-dev` put LLVM.
const DEBIAN_LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// A package we need, why, its name on each family of distributions, and
/// a file that shows it is installed on machines without dpkg/rpm (a bare
/// name is looked up like a command).
struct Package {
    /// Debian and Ubuntu (apt).
    deb: &'static str,
    /// Fedora (dnf).
    rpm: &'static str,
    why: &'static str,
    probe: &'static str,
}

impl Package {
    fn name(&self, os: &OsRelease) -> &'static str {
        match os.family() {
            Family::Fedora => self.rpm,
            Family::Debian | Family::Other => self.deb,
        }
    }
}

/// Needed only to build bpf-linker, so only checked when it is missing and
/// no LLVM 22 is found.
const LLVM_PACKAGES: &[Package] = &[
    Package {
        deb: "llvm-22-dev",
        rpm: "llvm-devel",
        why: "LLVM 22, to build bpf-linker",
        probe: "/usr/lib/llvm-22/bin/llvm-config",
    },
    Package {
        deb: "libpolly-22-dev",
        rpm: "polly-devel",
        why: "LLVM 22's Polly, linked into bpf-linker",
        probe: "/usr/lib/llvm-22/include/polly",
    },
    Package {
        deb: "libclang-22-dev",
        rpm: "clang-devel",
        why: "LLVM 22's clang libraries, to build bpf-linker",
        probe: "/usr/lib/llvm-22/lib/libclangBasic.a",
    },
];

/// Driven by the end-to-end tests (and by the demo lab).
const TEST_TOOL_PACKAGES: &[Package] = &[
    Package {
        deb: "nftables",
        rpm: "nftables",
        why: "`nft`, used by the end-to-end tests",
        probe: "nft",
    },
    Package {
        deb: "iproute2",
        rpm: "iproute",
        why: "`ip`, which builds the test namespaces and veth links",
        probe: "ip",
    },
    Package {
        deb: "util-linux",
        rpm: "util-linux",
        why: "`nsenter`/`unshare`/`setpriv`, used by the end-to-end tests",
        probe: "nsenter",
    },
    Package {
        deb: "prometheus",
        rpm: "golang-github-prometheus",
        why: "`promtool`, which validates the metrics endpoint's output",
        probe: "promtool",
    },
    Package {
        deb: "openssl",
        rpm: "openssl",
        why: "`openssl`: the TLS server of the https health-check test",
        probe: "openssl",
    },
    Package {
        deb: "strace",
        rpm: "strace",
        why: "`strace`: the daemon's system calls checked against the unit's filter",
        probe: "strace",
    },
    Package {
        deb: "systemd",
        rpm: "systemd",
        why: "`systemd-analyze`, which checks the systemd unit",
        probe: "systemd-analyze",
    },
    Package {
        deb: "iputils-ping",
        rpm: "iputils",
        why: "`ping`: the IPv6 lab's reachability check, and the benchmark's ping-loop baseline",
        probe: "ping",
    },
];

/// The classic ping-loop baseline of `cargo xtask bench`.
const BENCH_TOOL_PACKAGES: &[Package] = &[Package {
    deb: "iputils-arping",
    rpm: "iputils",
    why: "`arping`, for the ping-loop baseline of the benchmark",
    probe: "arping",
}];

/// Installs what the benchmark's baseline script needs.
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    ensure_packages(
        &OsRelease::read(),
        &BENCH_TOOL_PACKAGES.iter().collect::<Vec<_>>(),
        false,
    )
}

/// The distribution families whose package names and LLVM sources we know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// Debian and its derivatives that keep Debian's package names.
    Debian,
    Fedora,
    Other,
}

/// The parts of `/etc/os-release` (os-release(5)) we use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OsRelease {
    id: String,
    id_like: Vec<String>,
    version_id: String,
    pretty_name: String,
}

impl OsRelease {
    fn read() -> Self {
        ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    fn parse(text: &str) -> Self {
        let mut os = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            match key.trim() {
                "ID" => os.id = value.to_owned(),
                "ID_LIKE" => os.id_like = value.split_whitespace().map(str::to_owned).collect(),
                "VERSION_ID" => os.version_id = value.to_owned(),
                "PRETTY_NAME" => os.pretty_name = value.to_owned(),
                _ => {}
            }
        }
        os
    }

    fn is(&self, id: &str) -> bool {
        self.id == id || self.id_like.iter().any(|like| like == id)
    }

    fn family(&self) -> Family {
        if self.is("debian") || self.is("ubuntu") {
            Family::Debian
        } else if self.is("fedora") {
            Family::Fedora
        } else {
            Family::Other
        }
    }

    fn name(&self) -> &str {
        if self.pretty_name.is_empty() {
            "this distribution"
        } else {
            &self.pretty_name
        }
    }
}

/// The exact steps to get LLVM 22's development files on `os`, when its
/// own archive does not have them (or we may not install them).
fn llvm_steps(os: &OsRelease) -> String {
    let deb: Vec<&str> = LLVM_PACKAGES.iter().map(|p| p.deb).collect();
    let deb = deb.join(" ");
    let apt_llvm = format!(
        "add LLVM's own apt repository and install from it:\n  \
         wget https://apt.llvm.org/llvm.sh && sudo bash llvm.sh {LLVM_MAJOR}\n  \
         sudo apt-get install -y {deb}"
    );
    let steps = if os.id == "ubuntu" || (os.is("ubuntu") && os.id != "debian") {
        // Ubuntu's archive carries other LLVM versions than Debian's.
        format!("Ubuntu's archive may not have LLVM {LLVM_MAJOR}; {apt_llvm}")
    } else if os.family() == Family::Debian {
        format!(
            "on Debian, `sudo apt-get update && sudo apt-get install -y {deb}` where the archive has \
             them (`apt-cache policy llvm-{LLVM_MAJOR}-dev`); otherwise {apt_llvm}"
        )
    } else if os.family() == Family::Fedora {
        format!(
            "on Fedora, LLVM {LLVM_MAJOR} must be the release's own LLVM (Fedora 44 or newer): \
             `sudo dnf install -y llvm-devel clang-devel polly-devel`, then check \
             `llvm-config --version` says {LLVM_MAJOR}.x; older releases do not package it"
        )
    } else {
        format!(
            "install LLVM {LLVM_MAJOR}'s development files (llvm-config, the LLVM, clang and Polly \
             libraries) with {}'s package manager, so that `llvm-config --version` says {LLVM_MAJOR}.x",
            os.name()
        )
    };
    format!(
        "bpf-linker {BPF_LINKER_VERSION} (which links vipwatch's XDP program) is built against LLVM \
         {LLVM_MAJOR} exactly; {steps}; then rerun this command"
    )
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

    let os = OsRelease::read();
    let linker = find_bpf_linker();
    let mut packages: Vec<&Package> = TEST_TOOL_PACKAGES.iter().collect();
    let mut apt_updated = false;
    if linker.is_none() && find_llvm().is_none() {
        // Only apt, as root, with LLVM 22 in its sources is installed from
        // here; anywhere else the user gets the steps for their system.
        if os.family() != Family::Debian
            || !util::is_root()
            || !apt_offers(LLVM_PACKAGES[0].deb, &mut apt_updated)?
        {
            bail!(
                "bpf-linker is missing and no LLVM {LLVM_MAJOR} was found on {}. {}",
                os.name(),
                llvm_steps(&os)
            );
        }
        packages.extend(LLVM_PACKAGES);
    }
    ensure_packages(&os, &packages, apt_updated)?;

    let (linker, installed) = match linker {
        Some(linker) => (linker, false),
        None => {
            let prefix = find_llvm().with_context(|| {
                format!(
                    "LLVM {LLVM_MAJOR} is still not found after installing its packages. {}",
                    llvm_steps(&os)
                )
            })?;
            (install_bpf_linker(&prefix, &os)?, true)
        }
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

/// cargo-deb, for `cargo xtask dist` (pinned: its output is what we test).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// `cargo-deb` at [`CARGO_DEB_VERSION`], installed with `cargo install` if
/// missing; returns its path.
pub fn ensure_cargo_deb() -> anyhow::Result<PathBuf> {
    let found = || {
        let installed = cargo_home().map(|home| home.join("bin").join("cargo-deb"));
        util::which("cargo-deb")
            .into_iter()
            .chain(installed)
            .find(|bin| {
                Command::new(bin).arg("--version").output().is_ok_and(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .any(|word| word == CARGO_DEB_VERSION)
                })
            })
    };
    if let Some(bin) = found() {
        return Ok(bin);
    }
    eprintln!(
        "{TAG} installing cargo-deb {CARGO_DEB_VERSION} with `cargo install` (about a minute)"
    );
    util::run_quiet(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
        "--quiet",
    ]))
    .context("could not install cargo-deb; try `cargo install cargo-deb --locked` by hand")?;
    found().with_context(|| {
        format!("`cargo install cargo-deb` succeeded, but no cargo-deb {CARGO_DEB_VERSION} is on PATH or in $CARGO_HOME/bin")
    })
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

/// The prefix of an installed LLVM 22 (what bpf-linker's `llvm-sys` reads
/// from `LLVM_PREFIX`): Debian's and Ubuntu's versioned directory, or the
/// prefix of an `llvm-config` that reports 22.x (Fedora's `/usr`).
fn find_llvm() -> Option<PathBuf> {
    let debian = Path::new(DEBIAN_LLVM_PREFIX);
    let candidates = [
        debian.join("bin").join("llvm-config"),
        PathBuf::from(format!("llvm-config-{LLVM_MAJOR}")),
        PathBuf::from("llvm-config"),
    ];
    candidates.iter().find_map(|config| {
        let ask = |arg: &str| {
            Command::new(config)
                .arg(arg)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        let version = ask("--version")?;
        (version.split('.').next()? == LLVM_MAJOR.to_string())
            .then(|| ask("--prefix").map(PathBuf::from))
            .flatten()
    })
}

fn apt_update() -> anyhow::Result<()> {
    eprintln!("{TAG} refreshing apt's package lists (apt-get update)");
    util::run_quiet(Command::new("apt-get").arg("update"))
        .context("`apt-get update` failed; check the network and the apt sources under /etc/apt")?;
    Ok(())
}

/// Whether apt offers `package`. A new machine's package lists may predate
/// it (Debian 12 has LLVM 22 in bookworm-security only): they are refreshed
/// once, and `apt_updated` records it, before the answer is no.
fn apt_offers(package: &str, apt_updated: &mut bool) -> anyhow::Result<bool> {
    if apt_has(package) {
        return Ok(true);
    }
    if *apt_updated {
        return Ok(false);
    }
    apt_update()?;
    *apt_updated = true;
    Ok(apt_has(package))
}

/// Whether apt knows an installable candidate for `package`.
fn apt_has(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .is_ok_and(|output| {
            let text = String::from_utf8_lossy(&output.stdout);
            text.lines()
                .find_map(|line| line.trim().strip_prefix("Candidate:"))
                .is_some_and(|candidate| candidate.trim() != "(none)")
        })
}

fn install_bpf_linker(llvm_prefix: &Path, os: &OsRelease) -> anyhow::Result<PathBuf> {
    eprintln!(
        "{TAG} installing bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} ({}) with `cargo install` (a few minutes)",
        llvm_prefix.display()
    );
    let install = |locked: bool| {
        let mut cargo = Command::new("cargo");
        cargo
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--quiet"])
            .args(locked.then_some("--locked"))
            .env("LLVM_PREFIX", llvm_prefix);
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
            return Err(locked_error).with_context(|| {
                format!(
                    "could not build bpf-linker against {}. {}",
                    llvm_prefix.display(),
                    llvm_steps(os)
                )
            });
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

/// Installs what `packages` lacks; `apt_updated` says the package lists were
/// refreshed by this run already.
fn ensure_packages(os: &OsRelease, packages: &[&Package], apt_updated: bool) -> anyhow::Result<()> {
    let missing = missing_packages(os, packages);
    if missing.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = missing.iter().map(|package| package.name(os)).collect();
    names.dedup();
    let names = names.join(" ");
    let list: String = missing
        .iter()
        .map(|package| format!("\n  {} ({})", package.name(os), package.why))
        .collect();
    let install = format!("apt-get install -y --no-install-recommends {names}");
    match os.family() {
        Family::Debian if util::is_root() => {}
        Family::Debian => bail!(
            "missing packages on {}:{list}\ninstall them with `sudo apt-get update && sudo {install}`, then rerun this command",
            os.name()
        ),
        Family::Fedora => bail!(
            "missing packages on {}:{list}\ninstall them with `sudo dnf install -y {names}`, then rerun this command",
            os.name()
        ),
        Family::Other => bail!(
            "missing packages on {}:{list}\ninstall their equivalents with its package manager (on Debian \
             and Ubuntu: `apt-get update && {install}`; on Fedora: `dnf install`), then rerun this command",
            os.name()
        ),
    }

    for package in &missing {
        eprintln!(
            "{TAG} installing package {} ({})",
            package.name(os),
            package.why
        );
    }
    if !apt_updated {
        apt_update()?;
    }
    util::run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(names.split(' '))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install {names}; `apt-cache policy {names}` shows whether your apt sources offer them"))?;

    let still_missing = missing_packages(os, &missing);
    if !still_missing.is_empty() {
        let names: Vec<&str> = still_missing
            .iter()
            .map(|package| package.name(os))
            .collect();
        bail!(
            "apt-get reported success but {} are still not installed; try `{install}` by hand",
            names.join(" ")
        );
    }
    Ok(())
}

/// The packages of `packages` that are not installed: asked of dpkg where
/// there is one (one spawn for all of them), else judged by their probe.
fn missing_packages<'a>(os: &OsRelease, packages: &[&'a Package]) -> Vec<&'a Package> {
    if os.family() != Family::Debian {
        return packages
            .iter()
            .copied()
            .filter(|package| !probe_finds(package.probe))
            .collect();
    }
    let dpkg_says = util::which("dpkg-query").and_then(|dpkg_query| {
        // Exits 1 if a name is unknown to dpkg, but still lists the rest.
        Command::new(dpkg_query)
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(packages.iter().map(|package| package.deb))
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
                .filter(|package| !installed.contains(&package.deb))
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

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
    const UBUNTU: &str =
        "PRETTY_NAME=\"Ubuntu 24.04.2 LTS\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n";
    const MINT: &str = "PRETTY_NAME=\"Linux Mint 22\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\n";
    const FEDORA: &str = "NAME=\"Fedora Linux\"\nVERSION_ID=43\nID=fedora\nPRETTY_NAME=\"Fedora Linux 43 (Server Edition)\"\n";
    const ARCH: &str = "NAME=\"Arch Linux\"\nPRETTY_NAME=\"Arch Linux\"\nID=arch\n";

    #[test]
    fn os_release_is_parsed_into_families() {
        let table = [
            (DEBIAN, Family::Debian, "Debian GNU/Linux 12 (bookworm)"),
            (UBUNTU, Family::Debian, "Ubuntu 24.04.2 LTS"),
            (MINT, Family::Debian, "Linux Mint 22"),
            (FEDORA, Family::Fedora, "Fedora Linux 43 (Server Edition)"),
            (ARCH, Family::Other, "Arch Linux"),
            ("", Family::Other, "this distribution"),
        ];
        for (text, family, name) in table {
            let os = OsRelease::parse(text);
            assert_eq!(os.family(), family, "{text}");
            assert_eq!(os.name(), name);
        }
        assert_eq!(OsRelease::parse(UBUNTU).version_id, "24.04");
    }

    #[test]
    fn llvm_steps_name_the_version_and_the_distribution_s_way() {
        for text in [DEBIAN, UBUNTU, MINT, FEDORA, ARCH] {
            let steps = llvm_steps(&OsRelease::parse(text));
            assert!(steps.contains("LLVM 22"), "{steps}");
            assert!(steps.contains("bpf-linker 0.13.0"), "{steps}");
        }
        let ubuntu = llvm_steps(&OsRelease::parse(UBUNTU));
        assert!(
            ubuntu.contains("apt.llvm.org/llvm.sh") && ubuntu.contains("llvm.sh 22"),
            "{ubuntu}"
        );
        assert!(
            ubuntu.contains("llvm-22-dev libpolly-22-dev libclang-22-dev"),
            "{ubuntu}"
        );
        let mint = llvm_steps(&OsRelease::parse(MINT));
        assert!(
            mint.contains("apt.llvm.org"),
            "an Ubuntu derivative: {mint}"
        );
        let debian = llvm_steps(&OsRelease::parse(DEBIAN));
        assert!(debian.contains("apt-cache policy llvm-22-dev"), "{debian}");
        let fedora = llvm_steps(&OsRelease::parse(FEDORA));
        assert!(
            fedora.contains("dnf install") && fedora.contains("Fedora 44"),
            "{fedora}"
        );
        let arch = llvm_steps(&OsRelease::parse(ARCH));
        assert!(
            arch.contains("Arch Linux") && arch.contains("llvm-config --version"),
            "{arch}"
        );
    }

    #[test]
    fn package_names_follow_the_family() {
        let fedora = OsRelease::parse(FEDORA);
        let debian = OsRelease::parse(DEBIAN);
        let names = |os: &OsRelease| -> Vec<&str> {
            TEST_TOOL_PACKAGES.iter().map(|p| p.name(os)).collect()
        };
        assert_eq!(
            names(&debian),
            [
                "nftables",
                "iproute2",
                "util-linux",
                "prometheus",
                "openssl",
                "strace",
                "systemd",
                "iputils-ping"
            ]
        );
        assert_eq!(
            names(&fedora),
            [
                "nftables",
                "iproute",
                "util-linux",
                "golang-github-prometheus",
                "openssl",
                "strace",
                "systemd",
                "iputils"
            ]
        );
    }
}
