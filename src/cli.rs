//! The command line: `bursar serve`, `bursar check-config`, `bursar verify-state`,
//! `bursar hash-key`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, IoDriverChoice};
use crate::runtime::Gateway;

#[derive(Parser)]
#[command(
    name = "bursar",
    version,
    about = "An LLM gateway that keeps the books"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (on the built-in default when no --config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override [server].listen.
        #[arg(long)]
        listen: Option<String>,
        /// Override [server].admin_listen ("off" disables it).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Override [server].workers.
        #[arg(long)]
        workers: Option<usize>,
        /// Override [server].io_driver: auto, io_uring or legacy.
        #[arg(long)]
        io_driver: Option<String>,
        /// Override [server].state_dir (the books, the request log).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 when valid), like `nginx -t`.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a state directory offline (changing nothing): what a start
    /// would repair, and whether it would refuse. Exit 0 when a start keeps
    /// every durable charge, 1 when it would refuse, 2 on a usage error.
    VerifyState {
        /// The gateway's config: its state_dir, workers and request log.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The state directory (overrides the config's).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Print the SHA-256 of a virtual key, for `key_sha256` in the config.
    HashKey { key: String },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    crate::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            workers,
            io_driver,
            state_dir,
        } => {
            // First: a panic on any thread from here on ends the process
            // (decision 0008).
            crate::runtime::abort_on_panic();
            let loaded = match &config {
                Some(path) => Config::load(path),
                None => Ok(Config::builtin_default()),
            };
            let mut cfg = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bursar: invalid configuration: {e}");
                    return 2;
                }
            };
            if let Some(dir) = state_dir {
                cfg.server.state_dir = dir;
            }
            if let Err(e) = apply_overrides(&mut cfg, listen, admin_listen, workers, io_driver) {
                eprintln!("bursar: {e}");
                return 2;
            }
            if config.is_none() {
                log::info!(
                    "no --config given: serving the built-in default (mock provider, key {})",
                    crate::config::DEMO_KEY
                );
            }
            // The handlers go in before anything listens: a SIGHUP sent
            // once the port answers must reload, not be lost (ignored, when
            // the parent ignores it) or end the process (the default).
            let served = crate::runtime::signals()
                .map_err(anyhow::Error::from)
                .and_then(|signals| {
                    Gateway::start(cfg).and_then(|g| g.run_until_signalled(signals))
                });
            match served {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("bursar: {e:#}");
                    1
                }
            }
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                // The semantic cache's directory is part of the config: a
                // gateway that could not load it would not start.
                if let Err(e) = crate::catalog::load_semantic_models(&c) {
                    eprintln!("{}: invalid: cache.embedding_dir: {e}", config.display());
                    return 1;
                }
                if let Err(e) = crate::books::registry::check_cluster_budgets(&c) {
                    eprintln!("{}: invalid: {e}", config.display());
                    return 1;
                }
                println!(
                    "{}: ok ({} providers, {} virtual keys, {} workers)",
                    config.display(),
                    c.providers.len(),
                    c.keys.len(),
                    c.server.workers
                );
                0
            }
            Err(e) => {
                eprintln!("{}: invalid: {e}", config.display());
                1
            }
        },
        Command::VerifyState { config, state_dir } => verify_state(config, state_dir),
        Command::HashKey { key } => {
            println!("{}", hex::encode(crate::config::hash_key(&key)));
            0
        }
    }
}

fn verify_state(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> i32 {
    let cfg = match &config {
        Some(path) => match Config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("bursar: invalid configuration: {e}");
                return 2;
            }
        },
        None => None,
    };
    let Some(state_dir) = state_dir.or_else(|| cfg.as_ref().map(|c| c.server.state_dir.clone()))
    else {
        eprintln!("bursar verify-state: give --state-dir or --config");
        return 2;
    };
    let books = cfg
        .as_ref()
        .map(crate::books::thread::BooksConfig::from_config);
    let state = books.map(|b| b.ledger.state).unwrap_or(
        // Without a config, any worker id a journal or ring holds is accepted.
        crate::ledger::state::StateConfig {
            workers: crate::ledger::messages::LEDGER_WORKERS_MAX,
            ..Default::default()
        },
    );
    let sqlite_log = match cfg.as_ref().and_then(|c| c.log.as_ref()) {
        Some(log) if !matches!(log.sink, crate::reqlog::SinkKind::Sqlite) => None,
        _ => Some(state_dir.join(crate::reqlog::LOG_SQLITE_FILE)),
    };
    let report = crate::verify::verify(&crate::verify::VerifyConfig {
        state_dir: state_dir.clone(),
        state,
        sqlite_log,
        config: cfg,
    });
    println!("bursar verify-state: {}", state_dir.display());
    print!("{report}");
    i32::from(report.refuses())
}

fn apply_overrides(
    cfg: &mut Config,
    listen: Option<String>,
    admin_listen: Option<String>,
    workers: Option<usize>,
    io_driver: Option<String>,
) -> anyhow::Result<()> {
    if let Some(l) = listen {
        cfg.server.listen = l
            .parse()
            .map_err(|_| anyhow::anyhow!("--listen {l:?} is not an address"))?;
    }
    if let Some(a) = admin_listen {
        cfg.server.admin_listen = if a == "off" {
            None
        } else {
            Some(
                a.parse()
                    .map_err(|_| anyhow::anyhow!("--admin-listen {a:?} is not an address"))?,
            )
        };
    }
    if let Some(w) = workers {
        anyhow::ensure!(
            (1..=crate::limits::WORKERS_MAX).contains(&w),
            "--workers must be 1 to {}",
            crate::limits::WORKERS_MAX
        );
        cfg.server.workers = w;
    }
    if let Some(d) = io_driver {
        cfg.server.io_driver = match d.as_str() {
            "auto" => IoDriverChoice::Auto,
            "io_uring" | "iouring" => IoDriverChoice::IoUring,
            "legacy" | "epoll" => IoDriverChoice::Legacy,
            other => anyhow::bail!("--io-driver {other:?}: use auto, io_uring or legacy"),
        };
    }
    Ok(())
}
