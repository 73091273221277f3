//! The command line: one file per subcommand, all returning `anyhow` errors
//! that `main` prints as one line before exiting with status 1.

pub mod apply;
pub mod backend;
pub mod client;
pub mod compare;
pub mod decap;
pub mod detach;
pub mod explain;
pub mod manual;
pub mod pcap;
pub mod plan;
pub mod run;
pub mod status;
pub mod tables;
pub mod top;
pub mod trace;
pub mod validate;
pub mod watch;

use std::path::Path;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    policy::validate::{Validation, validate_keeping},
    table::VipTable,
};

/// The exit status for `error`: `EXIT_CONFIG` when a start was refused
/// for its config, else 1.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error
        .chain()
        .any(|cause| cause.is::<crate::daemon::start::ConfigRefused>())
    {
        crate::daemon::start::EXIT_CONFIG
    } else {
        1
    }
}

/// How results are printed.
#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For machines.
    Json,
}

/// What the verbs that talk to the daemon share (a macro, so that
/// `concat!` can build the long help from it).
macro_rules! daemon_verbs {
    () => {
        "Verbs that talk to the daemon take --socket PATH (default /run/fulcrum/api.sock; \
         for apply and plan, their config's [api] socket), --timeout SECONDS (how long to \
         wait for its answer; default 10) and --format text|json."
    };
}

/// `--help` and the man page, after the options: what an operator looks
/// up in a man page.
const LONG_HELP: &str = concat!(
    daemon_verbs!(),
    "

Exit status: 0 done; 1 failed, refused, or no daemon answered; 2 a usage error; 78 \
`fulcrum run` refused for its config (the systemd unit does not restart it).

Signals to `fulcrum run`: SIGHUP applies the config file through the gate; SIGUSR1 prints \
the counters; SIGINT and SIGTERM exit and leave the data plane forwarding.

Files: /etc/fulcrum/fulcrum.toml (the config); /run/fulcrum/api.sock (the admin API, \
root's); /var/lib/fulcrum/journal.jsonl (every change and why); \
/var/lib/fulcrum/flow-hash-seed (the flow hash seed, unless the config sets one); \
/sys/fs/bpf/fulcrum/IFACE (the pinned data plane); /run/fulcrum/IFACE (what each table \
bank holds).

See also: /usr/share/doc/fulcrum/README.md and the book in /usr/share/doc/fulcrum/book \
(operations, monitoring, troubleshooting, runbook)."
);

/// Fulcrum: an XDP layer-4 load balancer.
#[derive(Parser)]
#[command(
    name = "fulcrum",
    version = crate::VERSION.as_str(),
    about,
    after_help = daemon_verbs!(),
    after_long_help = LONG_HELP
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the controller: adopt or load the pinned data plane and apply the config.
    Run(run::RunArgs),
    /// Detach the data plane and remove its pins (through the daemon, or
    /// directly with --interface).
    Detach(detach::DetachArgs),
    /// Show what the daemon has installed, with counters.
    Status(status::StatusArgs),
    /// A live view of the daemon's counters, rates and shares (q quits).
    Top(top::TopArgs),
    /// Apply a whole config through the daemon's gate.
    Apply(apply::ApplyArgs),
    /// Add, remove, drain or reweight one backend through the daemon's gate.
    Backend(backend::BackendArgs),
    /// Which backend a flow goes to, and why.
    Explain(explain::ExplainArgs),
    /// Watch the data plane decide, packet by packet (Ctrl-C stops).
    Trace(trace::TraceArgs),
    /// Check a config file and report every problem in it.
    Validate(validate::ValidateArgs),
    /// Show what applying a config would change, and whether the guards allow it.
    Plan(plan::PlanArgs),
    /// Every VIP's lookup table (from the daemon, a config or a dump), with
    /// digests and the seed's fingerprint.
    Tables(tables::TablesArgs),
    /// Whether two hosts of a group send every flow to the same backend,
    /// or where they differ.
    Compare(compare::CompareArgs),
    /// On a backend: decapsulate what a load balancer with forwarding =
    /// "ipip" or "gue" sends it (attach, detach, status).
    Decap(decap::DecapArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish,
    /// elvish, powershell).
    Completions(manual::CompletionsArgs),
    /// Write the man pages into DIR (for packaging).
    #[command(hide = true)]
    Manpages(manual::ManpagesArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::run(args),
            Command::Detach(args) => detach::run(args),
            Command::Status(args) => status::run(args),
            Command::Top(args) => top::run(args),
            Command::Apply(args) => apply::run(args),
            Command::Backend(args) => backend::run(args),
            Command::Explain(args) => explain::run(args),
            Command::Trace(args) => trace::run(args),
            Command::Validate(args) => validate::run(args),
            Command::Plan(args) => plan::run(args),
            Command::Tables(args) => tables::run(args),
            Command::Compare(args) => compare::run(args),
            Command::Decap(args) => decap::run(args),
            Command::Completions(args) => manual::completions(&args),
            Command::Manpages(args) => manual::manpages(&args),
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends the
/// output quietly instead of a panic in `print!`.
pub fn print_all(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Reads and validates a config file. A file that cannot be read (or
/// holds more than a config may) is one more problem of the outcome, so
/// every outcome can be reported the same way (JSON consumers always get
/// a document).
pub fn load_config(path: &Path) -> Validation {
    load_config_keeping(path, |table| table)
}

/// `load_config`, keeping of each VIP's table only what `keep` takes from
/// it (see `validate_keeping`).
pub fn load_config_keeping<T: Send>(
    path: &Path,
    keep: impl Fn(VipTable) -> T + Sync,
) -> Validation<T> {
    match crate::config::read_file(path) {
        Ok(text) => validate_keeping(&text, keep),
        Err(why) => Validation {
            config: None,
            problems: vec![why.problem(path.display().to_string())],
            tables: Vec::new(),
        },
    }
}
