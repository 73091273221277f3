//! The `fulcrum` controller as a library: config, the lookup-table builder,
//! and the data-plane handle that loads the XDP program and fills its maps.
//! The binary and the tests are thin layers over this.

/// Prints one `fulcrum: ...` line on stderr. A closed or broken stderr is
/// ignored: the controller keeps serving (where `eprintln!` would panic).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "fulcrum: {}", format_args!($($arg)*));
    }};
}

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod durable;
pub mod gate;
pub mod host;
pub mod installed;
pub mod lookup_table;
pub mod maglev;
pub mod plan;
pub mod problem;
pub mod report;
pub mod state;
pub mod validate;
pub mod vip_index;

/// The compiled XDP program, built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
