//! `lmgate`: parse the command line, load the config, build the server, run it.

use clap::Parser;
use lmgate::cli::Cli;
use lmgate::config::Config;
use lmgate::lifecycle::Signals;
use pingora::server::RunArgs;

fn main() {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli.config, std::env::vars()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("lmgate: config error: {e}");
            std::process::exit(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(cfg.log_level)
        .parse_default_env() // RUST_LOG wins when set
        .init();
    let server = match lmgate::server::build(&cfg, cli.pingora) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lmgate: {e}");
            std::process::exit(2);
        }
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    std::process::exit(0);
}
