//! Types and pure logic shared by the XDP program and the `fulcrum` controller:
//! the layout of every BPF map key and value, the counter indexes, and the flow
//! hash. Anything both sides must agree on bit for bit lives here, once.
#![cfg_attr(not(test), no_std)]

pub mod flow_hash;
pub mod maps;
