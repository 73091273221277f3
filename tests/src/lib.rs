//! Helpers for Fulcrum's kernel tests and lab: frame builders, a loaded
//! program fixture for BPF_PROG_TEST_RUN, and (for end-to-end runs) network
//! namespaces with real traffic.

pub mod api;
pub mod fixture;
pub mod flood;
pub mod group_lab;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod quic;
pub mod scrape;
pub mod scratch;
pub mod spoof;
pub mod status;
pub mod traffic;
pub mod wait;
