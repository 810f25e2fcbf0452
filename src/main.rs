//! `lmgate`: parse the command line, then run the gateway or a subcommand.

use clap::Parser;
use lmgate::Config;
use lmgate::{Cli, Command};
use pingora::server::RunArgs;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        None => {}
        Some(Command::Check) => return lmgate::check(&cli.config, std::env::vars(), &mut std::io::stdout()),
        Some(Command::Healthcheck { url, timeout }) => {
            return lmgate::healthcheck(&cli.config, url.as_deref(), Duration::from_secs(*timeout))
        }
        Some(Command::HashKey) => return lmgate::hash_key(&mut std::io::stdin(), &mut std::io::stdout()),
        Some(Command::Report(args)) => return lmgate::run_report(args, &cli.config),
        Some(Command::Keys(args)) => return lmgate::run_keys(args, &cli.config),
        Some(Command::Clickhouse(lmgate::ClickhouseCommand::Schema)) => {
            return lmgate::clickhouse_schema(&mut std::io::stdout())
        }
    }
    let cfg = match Config::load(&cli.config, std::env::vars()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("lmgate: config error: {e}");
            return ExitCode::from(2);
        }
    };
    lmgate::init_logging(cfg.log_level); // RUST_LOG wins when set; keys are redacted
    for var in &cfg.ignored_env {
        log::warn!(
            "environment variable {var} ignored: {}",
            lmgate::IGNORED_ENV_REASON
        );
    }
    let (server, signals) = match lmgate::build_server(&cfg, cli.pingora) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lmgate: {e}");
            return ExitCode::from(2);
        }
    };
    // After the checks above, so a start-up failure stays a one-line message.
    match lmgate::raise_open_file_limit() {
        Ok((before, after)) if before != after => {
            log::info!("open file limit raised from {before} to {after}")
        }
        Ok((_, after)) => log::info!("open file limit {after}"),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    ExitCode::SUCCESS
}
