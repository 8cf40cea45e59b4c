//! `cargo xtask clippy`: prerequisites (so the build script builds the real
//! XDP object rather than its stub), then clippy on every crate and target
//! with warnings as errors.

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
    .context("clippy found problems (shown above)")
}
