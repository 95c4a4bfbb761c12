//! The `warren` command: parse arguments, load the config, call the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use warren::bootstrap;
use warren::config::Config;
use warren::control::reload::Checked;

/// EX_USAGE: the config (or the command line) is wrong.
const EXIT_CONFIG: u8 = 64;

/// `warren --version`: the crate version and the git revision it was built from
/// (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("WARREN_GIT_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "warren",
    version = VERSION,
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
    /// Errors exit 64; warnings (settings that contradict each other) are printed
    /// to standard error.
    Check {
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
        /// Exit 64 on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Exit 0 when the running warren's admin API answers GET /healthz with 200,
    /// else 1. For container HEALTHCHECKs: needs no curl or shell in the image.
    Healthcheck {
        /// Config file whose `admin.listen` is probed.
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
        /// Probe this address instead of the config's `admin.listen`.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Path to ask for (`/readyz` checks for a usable backend too).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Time the whole probe may take.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Form the RabbitMQ cluster and apply the policies of the config's `cluster:` section.
    #[command(after_help = BOOTSTRAP_HELP)]
    Bootstrap {
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long, conflicts_with = "check")]
        dry_run: bool,
        /// Verify that the cluster matches the config; exit 1 with the differences when not.
        #[arg(long)]
        check: bool,
        /// Allow `rabbitmqctl reset`, which deletes a node's data, on a node that is in another cluster.
        #[arg(long)]
        force_reset: bool,
    },
    /// Print a shell completion script, e.g.
    /// `warren completions bash > /etc/bash_completion.d/warren`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `warren man | man -l -`.
    Man {
        /// Write warren.1 and a page per subcommand (warren-run.1, ...) into this
        /// directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

const BOOTSTRAP_HELP: &str = "Exit codes: 0 done or nothing to change (--check: matches), \
1 --check found differences, 64 config error, 65 refused (node in another cluster without \
--force-reset, ha-* policy on RabbitMQ 4.x, management URL of another node), 69 a node is not \
reachable (nothing changed), 70 a change failed (no node left stopped), 77 Erlang cookie or \
management credentials rejected, 130 interrupted. See docs/bootstrap.md.";

/// The config at `path`, or the exit code of a config error (printed).
/// The caller reports the warnings: printed by `check`, logged by `run`.
fn load(path: &Path) -> Result<Checked, ExitCode> {
    warren::control::reload::load(path).map_err(|e| {
        eprintln!("warren: config error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn print_warnings(checked: &Checked) {
    for w in &checked.warnings {
        eprintln!("warren: config warning: {w}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "warren", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { out_dir } => {
            let written = match &out_dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
                // As generate_to does: no page for the `help` subcommand, so none
                // named in the list either.
                None => clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
                    .render(&mut std::io::stdout()),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("warren: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Healthcheck {
            config,
            admin,
            path,
            timeout,
        } => {
            // Only `admin.listen` is needed: the files the config names are not
            // read (a certificate mid-rotation must not fail a running warren's check).
            let addr = match admin {
                Some(a) => a,
                None => match Config::load(&config).map_err(|e| {
                    eprintln!("warren: config error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }) {
                    Ok(c) => c.admin.listen,
                    Err(code) => return code,
                },
            };
            match warren::healthcheck(addr, &path, timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("warren: unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bootstrap {
            config,
            dry_run,
            check,
            force_reset,
        } => {
            let mode = match (dry_run, check) {
                (true, _) => bootstrap::Mode::DryRun,
                (_, true) => bootstrap::Mode::Check,
                _ => bootstrap::Mode::Apply,
            };
            run_bootstrap(&config, bootstrap::Options { mode, force_reset })
        }
        Cmd::Check { config, strict } => match load(&config) {
            Ok(c) => {
                print_warnings(&c);
                print!("{}", c.config.to_yaml());
                if strict && !c.warnings.is_empty() {
                    return ExitCode::from(EXIT_CONFIG);
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run { config: path } => {
            let Checked { config, warnings } = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            warren::telemetry::logging::init(&config.log);
            for w in &warnings {
                tracing::warn!("config warning: {w}");
            }
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
                warren::control::shutdown::watch_signals(server.app.clone());
                warren::control::reload::watch_sighup(server.app.clone());
                server.run().await;
                tracing::info!("warren stopped");
                ExitCode::SUCCESS
            })
        }
    }
}

/// Prints each bootstrap step as one line: `label    subject: message`.
struct Printer;

impl bootstrap::Report for Printer {
    fn step(&mut self, tag: bootstrap::Tag, subject: &str, message: &str) {
        println!("{:<8} {subject}: {message}", tag.label());
    }
}

fn run_bootstrap(path: &Path, opts: bootstrap::Options) -> ExitCode {
    let config = match load(path) {
        Ok(c) => {
            print_warnings(&c);
            c.config
        }
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // SIGINT/SIGTERM end the run between two steps, never while a node's app
        // is stopped.
        let interrupt = CancellationToken::new();
        let token = interrupt.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            token.cancel();
        });
        let file = path.display();
        let what = match opts.mode {
            bootstrap::Mode::Apply => "bootstrap",
            bootstrap::Mode::DryRun => "bootstrap --dry-run",
            bootstrap::Mode::Check => "bootstrap --check",
        };
        println!("warren {what}: {file}");
        match bootstrap::run(&config, path, opts, &interrupt, &mut Printer).await {
            Ok(o) => match opts.mode {
                bootstrap::Mode::Apply if o.changes == 0 => {
                    println!("no change: the cluster already matches {file}");
                    ExitCode::SUCCESS
                }
                bootstrap::Mode::Apply => {
                    println!("{} change(s) made: the cluster now matches {file}", o.changes);
                    ExitCode::SUCCESS
                }
                bootstrap::Mode::DryRun if o.planned == 0 => {
                    println!("dry run: nothing would change");
                    ExitCode::SUCCESS
                }
                bootstrap::Mode::DryRun => {
                    println!("dry run: {} change(s) planned, nothing was changed", o.planned);
                    ExitCode::SUCCESS
                }
                bootstrap::Mode::Check if o.differences == 0 => {
                    println!("check: the cluster matches {file}");
                    ExitCode::SUCCESS
                }
                bootstrap::Mode::Check => {
                    println!("check: {} difference(s) from {file}", o.differences);
                    ExitCode::from(bootstrap::exit::DIFFERENCES)
                }
            },
            Err(f) => {
                let changed = match f.changes {
                    0 => "nothing was changed".to_string(),
                    n => format!("{n} change(s) were made before it"),
                };
                eprintln!("warren bootstrap: {} ({changed})", f.error);
                ExitCode::from(f.error.exit_code())
            }
        }
    })
}
