//! What a package ships about the command line, made from the parser's own
//! definitions so that it cannot drift from them: shell completions
//! (`fulcrum completions SHELL`) and man pages (`fulcrum manpages DIR`, for
//! packaging).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

/// Arguments of `fulcrum completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

/// Prints the completion script for `args.shell`.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "fulcrum", &mut script);
    super::print_all(&String::from_utf8_lossy(&script))
}

/// Arguments of `fulcrum manpages`.
#[derive(Args)]
pub struct ManpagesArgs {
    /// The directory to write `fulcrum.1` and one page per verb into.
    pub dir: PathBuf,
}

/// Writes the man pages into `args.dir`.
pub fn manpages(args: &ManpagesArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("writing man pages into {}", args.dir.display()))
}
