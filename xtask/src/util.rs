//! Small helpers shared by the subcommands: where the workspace is, whether
//! we are root, and running a command with an error that names it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// Prefix of every line xtask prints, so its own messages stand out from
/// cargo's. Everything goes to stderr: `cargo xtask run -- stats --json`
/// must leave stdout to vipwatch.
pub const TAG: &str = "xtask:";

/// The workspace root: xtask's own manifest directory is one level below it.
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and
    // cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `command` as a shell-like string for messages.
pub fn display(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` with inherited stdio and fails if it does not exit 0.
pub fn run_status(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| {
        format!(
            "could not start `{}`; is it installed and on PATH?",
            display(command)
        )
    })?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(command));
    }
    Ok(())
}

/// Runs `command` with its output captured, and fails with that output (the
/// end of it) if it does not exit 0. Used for installers, whose chatter is
/// only worth showing when they fail.
pub fn run_quiet(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output().with_context(|| {
        format!(
            "could not start `{}`; is it installed and on PATH?",
            display(command)
        )
    })?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            display(command),
            output.status,
            tail(&output.stdout),
            tail(&output.stderr)
        );
    }
    Ok(output)
}

/// The last lines of a command's output, enough to see why it failed.
pub fn tail(bytes: &[u8]) -> String {
    const LINES: usize = 40;
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LINES);
    lines[start..]
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect()
}

/// Finds `name` in the directories of `$PATH`, as a shell would.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;

    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
