//! `cargo xtask run [--release] -- <vipwatch args>`: builds, then replaces
//! itself with vipwatch (exec), so signals such as Ctrl-C reach vipwatch
//! directly and its exit code is the command's.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, bail};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Options {
    /// Build and run with the release profile.
    #[arg(long)]
    release: bool,
    /// Arguments for vipwatch, after `--`, e.g. `-- backup --iface eth0 ...`.
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let Options { release, args } = options;
    // Checked first: no point building for a run that cannot attach XDP.
    if !util::is_root() {
        bail!("vipwatch needs root (CAP_BPF/CAP_NET_ADMIN/CAP_NET_RAW); run as root");
    }
    let vipwatch = build::build(build::Options { release })?;
    let error = Command::new(&vipwatch).args(args).exec();
    Err(error).with_context(|| format!("could not exec {}", vipwatch.display()))
}
