//! End to end: issue "Run it in production". What an operator replacing
//! keepalived relies on: the package installs and its files work, the
//! systemd unit is valid and its hardening holds for what the daemon does,
//! a non-root daemon with the unit's capabilities fails over, the control
//! socket answers from any mount namespace, metrics pass promtool, health
//! checks (https, TCP, on the backup) do what they say, and the systemd
//! notification protocol (readiness, watchdog, reload, stop) is followed.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::*;
use serde_json::Value;
use vipwatch_tests::{Lab, Proc, Signal, scenario::VIP, vipwatch_bin, wait_until, workspace_root};

const WAIT: Duration = Duration::from_secs(10);
const METRICS: &str = "127.0.0.1:9477";

fn vip() -> Ipv4Addr {
    VIP.parse().expect("constant")
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vw-{tag}-{}", std::process::id()));
        drop(std::fs::remove_dir_all(&dir));
        std::fs::create_dir_all(&dir)?;
        // Readable by the unprivileged daemon of the non-root test.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.0));
    }
}

/// The systemd unit the package ships.
fn unit_path() -> PathBuf {
    workspace_root().join("dist").join("vipwatch.service")
}

/// The values of `key=` lines of the unit, in order.
fn unit_values(key: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(unit_path())?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect())
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn_master(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    let mut args = vec!["master", "--iface", "eth0", "--vip", VIP_CIDR];
    args.extend_from_slice(extra);
    lab.spawn("master", vipwatch_bin()?, &args)
}

/// `vipwatch status --json` of `host`'s daemons.
fn status(lab: &Lab, host: &str) -> Result<Vec<Value>> {
    let out = lab.output(host, vipwatch_bin()?, ["status", "--json"], WAIT)?;
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("status --json is not JSON"))
        .collect()
}

/// The first instance of `host`'s first daemon.
fn instance(lab: &Lab, host: &str) -> Result<Value> {
    let all = status(lab, host)?;
    all.first()
        .and_then(|d| d["instances"].get(0).cloned())
        .with_context(|| format!("no instance in {all:?}"))
}

fn wait_instance(
    lab: &Lab,
    host: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let mut last = Value::Null;
    wait_until(what, WAIT, || {
        last = instance(lab, host).unwrap_or(Value::Null);
        Ok(cond(&last))
    })
    .with_context(|| format!("last status: {last}"))?;
    Ok(last)
}

// ---------------------------------------------------------------------------
// The package.

/// The .deb and tarball: from `cargo xtask test` (VIPWATCH_DIST), else
/// built here with `cargo xtask dist`.
fn dist_dir(scratch: &Scratch) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("VIPWATCH_DIST") {
        return Ok(PathBuf::from(dir));
    }
    let out = scratch.path("dist");
    run_ok(
        Command::new("cargo")
            .args(["xtask", "dist", "--out"])
            .arg(&out)
            .current_dir(workspace_root()),
    )?;
    Ok(out)
}

fn find(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

#[test]
fn the_package_installs_into_a_scratch_root_and_its_files_work() -> Result<()> {
    let lab = standard_lab("pkg")?;
    let scratch = Scratch::new("pkg")?;
    let dist = dist_dir(&scratch)?;
    let deb = find(&dist, ".deb")?;

    let control = run_ok(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Depends"),
    )?;
    ensure!(
        control.trim() == "libc6 (>= 2.34), libgcc-s1",
        "the package depends on more than glibc: {control}"
    );

    // dpkg itself, into an empty root: files unpacked and registered
    // (maintainer scripts would run chrooted into a root without a shell).
    let root = scratch.path("root");
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    std::fs::write(root.join("var/lib/dpkg/available"), "")?;
    run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--log=/dev/null", "--unpack"])
            .arg(&deb),
    )?;
    for file in [
        "usr/bin/vipwatch",
        "lib/systemd/system/vipwatch.service",
        "usr/lib/sysusers.d/vipwatch.conf",
        "usr/share/man/man1/vipwatch.1.gz",
        "usr/share/man/man1/vipwatch-run.1.gz",
        "usr/share/man/man1/vipwatch-backup.1.gz",
    ] {
        ensure!(root.join(file).is_file(), "{file} is not installed");
    }
    // A conffile stays `.dpkg-new` until the package is configured.
    let config = [
        "etc/vipwatch/vipwatch.toml",
        "etc/vipwatch/vipwatch.toml.dpkg-new",
    ]
    .iter()
    .map(|f| root.join(f))
    .find(|p| p.is_file())
    .context("the example configuration is not installed")?;
    let installed = root.join("usr/bin/vipwatch");
    let version = run_ok(Command::new(&installed).arg("--version"))?;
    ensure!(
        version.starts_with("vipwatch 0."),
        "--version says {version:?}"
    );
    // The example configuration checks on a host like the one it describes
    // (the lab's backup: eth0, master 192.0.2.1).
    let out = lab.output(
        "backup",
        &installed,
        ["check".as_ref(), "--config".as_ref(), config.as_os_str()],
        WAIT,
    )?;
    ensure!(
        out.status.success(),
        "check of the shipped example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The installed unit, pointed at the installed binary.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/vipwatch.service"))?
        .replace("/usr/bin/vipwatch", &installed.display().to_string());
    let unit_copy = scratch.path("vipwatch.service");
    std::fs::write(&unit_copy, unit)?;
    run_ok(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_copy),
    )?;
    let man = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man1/vipwatch-backup.1.gz"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    )
    .unwrap_or_default();
    if !man.is_empty() {
        ensure!(man.contains("--dead-after"), "the man page lacks the flags");
    }

    // The tarball has the same tree.
    let tarball = find(&dist, ".tar.gz")?;
    let listing = run_ok(Command::new("tar").arg("-tzf").arg(&tarball))?;
    for file in [
        "./usr/bin/vipwatch",
        "./lib/systemd/system/vipwatch.service",
        "./etc/vipwatch/vipwatch.toml",
        "./usr/share/man/man1/vipwatch.1",
    ] {
        ensure!(
            listing.lines().any(|l| l == file),
            "{file} not in the tarball"
        );
    }
    Ok(())
}

#[test]
fn the_unit_is_valid_and_its_exposure_is_low() -> Result<()> {
    // Verified with the binary the tests run in place of /usr/bin/vipwatch.
    let scratch = Scratch::new("unit")?;
    let unit = std::fs::read_to_string(unit_path())?
        .replace("/usr/bin/vipwatch", &vipwatch_bin()?.display().to_string());
    let path = scratch.path("vipwatch.service");
    std::fs::write(&path, unit)?;
    run_ok(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path),
    )?;
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for ").nth(1))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no exposure level in:\n{text}"))?;
    eprintln!("systemd-analyze security: overall exposure {score}");
    ensure!(
        score <= 3.0,
        "exposure {score} (was 2.2 when written):\n{text}"
    );
    Ok(())
}

/// The unit's `SystemCallFilter=` as the set of system calls it allows.
fn unit_syscalls() -> Result<BTreeSet<String>> {
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for line in unit_values("SystemCallFilter")? {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        for item in list.split_whitespace() {
            let names = expand_syscalls(item)?;
            if deny {
                denied.extend(names);
            } else {
                allowed.extend(names);
            }
        }
    }
    ensure!(!allowed.is_empty(), "the unit has no SystemCallFilter");
    Ok(allowed.difference(&denied).cloned().collect())
}

/// A system call or a `@group`, expanded by `systemd-analyze syscall-filter`.
fn expand_syscalls(item: &str) -> Result<BTreeSet<String>> {
    if !item.starts_with('@') {
        return Ok(BTreeSet::from([item.to_owned()]));
    }
    let text = run_ok(Command::new("systemd-analyze").args(["syscall-filter", item]))?;
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == item {
            continue;
        }
        out.extend(expand_syscalls(line)?);
    }
    Ok(out)
}

/// The processes `pid` started (its direct children).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What an `strace` (pid) traces is killed when the test ends, however it
/// ends: the lab stops strace, and strace's death does not end its tracee.
struct Tracee(u32);

impl Drop for Tracee {
    fn drop(&mut self) {
        for pid in children_of(self.0) {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) takes no pointers; a pid already gone is ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The system calls in an `strace -f` log.
fn traced_syscalls(log: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let call = l.split_once(' ').map_or(l, |(_, rest)| rest).trim_start();
            if call.starts_with("<...") || call.starts_with("+++") || call.starts_with("---") {
                return None;
            }
            let name: String = call
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && call[name.len()..].starts_with('(')).then_some(name)
        })
        .collect())
}

#[test]
fn the_daemon_makes_no_system_call_the_units_filter_forbids() -> Result<()> {
    let lab = standard_lab("scf")?;
    let scratch = Scratch::new("scf")?;
    let allowed = unit_syscalls()?;
    let traced = |host: &str, log: &Path, args: &[&str]| -> Result<(Proc, Tracee)> {
        let mut cmd = lab.command(host, "strace")?;
        cmd.args(["-f", "-qq", "-o"])
            .arg(log)
            .arg(vipwatch_bin()?)
            .args(args);
        let p = lab.spawn_command(format!("strace {host}"), cmd)?;
        let tracee = Tracee(p.pid());
        Ok((p, tracee))
    };
    // Both roles, with everything that makes system calls: hooks, health
    // checks, metrics, the kick, a takeover and a failback.
    let master_log = scratch.path("master.strace");
    let (master, _master_tracee) = traced(
        "master",
        &master_log,
        &[
            "master",
            "--iface",
            "eth0",
            "--vip",
            VIP_CIDR,
            "--health-http",
            "http://127.0.0.1:9477/metrics",
            "--health-interval",
            "50ms",
            "--on-change",
            "echo",
            "--metrics-listen",
            METRICS,
        ],
    )?;
    master.wait_for_line("state -> HOLDING", WAIT)?;
    let backup_log = scratch.path("backup.strace");
    let (backup, _backup_tracee) = traced(
        "backup",
        &backup_log,
        &[
            "backup",
            "--iface",
            "eth0",
            "--master",
            MASTER,
            "--vip",
            VIP_CIDR,
            // strace stops the daemon at every system call and waits for
            // its own turn on the CPU: on a busy 2-core VM the traced loop
            // ran 30 ms late and took over from a live master again and
            // again (a CI run). The calls made do not depend on the pace.
            "--interval",
            "10ms",
            "--dead-after",
            "300ms",
            "--health-tcp",
            METRICS,
            "--health-interval",
            "50ms",
            "--on-change",
            "echo",
            "--metrics-listen",
            METRICS,
        ],
    )?;
    backup.wait_for_line("STARTING -> STANDBY", WAIT)?;
    backup.wait_for_line("our own service is healthy", WAIT)?;
    scrape(&lab, "backup")?;
    scrape(&lab, "master")?;
    status(&lab, "backup")?;
    let cut = Instant::now();
    lab.cut("master")?;
    backup.wait_for_line_after("STANDBY -> ACTIVE", cut, WAIT)?;
    let uncut = Instant::now();
    lab.uncut("master")?;
    backup.wait_for_line_after("ACTIVE -> STANDBY", uncut, WAIT)?;
    // Signals go to vipwatch, strace's child (strace itself would kill it).
    let signal = |p: &Proc, sig: &str| -> Result<()> {
        let pid = children_of(p.pid())
            .into_iter()
            .next()
            .context("strace has no child")?;
        run_ok(Command::new("kill").arg(sig).arg(pid.to_string()))?;
        Ok(())
    };
    signal(&backup, "-HUP")?;
    backup.wait_for_line("SIGHUP", WAIT)?;
    for p in [&backup, &master] {
        signal(p, "-TERM")?;
        ensure!(p.wait(WAIT)?.success(), "{}", p.output());
    }
    for log in [&master_log, &backup_log] {
        let used = traced_syscalls(log)?;
        ensure!(
            used.len() > 20,
            "strace saw too little in {}",
            log.display()
        );
        let forbidden: Vec<&String> = used.difference(&allowed).collect();
        ensure!(
            forbidden.is_empty(),
            "{} used system calls the unit's SystemCallFilter forbids (SIGSYS under systemd): {forbidden:?}",
            log.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Least privilege.

/// `setpriv` arguments: an unprivileged user with the unit's ambient
/// capabilities and no new privileges, as systemd would start it.
fn as_unit_user() -> Result<Vec<String>> {
    let caps: Vec<String> = unit_values("AmbientCapabilities")?
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    ensure!(!caps.is_empty(), "the unit grants no capabilities");
    let caps = caps.join(",");
    Ok(vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        format!("--bounding-set=-all,{caps}"),
    ])
}

#[test]
fn a_non_root_daemon_with_the_units_capabilities_fails_over() -> Result<()> {
    let lab = standard_lab("nonroot")?;
    let scratch = Scratch::new("nonroot")?;
    // A copy any user can run (the build tree may be under /root).
    let bin = scratch.path("vipwatch");
    std::fs::copy(vipwatch_bin()?, &bin)?;
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let setpriv = as_unit_user()?;
    let spawn = |host: &str, args: &[&str]| -> Result<Proc> {
        let mut cmd = lab.command(host, "setpriv")?;
        cmd.args(&setpriv).arg(&bin).args(args);
        lab.spawn_command(format!("{host} (uid 65534)"), cmd)
    };
    let master = spawn("master", &["master", "--iface", "eth0", "--vip", VIP_CIDR])?;
    master
        .wait_for_line("state -> HOLDING", WAIT)
        .with_context(|| master.output())?;
    let backup = spawn(
        "backup",
        &[
            "backup",
            "--iface",
            "eth0",
            "--master",
            MASTER,
            "--vip",
            VIP_CIDR,
            "--on-change",
            "echo promoted",
        ],
    )?;
    backup
        .wait_for_line("STARTING -> STANDBY", WAIT)
        .with_context(|| backup.output())?;
    lab.cut("master")?;
    backup.wait_for_line("-> ACTIVE", WAIT)?;
    ensure!(
        lab.has_address("backup", vip())?,
        "the VIP is not bound on the backup"
    );
    // The hook's output, under the instance's name.
    backup.wait_for_line("on_change hook for ACTIVE: promoted ACTIVE", WAIT)?;
    // Root reads the unprivileged daemon's stats through its control socket.
    let st = stats(&lab, "backup")?;
    ensure!(
        st["state"] == "ACTIVE" && st["takeovers"] == 1,
        "stats: {st}"
    );
    lab.uncut("master")?;
    backup.wait_for_line("ACTIVE -> STANDBY", WAIT)?;
    for p in [&backup, &master] {
        p.signal(Signal::Term)?;
        ensure!(
            p.wait(WAIT)?.success(),
            "{} did not stop cleanly:\n{}",
            p.label(),
            p.output()
        );
    }
    ensure!(!lab.has_address("master", vip())?, "the VIP was left bound");
    Ok(())
}

// ---------------------------------------------------------------------------
// The control socket from anywhere.

#[test]
fn status_stats_and_release_work_from_ip_netns_exec_and_other_mount_namespaces() -> Result<()> {
    let lab = standard_lab("ctl")?;
    // The master started the way most people do it: `ip netns exec`.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.netns_name("master")?])
        .arg(vipwatch_bin()?)
        .args(["master", "--iface", "eth0", "--vip", VIP_CIDR]);
    let master = lab.spawn_command("master (ip netns exec)", cmd)?;
    master.wait_for_line("state -> HOLDING", WAIT)?;
    let backup = start_backup(&lab, &[])?;
    backup.wait_for_line("STARTING -> STANDBY", WAIT)?;

    // From the lab's own setns-only commands (another mount namespace than
    // the master's `ip netns exec` one).
    let m = wait_instance(&lab, "master", "the master holds", |i| {
        i["state"] == "HOLDING"
    })?;
    ensure!(m["role"] == "master" && m["holding"] == true, "{m}");
    ensure!(
        m["peers"][0]["role"] == "backup" && m["peers"][0]["address"] == BACKUP,
        "the master does not name its backup: {m}"
    );
    // `ip netns exec NS vipwatch ...`, and a private mount namespace.
    let netns = |host: &str| -> Result<Command> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", lab.netns_name(host)?])
            .arg(vipwatch_bin()?);
        Ok(c)
    };
    let out = run_ok(netns("backup")?.args(["stats", "--json"]))?;
    let st: Value = serde_json::from_str(out.trim())?;
    ensure!(st["state"] == "STANDBY", "{st}");
    let out = run_ok(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net={}", lab.netns_path("master")?.display()))
            .arg(vipwatch_bin()?)
            .arg("status"),
    )?;
    ensure!(out.contains("(master on eth0): HOLDING"), "{out}");
    let out = run_ok(netns("backup")?.arg("status"))?;
    ensure!(
        out.contains("(backup on eth0): STANDBY") && out.contains("master 192.0.2.1: seen"),
        "{out}"
    );
    // A release on the master is refused with its reason; it keeps holding.
    let out = run(netns("master")?.args(["release", "--iface", "eth0", "--vip", VIP_CIDR]))?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(said.contains("refused"), "{said}");
    ensure!(
        lab.has_address("master", vip())?,
        "release removed the master's VIP"
    );
    ensure!(instance(&lab, "master")?["state"] == "HOLDING");
    // Nothing runs in the client's namespace, and the error says where to look.
    let out = lab.output("client", vipwatch_bin()?, ["status"], WAIT)?;
    ensure!(!out.status.success());
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("ip netns exec"),
        "no hint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Metrics.

/// `GET /metrics` from inside `host`, with a real HTTP client.
fn scrape(lab: &Lab, host: &str) -> Result<String> {
    lab.in_netns(host, || -> Result<String> {
        let mut response = ureq::get(format!("http://{METRICS}/metrics"))
            .call()
            .context("scraping /metrics")?;
        ensure!(response.status() == 200, "status {}", response.status());
        let ctype = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        Ok(response.body_mut().read_to_string()?)
    })?
}

fn promtool(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The value of the sample `name{labels...}` whose labels contain every
/// `k="v"` of `with`.
fn sample(text: &str, name: &str, with: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| with.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_are_scraped_and_valid_for_promtool() -> Result<()> {
    let lab = standard_lab("metrics")?;
    let master = spawn_master(&lab, &["--health-cmd", "true", "--metrics-listen", METRICS])?;
    master.wait_for_line("state -> HOLDING", WAIT)?;
    let backup = start_backup(&lab, &["--metrics-listen", METRICS])?;
    backup.wait_for_line("STARTING -> STANDBY", WAIT)?;
    std::thread::sleep(Duration::from_millis(300));

    let m = scrape(&lab, "master")?;
    promtool(&m)?;
    ensure!(
        sample(&m, "vipwatch_build_info", &["version=\""]) == Some(1.0),
        "{m}"
    );
    ensure!(
        sample(
            &m,
            "vipwatch_instance_state",
            &["role=\"master\"", "state=\"HOLDING\""]
        ) == Some(1.0),
        "{m}"
    );
    ensure!(sample(&m, "vipwatch_vip_held", &[]) == Some(1.0), "{m}");
    ensure!(
        sample(&m, "vipwatch_health_healthy", &[]) == Some(1.0),
        "{m}"
    );
    ensure!(
        sample(&m, "vipwatch_health_checks_total", &["result=\"pass\""]).is_some_and(|v| v >= 1.0),
        "{m}"
    );

    let b = scrape(&lab, "backup")?;
    promtool(&b)?;
    let probes =
        sample(&b, "vipwatch_probes_sent_total", &["peer=\"master\""]).context("probes")?;
    let replies = sample(&b, "vipwatch_replies_total", &["peer=\"master\""]).context("replies")?;
    ensure!(
        probes > 50.0 && replies > 0.9 * probes,
        "probes {probes}, replies {replies}"
    );
    let rtts = sample(&b, "vipwatch_rtt_seconds_count", &["peer=\"master\""]).context("rtt")?;
    ensure!(
        rtts >= 0.9 * replies,
        "the RTT histogram does not count the replies ({rtts} of {replies}):\n{b}"
    );
    ensure!(
        sample(&b, "vipwatch_instance_state", &["state=\"STANDBY\""]) == Some(1.0),
        "{b}"
    );

    lab.cut("master")?;
    backup.wait_for_line("-> ACTIVE", WAIT)?;
    let b = scrape(&lab, "backup")?;
    promtool(&b)?;
    ensure!(
        sample(&b, "vipwatch_takeovers_total", &[]) == Some(1.0),
        "{b}"
    );
    ensure!(sample(&b, "vipwatch_vip_held", &[]) == Some(1.0), "{b}");
    ensure!(
        sample(&b, "vipwatch_takeover_detection_seconds_count", &[]) == Some(1.0),
        "{b}"
    );
    let detected = sample(&b, "vipwatch_takeover_detection_seconds_sum", &[]).context("sum")?;
    ensure!(
        (0.005..0.5).contains(&detected),
        "detection of {detected} s is not plausible"
    );
    ensure!(
        sample(&b, "vipwatch_transitions_total", &["to=\"ACTIVE\""]) == Some(1.0),
        "{b}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Health checks.

/// A self-signed certificate for 127.0.0.1 (not a CA: rustls refuses a CA
/// certificate as a server's), in `dir`: (cert.pem, key.pem).
fn self_signed(dir: &Scratch) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok((cert, key))
}

#[test]
fn https_health_checks_trust_only_what_they_are_told_to() -> Result<()> {
    let lab = standard_lab("tls")?;
    let scratch = Scratch::new("tls")?;
    let (cert, key) = self_signed(&scratch)?;
    let mut server = lab.command("master", "openssl")?;
    server
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            "127.0.0.1:8443",
            "-cert",
        ])
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let _server = lab.spawn_command("openssl s_server", server)?;
    let url = "https://127.0.0.1:8443/";
    wait_until("the TLS server listens", WAIT, || {
        Ok(lab
            .output("master", "ss", ["-Hltn", "sport = :8443"], WAIT)
            .is_ok_and(|o| !o.stdout.is_empty()))
    })?;
    let check = ["--health-http", url, "--health-interval", "50ms"];

    // A certificate nobody told us to trust: unhealthy, and it says why.
    let m = spawn_master(&lab, &check)?;
    m.wait_for_line("state -> UNHEALTHY", WAIT)?;
    let i = wait_instance(&lab, "master", "a failed check is reported", |i| {
        i["health"]["failed"].as_u64().is_some_and(|f| f >= 1)
    })?;
    let why = i["health"]["last_result"].as_str().unwrap_or_default();
    ensure!(
        why.to_lowercase().contains("certificate") || why.contains("UnknownIssuer"),
        "the failure does not name the certificate: {why}"
    );
    ensure!(!lab.has_address("master", vip())?);
    m.stop(WAIT)?;

    // Told to trust that certificate: healthy. Told to trust anything: too.
    for extra in [
        vec!["--health-tls-ca", cert.to_str().context("path")?],
        vec!["--health-insecure"],
    ] {
        let mut args = check.to_vec();
        args.extend(extra.iter().copied());
        let m = spawn_master(&lab, &args)?;
        m.wait_for_line("state -> HOLDING", WAIT)
            .with_context(|| format!("{extra:?}:\n{}", m.output()))?;
        let i = instance(&lab, "master")?;
        ensure!(i["health"]["healthy"] == true, "{i}");
        m.stop(WAIT)?;
    }
    Ok(())
}

#[test]
fn a_tcp_health_check_follows_the_listener() -> Result<()> {
    let lab = standard_lab("tcp")?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = lab.in_netns("master", || TcpListener::bind("127.0.0.1:6379"))??;
    listener.set_nonblocking(true)?;
    let accepting = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => drop(conn.read(&mut [0u8; 1])),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let m = spawn_master(
        &lab,
        &[
            "--health-tcp",
            "127.0.0.1:6379",
            "--health-interval",
            "50ms",
        ],
    )?;
    m.wait_for_line("state -> HOLDING", WAIT)?;
    let i = instance(&lab, "master")?;
    ensure!(
        i["health"]["check"] == "TCP connect 127.0.0.1:6379" && i["health"]["healthy"] == true,
        "{i}"
    );
    // The service goes away: the master steps down.
    stop.store(true, Ordering::Relaxed);
    accepting
        .join()
        .map_err(|_| anyhow::anyhow!("acceptor panicked"))?;
    m.wait_for_line("-> UNHEALTHY", WAIT)?;
    ensure!(!lab.has_address("master", vip())?);
    let i = instance(&lab, "master")?;
    ensure!(
        i["health"]["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("cannot connect")),
        "{i}"
    );
    Ok(())
}

#[test]
fn an_unhealthy_backup_does_not_take_over_and_says_so() -> Result<()> {
    let lab = standard_lab("bhealth")?;
    let scratch = Scratch::new("bhealth")?;
    let flag = scratch.path("service-up");
    let master = spawn_master(&lab, &[])?;
    master.wait_for_line("state -> HOLDING", WAIT)?;
    let cmd = format!("test -e {}", flag.display());
    let backup = start_backup(
        &lab,
        &[
            "--health-cmd",
            &cmd,
            "--health-interval",
            "20ms",
            "--health-fall",
            "1",
            "--health-rise",
            "1",
        ],
    )?;
    backup.wait_for_line("our own service is UNHEALTHY", WAIT)?;
    lab.cut("master")?;
    backup.wait_for_line("TAKEOVER REFUSED", WAIT)?;
    std::thread::sleep(Duration::from_millis(200));
    let st = stats(&lab, "backup")?;
    ensure!(
        st["state"] == "STANDBY" && st["takeovers_refused"] == 1,
        "{st}"
    );
    ensure!(
        !lab.has_address("backup", vip())?,
        "an unhealthy backup bound the VIP"
    );
    let i = instance(&lab, "backup")?;
    ensure!(i["health"]["healthy"] == false, "{i}");
    let b = {
        // No metrics endpoint on this one: status carries it.
        i["health"]["failed"].as_u64().unwrap_or(0)
    };
    ensure!(b >= 1, "{i}");
    // The service comes up: the takeover follows at once.
    std::fs::write(&flag, "")?;
    backup.wait_for_line("-> ACTIVE", WAIT)?;
    ensure!(lab.has_address("backup", vip())?);
    Ok(())
}

// ---------------------------------------------------------------------------
// systemd's notification protocol and logs.

/// A fake `NOTIFY_SOCKET`: what the daemon sends, with arrival times.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn new(dir: &Scratch) -> Result<Self> {
        let path = dir.path("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Self { socket, path })
    }

    /// Messages received within `window`.
    fn collect(&self, window: Duration) -> Vec<(Instant, String)> {
        let until = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                out.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        out
    }

    /// Waits for a message containing `what`.
    fn expect(&self, what: &str) -> Result<String> {
        let until = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m.contains(what) {
                    return Ok(m);
                }
                seen.push(m);
            }
        }
        bail!("no {what:?} from the daemon; got {seen:?}")
    }
}

#[test]
fn readiness_watchdog_reload_and_stop_follow_the_systemd_protocol() -> Result<()> {
    let lab = standard_lab("notify")?;
    let scratch = Scratch::new("notify")?;
    let notify = Notify::new(&scratch)?;
    let master = spawn_master(&lab, &[])?;
    master.wait_for_line("state -> HOLDING", WAIT)?;
    let mut cmd = lab.command("backup", vipwatch_bin()?)?;
    cmd.args([
        "backup", "--iface", "eth0", "--master", MASTER, "--vip", VIP_CIDR,
    ])
    .env("NOTIFY_SOCKET", &notify.path)
    .env("WATCHDOG_USEC", "400000");
    let backup = lab.spawn_command("backup (notify)", cmd)?;
    let ready = notify.expect("READY=1")?;
    ensure!(ready.contains("STATUS=1 instance(s): 1 STANDBY"), "{ready}");
    // READY comes once the instance has its first state, not before.
    backup.wait_for_line("STARTING -> STANDBY", WAIT)?;

    // The watchdog: at least every 200 ms (half of WatchdogSec).
    let pings: Vec<Instant> = notify
        .collect(Duration::from_secs(1))
        .into_iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| t)
        .collect();
    ensure!(pings.len() >= 4, "{} WATCHDOG=1 in 1 s", pings.len());
    // A stopped process (a hung loop) stops feeding it: systemd restarts it.
    backup.signal(Signal::Stop)?;
    let frozen = notify.collect(Duration::from_millis(800));
    backup.signal(Signal::Cont)?;
    ensure!(
        !frozen.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "the watchdog was fed while the daemon was stopped: {frozen:?}"
    );
    notify.expect("WATCHDOG=1")?;

    // Reload: announced, and READY again; the daemon keeps running.
    backup.signal(Signal::Hup)?;
    notify.expect("RELOADING=1")?;
    notify.expect("READY=1")?;
    ensure!(backup.is_running(), "SIGHUP stopped the daemon");
    ensure!(stats(&lab, "backup")?["state"] == "STANDBY");

    backup.signal(Signal::Term)?;
    notify.expect("STOPPING=1")?;
    ensure!(backup.wait(WAIT)?.success());
    Ok(())
}

#[test]
fn logs_carry_journald_priorities_or_json() -> Result<()> {
    let lab = standard_lab("logs")?;
    // Under systemd, JOURNAL_STREAM names stderr: `<N>` priority prefixes.
    let mut cmd = lab.command("master", "sh")?;
    cmd.arg("-c")
        .arg(
            "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" master --iface eth0 \
             --vip 192.0.2.100/24 --health-cmd false --health-interval 20ms",
        )
        .arg(vipwatch_bin()?);
    let journal = lab.spawn_command("master (journal)", cmd)?;
    journal.wait_for_line("<6>", WAIT)?;
    let warning = journal
        .wait_for(None, WAIT, |l| {
            l.starts_with("<4>") && l.contains("UNHEALTHY")
        })
        .with_context(|| journal.output())?;
    ensure!(
        !warning.text.contains("Z "),
        "journald lines carry no timestamp: {}",
        warning.text
    );
    journal.stop(WAIT)?;

    let json = spawn_master(&lab, &["--log-format", "json"])?;
    json.wait_for_line("HOLDING", WAIT)?;
    json.stop(WAIT)?;
    let lines = json.lines();
    ensure!(!lines.is_empty());
    for l in lines.iter().filter(|l| !l.text.trim().is_empty()) {
        let v: Value = serde_json::from_str(&l.text)
            .with_context(|| format!("not a JSON line: {}", l.text))?;
        ensure!(
            v["ts"].is_string()
                && v["level"].is_string()
                && v["priority"].is_u64()
                && v["msg"].is_string(),
            "{v}"
        );
    }
    ensure!(
        lines
            .iter()
            .any(|l| l.text.contains("\"msg\":\"192.0.2.100: state -> HOLDING")),
        "{}",
        json.output()
    );
    Ok(())
}
