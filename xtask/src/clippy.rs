//! `cargo xtask clippy`: prerequisites (so the build script builds the real
//! XDP object rather than its stub), then clippy with warnings as errors on
//! every crate and target for the host, and on the XDP program itself for
//! the BPF target (on the host its `program` module is compiled out).

use anyhow::Context as _;

use crate::{prerequisites, util};

pub fn clippy() -> anyhow::Result<()> {
    let toolchain = prerequisites::ensure()?;
    util::run_status(toolchain.cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems (shown above)")?;
    util::run_status(toolchain.cargo().args([
        "+nightly",
        "clippy",
        "--package",
        "vipwatch-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems in the XDP program (shown above)")
}
