//! The `warren` command: parse arguments, load the config, call the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren::config::Config;

/// EX_USAGE: the config (or the command line) is wrong.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "AMQP-aware TCP load balancer for RabbitMQ clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the load balancer.
    Run {
        /// Config file (YAML).
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config with every default.
    Check {
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("warren: config error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => match load(&config) {
            Ok(c) => {
                print!("{}", c.to_yaml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run { config: path } => {
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            warren::logging::init(&config.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("warren: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let server = match warren::Server::bind(config, path).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start");
                        return ExitCode::FAILURE;
                    }
                };
                warren::shutdown::watch_signals(server.app.clone());
                server.run().await;
                tracing::info!("warren stopped");
                ExitCode::SUCCESS
            })
        }
    }
}
