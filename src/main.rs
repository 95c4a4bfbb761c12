//! The `warren` command: parse arguments, load the config, call the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use warren::bootstrap;
use warren::config::Config;
use warren::control::reload::Checked;
use warren::operate;

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
    /// Put a node into maintenance (`on`: safety checks, paced drain through the
    /// running warren, `rabbitmq-upgrade drain`) or take it out (`off`: revive,
    /// wait for its checks, slow start). Talks to the warren of the config's `admin.listen`.
    #[command(after_help = OPERATE_HELP)]
    Maintenance {
        #[arg(value_enum)]
        op: OnOff,
        /// The backend's name (`backends[].name`, listed in `operations.nodes`).
        node: String,
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
    },
    /// Restart every node of `operations.nodes` in turn: maintenance on, its
    /// `restart` command, maintenance off (waits for its checks), then the next.
    #[command(after_help = OPERATE_HELP)]
    RollingRestart {
        #[arg(short, long, default_value = "/etc/warren/warren.yaml")]
        config: PathBuf,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

const OPERATE_HELP: &str = "Exit codes: 0 done, 64 config error, 65 refused (the node is \
quorum- or mirror-sync-critical, or an operation on it is running; nothing changed), 69 \
warren's admin API does not answer or has no such backend, 70 a step failed (the output \
says what state the node is in). See docs/operations.md.";

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
        Cmd::Maintenance { op, node, config } => {
            let config = match load(&config) {
                Ok(c) => c.config,
                Err(code) => return code,
            };
            run_operation(|| async move {
                let on = matches!(op, OnOff::On);
                println!(
                    "warren maintenance {}: {node}",
                    if on { "on" } else { "off" }
                );
                let mut print = |s: &operate::Step| print_step(&s.step, s.seconds, &s.detail);
                match operate::maintenance(&config, &node, on, &mut print).await {
                    Ok(()) => {
                        println!("done");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("warren maintenance: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            })
        }
        Cmd::RollingRestart { config, dry_run } => {
            let config = match load(&config) {
                Ok(c) => c.config,
                Err(code) => return code,
            };
            let plan = match operate::rolling::plan(&config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("warren rolling-restart: config error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if dry_run {
                for (i, (backend, node, restart)) in plan.iter().enumerate() {
                    println!("[{}/{}] {backend} ({node}):", i + 1, plan.len());
                    println!(
                        "    maintenance on   safety checks, paced drain, rabbitmq-upgrade drain"
                    );
                    println!("    restart          sh -c {restart:?}");
                    println!("    maintenance off  rabbitmq-upgrade revive, wait for the checks, slow start");
                }
                println!("dry run: nothing was changed");
                return ExitCode::SUCCESS;
            }
            run_operation(|| async move {
                let started = std::time::Instant::now();
                let mut print = |e: operate::rolling::Event<'_>| match e {
                    operate::rolling::Event::Node(i, n, backend, node) => {
                        println!("[{i}/{n}] {backend} ({node})")
                    }
                    operate::rolling::Event::Step(s) => print_step(&s.step, s.seconds, &s.detail),
                    operate::rolling::Event::Local(step, secs, detail) => {
                        print_step(step, secs, detail)
                    }
                    operate::rolling::Event::Waiting(why) => println!("    waiting: {why}"),
                };
                match operate::rolling::run(&config, &mut print).await {
                    Ok(()) => {
                        println!(
                            "rolling restart done in {:.1}s",
                            started.elapsed().as_secs_f64()
                        );
                        ExitCode::SUCCESS
                    }
                    Err((backend, state, e)) => {
                        eprintln!("warren rolling-restart: stopped at {backend}: {e}; {backend} is {state}; the nodes after it were not touched");
                        ExitCode::from(e.exit_code())
                    }
                }
            })
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

fn print_step(step: &str, seconds: f64, detail: &str) {
    println!("    {step:<26} {seconds:>7.1}s  {detail}");
}

/// Runs `f` on a runtime of its own.
fn run_operation<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f()),
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            ExitCode::FAILURE
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
