//! `cargo xtask test [-- <test args>]`: prerequisites, build, then the unit
//! tests of every crate, then the privileged end-to-end tests.
//!
//! The end-to-end tests run one at a time: they time failovers, and on a
//! two-core machine parallel tests would steal each other's CPU and make
//! the timings lie. They find the daemon through `VIPWATCH_BIN`.
//!
//! They also run as on a host vipwatch never touched, every time: in a
//! private mount namespace where bpffs is not mounted on `/sys/fs/bpf`
//! (`vipwatch_tests::on_fresh_host`). A fresh Debian machine has no bpffs there, and a
//! test that only passed because an earlier run had mounted it is a test
//! of the machine, not of vipwatch (issue "The README's test command fails
//! on a new machine").

use std::ffi::OsString;

use anyhow::{Context as _, bail};

use crate::{build, dist, prerequisites, util};

/// The package of the end-to-end tests (directory `tests/`).
const E2E_PACKAGE: &str = "vipwatch-tests";

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for the test binaries, after `--`: a name filter,
    /// `--nocapture`, `--ignored`... They go to both test runs.
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn test(options: Options) -> anyhow::Result<()> {
    let Options { args } = options;
    // Checked before building so a non-root run fails in a second, not after
    // the build.
    if !util::is_root() {
        bail!(
            "the end-to-end tests need root (they create network namespaces and attach XDP programs); \
             run `cargo xtask test` as root, or run only the unit tests with \
             `cargo test --workspace --exclude {E2E_PACKAGE}`"
        );
    }
    let toolchain = prerequisites::ensure()?;
    let vipwatch = build::build_with(&toolchain, build::Options { release: false })?;
    // The package the end-to-end tests install into a scratch root.
    let dist_dir = util::workspace_root().join("target").join("dist");
    dist::dist(dist::Options {
        out: Some(dist_dir.clone()),
    })
    .context("building the package for the end-to-end tests")?;

    util::run_status(
        toolchain
            .cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                E2E_PACKAGE,
                "--all-targets",
                "--",
            ])
            .args(&args)
            .env("VIPWATCH_BIN", &vipwatch),
    )
    .context("unit tests failed")?;

    let mut e2e = toolchain.cargo();
    e2e.args([
        "test",
        "--package",
        E2E_PACKAGE,
        "--all-targets",
        "--",
        "--test-threads=1",
    ])
    .args(&args)
    .env("VIPWATCH_BIN", &vipwatch)
    .env("VIPWATCH_DIST", &dist_dir);
    // What a fresh host looks like, on every run: its own mount namespace
    // without bpffs. What the tests mount there dies with it.
    vipwatch_tests::on_fresh_host(&mut e2e);
    util::run_status(&mut e2e).context("end-to-end tests failed")
}
