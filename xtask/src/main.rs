//! Developer tasks for vipwatch, run as `cargo xtask <command>` (the alias is
//! in `.cargo/config.toml`), in the shape of aya's and bpfman's xtasks: one
//! module per subcommand, and a shared `prerequisites` module that installs
//! what building the XDP object needs before any command that builds.
//!
//! `main` only parses the command line and dispatches.

mod bench;
mod build;
mod clippy;
mod demo;
mod dist;
mod interrupt;
mod prerequisites;
mod run;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test vipwatch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install missing prerequisites, then build the vipwatch binary
    /// (with its embedded XDP object).
    Build(build::Options),
    /// Build, then exec vipwatch (as root) with the arguments after `--`.
    Run(run::Options),
    /// Build, then run the unit tests and the privileged end-to-end tests.
    Test(test::Options),
    /// Run clippy on every crate and target, with warnings as errors.
    Clippy,
    /// Build, then play a failover on a lab of network namespaces:
    /// cable pull, takeover, failback, and a cut-off backup.
    Demo,
    /// Build (release), then measure failover and print a Markdown report.
    Bench(bench::Options),
    /// Build (release), then the .deb package and the tarball, with the
    /// systemd unit, an example configuration and the manual pages.
    Dist(dist::Options),
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Build(options) => build::build(options).map(|_| ()),
        Command::Run(options) => run::run(options),
        Command::Test(options) => test::test(options),
        Command::Clippy => clippy::clippy(),
        Command::Demo => demo::demo(),
        Command::Bench(options) => bench::bench(options),
        Command::Dist(options) => dist::dist(options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain without anyhow's backtrace: these errors are for the
            // user (what failed, what to do), not for debugging xtask.
            eprintln!("{} error: {error}", util::TAG);
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
