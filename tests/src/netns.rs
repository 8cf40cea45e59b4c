//! Named network namespaces (`/run/netns/NAME`, as `ip netns` keeps them)
//! and entering them with `setns(2)` only.
//!
//! We never use `ip netns exec` for what we run: it also unshares the mount
//! namespace and remounts `/sys`, so a daemon started that way pins BPF
//! objects under a `/sys/fs/bpf` nobody else can see.

use std::{
    ffi::OsStr,
    fs::File,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::Command,
    sync::Arc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};

use crate::exec::run_checked;

/// How long `ip netns add/del` may take.
const NETNS_TIMEOUT: Duration = Duration::from_secs(10);

/// Moves the calling thread (or, before `exec`, the child) into the network
/// namespace `fd` refers to.
fn setns_net(fd: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setns(2) only reads its arguments; it is async-signal-safe,
    // so this is also fine between fork and exec.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The mount namespace a lab process runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounts {
    /// The test process's own.
    Inherited,
    /// A private copy without bpffs on `/sys/fs/bpf`: a fresh host.
    Fresh,
}

/// Moves the calling process into a private mount namespace and unmounts
/// bpffs from `/sys/fs/bpf` there. Only raw syscalls: safe between fork and
/// exec.
pub(crate) fn fresh_mounts() -> std::io::Result<()> {
    // SAFETY: unshare/mount/umount2 with static NUL-terminated strings; no
    // memory of ours is written.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Private, so the unmount does not propagate to the host.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for _ in 0..16 {
            if libc::umount2(c"/sys/fs/bpf".as_ptr(), libc::MNT_DETACH) != 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    // Not (or no longer) a mount point, or no such directory.
                    Some(libc::EINVAL | libc::ENOENT) => Ok(()),
                    _ => Err(err),
                };
            }
        }
    }
    Err(std::io::Error::other(
        "/sys/fs/bpf is still mounted after 16 unmounts",
    ))
}

/// A network namespace we created; deleted on drop.
pub(crate) struct Netns {
    name: String,
    fd: Arc<OwnedFd>,
}

impl Netns {
    /// Creates `/run/netns/<name>` with `ip netns add`.
    pub(crate) fn create(name: &str) -> Result<Netns> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "add", name]);
        run_checked(cmd, NETNS_TIMEOUT)
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on, dropping `ns` deletes the namespace again.
        let path = Self::path_of(name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()));
        match file {
            Ok(file) => Ok(Netns {
                name: name.to_owned(),
                fd: Arc::new(OwnedFd::from(file)),
            }),
            Err(e) => {
                if let Err(del) = delete(name) {
                    eprintln!("vipwatch-tests: {del:#}");
                }
                Err(e)
            }
        }
    }

    pub(crate) fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A [`Command`] whose child enters this namespace before `exec`
    /// (and nothing else: the mount namespace stays ours).
    pub(crate) fn command(&self, program: &OsStr) -> Command {
        self.command_with(program, Mounts::Inherited)
    }

    /// Like [`Netns::command`]; with [`Mounts::Fresh`] the child also gets a
    /// private mount namespace in which bpffs is not mounted, as on a host
    /// vipwatch never ran on.
    pub(crate) fn command_with(&self, program: &OsStr, mounts: Mounts) -> Command {
        let mut cmd = Command::new(program);
        let fd = Arc::clone(&self.fd);
        // SAFETY: the hook runs in the child between fork and exec; it only
        // reads an integer and calls setns(2) and prctl(2), both
        // async-signal-safe.
        // `fd` is opened O_CLOEXEC, so the child does not keep it.
        unsafe {
            cmd.pre_exec(move || {
                setns_net(fd.as_raw_fd())?;
                if mounts == Mounts::Fresh {
                    fresh_mounts()?;
                }
                // If the test (or xtask) process dies without running its
                // Drops, the child gets SIGTERM instead of living on in a
                // namespace nobody owns: daemons release the VIP and remove
                // their pins. (Tied to the spawning thread, which for labs
                // is the one that owns them.)
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` on a fresh thread that first enters this namespace, and
    /// returns its result. Sockets created by `f` stay in this namespace
    /// wherever they are used afterwards. A panic in `f` is re-raised.
    pub(crate) fn run_in<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.fd.as_raw_fd();
        let name = &self.name;
        thread::scope(|scope| {
            let handle = scope.spawn(move || -> Result<R> {
                setns_net(fd).with_context(|| format!("entering network namespace {name}"))?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("vipwatch-tests: {e:#}");
        }
    }
}

/// Deletes a named namespace with `ip netns del`.
pub(crate) fn delete(name: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", name]);
    run_checked(cmd, NETNS_TIMEOUT)
        .map(drop)
        .with_context(|| format!("deleting network namespace {name}"))
}

/// The names in `/run/netns`.
pub(crate) fn list() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!(e).context("listing /run/netns")),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.context("listing /run/netns")?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}
