//! Builds the XDP object (`vipwatch-ebpf`) for the BPF target with aya-build
//! and leaves it in `OUT_DIR`, where `src/ebpf.rs` embeds it.
//!
//! Without bpf-linker (or with `AYA_BUILD_SKIP=1`) an empty stub object is
//! written instead, so `cargo check` and clippy work on any machine; the
//! daemon then refuses to start with a clear message. This mirrors aya's own
//! `test/integration-test/build.rs`.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("vipwatch-xdp");
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest_dir.join("..").join("vipwatch-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;

    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let linker = which::which("bpf-linker");
    if skip || linker.is_err() {
        println!(
            "cargo:warning=building vipwatch WITHOUT its XDP object ({}); `cargo xtask build` installs what is missing",
            if skip {
                "AYA_BUILD_SKIP is set"
            } else {
                "bpf-linker not found"
            }
        );
        // Rebuild once the real toolchain appears: a path that does not
        // exist makes cargo rerun this script on every build, which is
        // cheap here and ends with the stub as soon as bpf-linker exists.
        println!("cargo:rerun-if-changed={ebpf_dir}");
        if let Some(home) = env::var_os("CARGO_HOME").or_else(|| {
            env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
        }) {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(home).join("bin").join("bpf-linker").display()
            );
        }
        fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }

    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vipwatch-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP object (vipwatch-ebpf) with aya-build")
}
