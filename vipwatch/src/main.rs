//! vipwatch: parse the command line, set up logging, dispatch.

use clap::Parser as _;
use vipwatch::{
    cli::{Cli, Command},
    config, daemon, release, stats, status,
};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One clear line, not clap's usage block: the first line of its
            // rendering names the bad argument and the reason.
            let rendered = e.render().to_string();
            eprintln!(
                "{}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("error: bad arguments; see --help")
            );
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    let bad_arguments = |message: String| -> ! {
        eprintln!("error: {message}");
        std::process::exit(2);
    };
    let result = match cli.command {
        Command::Backup(a) => match a.instance() {
            Ok(i) => daemon::run(daemon::Source::Flags(Box::new(i))),
            Err(e) => bad_arguments(e),
        },
        Command::Master(a) => match a.instance() {
            Ok(i) => daemon::run(daemon::Source::Flags(Box::new(i))),
            Err(e) => bad_arguments(e),
        },
        Command::Run(a) => daemon::run(daemon::Source::File(a.config)),
        Command::Check(a) => daemon::check(a.config),
        Command::Release(a) => match config::check_iface(&a.iface) {
            Ok(()) => release::run(a),
            Err(e) => bad_arguments(format!("--iface: {e}")),
        },
        Command::Stats(a) => match a.iface.as_deref().map(config::check_iface) {
            Some(Err(e)) => bad_arguments(format!("--iface: {e}")),
            _ => stats::run(a),
        },
        Command::Status(a) => status::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
