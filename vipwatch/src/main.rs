//! vipwatch: parse the command line, set up logging, dispatch.

use clap::Parser as _;
use vipwatch::{
    cli::{self, Cli, Command},
    config, daemon, logging, release, stats, status,
};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One clear line, not clap's usage block.
            eprintln!("{}", cli::error_line(&e.render().to_string()));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    logging::init(cli.log_format);
    let bad_arguments = |message: String| -> ! {
        eprintln!("error: {message}");
        std::process::exit(2);
    };
    let result = match cli.command {
        Command::Backup(a) => match a.instance() {
            Ok(i) => daemon::run(daemon::Source::Flags(Box::new(i)), &a.daemon),
            Err(e) => bad_arguments(e),
        },
        Command::Master(a) => match a.instance() {
            Ok(i) => daemon::run(daemon::Source::Flags(Box::new(i)), &a.daemon),
            Err(e) => bad_arguments(e),
        },
        Command::Run(a) => daemon::run(daemon::Source::File(a.config), &a.daemon),
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
        Command::Manpages { dir } => cli::write_manpages(&dir),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
