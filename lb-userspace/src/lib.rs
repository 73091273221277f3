//! The `fulcrum` controller as a library, in the order a change travels:
//! `table` (how a VIP's lookup table is built) and `config` (what the
//! operator wrote), `policy` (validation and the plan that judges a change
//! by the guards in force), `dataplane` (the state the kernel maps hold, and
//! the handle that loads, pins, fills and reads them), `health` (the active
//! checks of every backend, and what they found), `monitor` (the
//! counters as reports, the imbalance detector, the metrics), `daemon` (the gate
//! every change goes through, its records and journal, the admin API), and
//! `cli`. Each layer imports only the ones before it. The binary and the
//! tests are thin layers over this.

/// Prints one `fulcrum: ...` line on stderr. A closed or broken stderr is
/// ignored: the controller keeps serving (where `eprintln!` would panic).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "fulcrum: {}", format_args!($($arg)*));
    }};
}

pub mod announce;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod durable;
pub mod errors;
pub mod group;
pub mod health;
pub mod monitor;
pub mod net;
pub mod parallel;
pub mod policy;
pub mod problem;
pub mod splitmix;
pub mod table;

/// What `--version` prints: the version, the commit it was built from, and
/// the map layout, which decides whether a running data plane is adopted
/// by this build (same layout) or must be detached first.
pub static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (commit {}, map layout {})",
        env!("CARGO_PKG_VERSION"),
        env!("FULCRUM_GIT_COMMIT"),
        lb_common::maps::LAYOUT_VERSION
    )
});

/// The compiled XDP program, built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The compiled decapsulation program for backends (`fulcrum decap`).
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fulcrum-decap"));
