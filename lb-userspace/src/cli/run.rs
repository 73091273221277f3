//! `fulcrum run`: the controller daemon. It adopts the data plane pinned
//! for the interface if there is one (checking that the kernel holds what
//! the installed record says), else loads, pins and attaches a new one
//! (in the XDP mode `--xdp-mode` asks). Either way the config file goes through the
//! change gate. Then it serves the admin API; API changes, SIGHUP and edits
//! of the file all go through the same gate, one at a time. SIGUSR1 prints
//! the counters; SIGINT/SIGTERM exit and leave the data plane forwarding,
//! unless `--detach-on-exit`. The daemon itself lives in `daemon::life`;
//! this verb reads its arguments.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::OutputFormat;
use crate::{
    daemon::{
        journal, life,
        records::{self, RecordDir},
        start::Options,
    },
    dataplane::{
        XdpChoice,
        pins::{self, PinDir},
    },
};

/// Arguments of `fulcrum run`.
#[derive(Args)]
pub struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The interface to attach to; overrides `interface` in the config.
    #[arg(long, short)]
    pub interface: Option<String>,
    /// How counters are printed (JSON: one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub stats_format: OutputFormat,
    /// Detach the data plane and remove its pins on SIGINT/SIGTERM, instead
    /// of leaving it forwarding.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Accept a config that loosens the guards in force, or moves more than
    /// they allow (each override is recorded).
    #[arg(long)]
    pub force: bool,
    /// The metrics address (`ADDRESS:PORT`); overrides `[api].metrics`.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,

    /// The admin API's Unix socket; overrides `[api].socket`.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The apply journal (JSON lines).
    #[arg(long, default_value = journal::DEFAULT_PATH)]
    pub journal: PathBuf,
    /// Where the pins and installed records are.
    #[command(flatten)]
    pub places: Places,
    /// The XDP mode to attach in: `native` (in the driver; an error where
    /// the driver lacks it), `generic` (any interface, slower), or `auto`
    /// (native where the driver has it, else generic). A data plane that
    /// is already attached keeps its mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
}

/// `--xdp-mode`.
#[derive(Clone, Copy, ValueEnum)]
pub enum XdpModeArg {
    /// Native where the driver has it, else generic.
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

impl From<XdpModeArg> for XdpChoice {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Auto => XdpChoice::Auto,
            XdpModeArg::Native => XdpChoice::Native,
            XdpModeArg::Generic => XdpChoice::Generic,
        }
    }
}

/// Where the data plane's pins and installed records live.
#[derive(Args, Clone)]
pub struct Places {
    /// The bpffs directory under which each interface's data plane is pinned.
    #[arg(long, default_value = pins::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
    /// The directory under which each interface's installed records live.
    #[arg(long, default_value = records::DEFAULT_ROOT)]
    pub state_root: PathBuf,
}

impl Places {
    /// The pin and record directories of `interface`.
    pub fn of(&self, interface: &str) -> (PinDir, RecordDir) {
        (
            PinDir::new(&self.pin_root, interface),
            RecordDir::new(&self.state_root, interface),
        )
    }
}

/// Runs the controller until a signal (or `fulcrum detach`) stops it.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    life::run(Options {
        config: args.config,
        interface: args.interface,
        json_stats: matches!(args.stats_format, OutputFormat::Json),
        detach_on_exit: args.detach_on_exit,
        force: args.force,
        metrics: args.metrics,
        socket: args.socket,
        journal: args.journal,
        pin_root: args.places.pin_root,
        state_root: args.places.state_root,
        xdp_mode: args.xdp_mode.into(),
    })
}
