//! The counters report: per VIP and per backend, the share the table
//! promises next to the share the kernel observed, with packets, bytes and
//! flows, plus the global verdict counters. Printed as text or JSON.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::state::DesiredState,
    dataplane::{Dataplane, DataplaneError},
};

/// Counters of the whole data plane.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Report {
    /// Per VIP.
    pub vips: Vec<VipReport>,
    /// Global per-reason counters by name.
    pub reasons: BTreeMap<String, u64>,
}

/// Counters of one VIP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct VipReport {
    /// Label.
    pub name: String,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows assigned.
    pub new_flows: u64,
    /// Per backend.
    pub backends: Vec<BackendReport>,
}

/// Counters of one backend.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BackendReport {
    /// Label.
    pub name: String,
    /// Address and port.
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// Share of the lookup table (0..1).
    pub expected_share: f64,
    /// Share of the VIP's new flows it received (0..1; 0 before any flow).
    pub observed_share: f64,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows assigned.
    pub new_flows: u64,
    /// Held out of the table: no MAC could be found for it.
    #[serde(default)]
    pub held_out: bool,
}

impl Report {
    /// Reads every counter of `state`'s VIPs and backends.
    pub fn collect(dataplane: &Dataplane, state: &DesiredState) -> Result<Self, DataplaneError> {
        let mut vips = Vec::with_capacity(state.vips.len());
        for vip in &state.vips {
            let totals = dataplane.vip_counters(vip.vip_id)?;
            let mut backends = Vec::with_capacity(vip.backends.len());
            for (index, backend) in vip.backends.iter().enumerate() {
                let counters = dataplane.backend_counters(backend.backend_id)?;
                backends.push(BackendReport {
                    name: backend.label.clone(),
                    address: backend.addr.to_string(),
                    weight: backend.weight,
                    expected_share: vip.expected_share(index),
                    observed_share: if totals.new_flows == 0 {
                        0.0
                    } else {
                        counters.new_flows as f64 / totals.new_flows as f64
                    },
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                    held_out: backend.mac.0 == [0; 6],
                });
            }
            vips.push(VipReport {
                name: vip.label.clone(),
                packets: totals.packets,
                bytes: totals.bytes,
                new_flows: totals.new_flows,
                backends,
            });
        }
        let reasons = dataplane
            .reason_counters()?
            .into_iter()
            .map(|(reason, count)| (reason.name().to_string(), count))
            .collect();
        Ok(Self { vips, reasons })
    }

    /// A table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for vip in &self.vips {
            let _ = writeln!(
                out,
                "VIP {}: {} flows, {} packets, {} bytes",
                vip.name, vip.new_flows, vip.packets, vip.bytes
            );
            let _ = writeln!(
                out,
                "  {:<12} {:<24} {:>6} {:>9} {:>9} {:>10} {:>12} {:>10}",
                "backend", "address", "weight", "expected", "observed", "packets", "bytes", "flows"
            );
            for b in &vip.backends {
                let _ = writeln!(
                    out,
                    "  {:<12} {:<24} {:>6} {:>8.1}% {:>8.1}% {:>10} {:>12} {:>10}{}",
                    b.name,
                    b.address,
                    b.weight,
                    b.expected_share * 100.0,
                    b.observed_share * 100.0,
                    b.packets,
                    b.bytes,
                    b.new_flows,
                    if b.held_out {
                        "  (no MAC: held out of the table)"
                    } else {
                        ""
                    }
                );
            }
        }
        let _ = writeln!(out, "verdicts: {}", self.nonzero_reasons());
        out
    }

    /// The reason counters that moved, as `name=count` words.
    pub fn nonzero_reasons(&self) -> String {
        self.reasons
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
