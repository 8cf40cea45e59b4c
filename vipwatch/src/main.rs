//! vipwatch: parse the command line, set up logging, dispatch.

use clap::Parser as _;
use vipwatch::{
    backup,
    cli::{self, Cli, Command},
    master, release, stats,
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
    let validated = match &cli.command {
        Command::Backup(a) => cli::validate_backup(a),
        Command::Master(a) => cli::validate_master(a),
        Command::Release(a) => cli::validate_iface(&a.iface),
        Command::Stats(a) => a.iface.as_deref().map_or(Ok(()), cli::validate_iface),
    };
    if let Err(e) = validated {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let result = match cli.command {
        Command::Backup(a) => backup::run(a),
        Command::Master(a) => master::run(a),
        Command::Release(a) => release::run(a),
        Command::Stats(a) => stats::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
