//! The counters report: per VIP and per backend, the share the table
//! promises next to the share of new flows observed over the detector's
//! window, the imbalance flags, packets, bytes and flows since the maps
//! were created, plus the global verdict counters. `status` prints it as
//! text or JSON, `top` draws it, `/metrics` exports it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
};

use lb_common::maps::{FLOW_WAYS, QuicCounters, QuicOutcome, Reason, TrafficCounters};
use serde::{Deserialize, Serialize};

use super::{Changes, LastChange, View, describe_change, outlier::Detector, window::Window};
use crate::{
    announce::AnnounceReport,
    config::QuicConfig,
    dataplane::{
        counters::Counters,
        flows::{Census, WayState},
        system::PinSurvival,
    },
    group::GroupReport,
    health::{Health, Key},
    policy::health::{Down, VipHealth},
};

/// What health checks know, for a report.
pub struct Healths<'a> {
    /// Every checked backend's health.
    pub states: &'a HashMap<Key, Health>,
    /// The panic policy's verdicts per VIP.
    pub verdicts: &'a [VipHealth],
    /// Health-driven changes per VIP endpoint.
    pub changes: &'a BTreeMap<String, Changes>,
    /// The backends ejected as outliers.
    pub ejected: &'a BTreeSet<Down>,
    /// The backends ramping up, with the fraction of their weight they take.
    pub ramped: &'a BTreeMap<Down, f64>,
}

/// Counters of the whole data plane.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Report {
    /// Whether the kernel has the program attached to the interface.
    #[serde(default)]
    pub attached: bool,
    /// The XDP mode the kernel runs it in (`native`, `generic`), when
    /// attached.
    #[serde(default)]
    pub xdp_mode: Option<String>,
    /// The generation in force.
    #[serde(default)]
    pub generation: u64,
    /// The detector's window, in seconds.
    #[serde(default)]
    pub window_s: u64,
    /// The intervals the outlier detector has judged since the daemon
    /// started.
    #[serde(default)]
    pub outlier_intervals: u64,
    /// Per VIP.
    pub vips: Vec<VipReport>,
    /// Global per-reason counters by name.
    pub reasons: BTreeMap<String, u64>,
    /// The connection table's size and fill.
    #[serde(default)]
    pub connections: ConnectionsReport,
    /// The group this host is in and its seed's fingerprint.
    #[serde(default)]
    pub group: Option<GroupReport>,
    /// What is announced to the routers, when announcing is configured.
    #[serde(default)]
    pub announce: Option<AnnounceReport>,
    /// Whether the pinned data plane outlives the daemon.
    #[serde(default)]
    pub pin_survival: Option<PinSurvival>,
}

/// The connection table: its capacity and how its ways are used, estimated
/// from a sample of its sets (all of them in a table of up to
/// `CENSUS_SETS` sets).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ConnectionsReport {
    /// Flows it can hold (ways).
    pub capacity: u64,
    /// Ways by state (`flows::WayState` names), scaled to the whole table.
    pub ways: BTreeMap<String, u64>,
    /// Ways holding a flow that is not idle past its timeout, over the
    /// capacity.
    pub fill: f64,
    /// Sets the estimate read.
    pub sampled_sets: u32,
}

impl ConnectionsReport {
    /// The report of a census of `census.total()` ways from a table of
    /// `sets` sets.
    pub fn of(census: &Census, sets: u32) -> Self {
        let capacity = u64::from(sets) * FLOW_WAYS as u64;
        let sampled = census.total().max(1);
        let scale = |n: u64| (n as f64 * capacity as f64 / sampled as f64).round() as u64;
        let live = [WayState::Established, WayState::Unproven, WayState::Closing]
            .iter()
            .map(|&s| census.count(s))
            .sum::<u64>();
        Self {
            capacity,
            ways: WayState::ALL
                .iter()
                .map(|&s| (s.name().to_string(), scale(census.count(s))))
                .collect(),
            fill: live as f64 / sampled as f64,
            sampled_sets: (census.total() / FLOW_WAYS as u64) as u32,
        }
    }
}

/// What the clients' side of TCP flows says of a backend (or a VIP's
/// backends together), as counted in the kernel since the data plane was
/// loaded.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct HandshakeCounts {
    /// Flows recorded from their SYN: handshakes attempted.
    pub syns: u64,
    /// SYNs sent again to the backend of an unanswered flow.
    pub syn_retries: u64,
    /// Handshakes the client completed (its second packet).
    pub completed: u64,
    /// Handshaken flows the client reset within 2 s.
    pub early_resets: u64,
}

impl From<&TrafficCounters> for HandshakeCounts {
    fn from(counters: &TrafficCounters) -> Self {
        Self {
            syns: counters.syns,
            syn_retries: counters.syn_retries,
            completed: counters.handshakes,
            early_resets: counters.early_resets,
        }
    }
}

/// Counters of one VIP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct VipReport {
    /// Label.
    pub name: String,
    /// `address:port/protocol`.
    #[serde(default)]
    pub endpoint: String,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows assigned.
    pub new_flows: u64,
    /// Packets it refused in XDP, by reason (`denied`, `not_allowed`,
    /// `source_limit`, `flow_limit`, `packet_limit`).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Packets each of its deny rules dropped, by prefix (rules that
    /// dropped nothing are left out).
    #[serde(default)]
    pub rule_drops: BTreeMap<String, u64>,
    /// Its backends' handshakes together.
    #[serde(default)]
    pub handshakes: HandshakeCounts,
    /// The outlier detector's last verdict on it (absent before its first
    /// interval).
    #[serde(default)]
    pub outliers: Option<String>,
    /// New flows per second over the window.
    #[serde(default)]
    pub flow_rate: f64,
    /// The largest observed ÷ expected share of its backends over the
    /// window (0 without new flows).
    #[serde(default)]
    pub imbalance_ratio: f64,
    /// The apply that last changed it.
    #[serde(default)]
    pub last_change: Option<LastChange>,
    /// The panic policy's verdict: healthy backends, panic, and how far
    /// it is from panic.
    #[serde(default)]
    pub health: Option<VipHealthReport>,
    /// The installed table's digest: equal on every host of a group.
    #[serde(default)]
    pub table_digest: String,
    /// Whether its address is announced (`None`: announcing is off).
    #[serde(default)]
    pub announced: Option<bool>,
    /// Its QUIC routing, on a QUIC VIP.
    #[serde(default)]
    pub quic: Option<QuicReport>,
    /// Per backend.
    pub backends: Vec<BackendReport>,
}

/// A QUIC VIP's routing by connection ID, as `status` shows it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct QuicReport {
    /// The config rotation codepoint its servers' CIDs carry.
    pub config_id: u8,
    /// Where the server ID starts in the CID, in octets.
    pub server_id_offset: u8,
    /// The server ID's length in octets.
    pub server_id_len: u8,
    /// Its UDP packets by outcome: `routed` by their server ID, or the
    /// reason they went by the 4-tuple (`QuicOutcome`'s names).
    pub packets: BTreeMap<String, u64>,
}

impl QuicReport {
    /// The report of `quic` with its packets `counters`.
    fn of(quic: &QuicConfig, counters: &QuicCounters) -> Self {
        Self {
            config_id: quic.config_id,
            server_id_offset: quic.server_id_offset,
            server_id_len: quic.server_id_len,
            packets: QuicOutcome::ALL
                .iter()
                .map(|&o| (o.name().to_string(), counters.packets[o as usize]))
                .collect(),
        }
    }

    /// `status`'s line: the layout, then where its packets went.
    fn line(&self) -> String {
        let routed = self.packets.get(QuicOutcome::Routed.name()).copied();
        let fallbacks: Vec<String> = self
            .packets
            .iter()
            .filter(|&(outcome, &n)| n > 0 && outcome != QuicOutcome::Routed.name())
            .map(|(outcome, n)| format!("{outcome} {n}"))
            .collect();
        format!(
            "quic: server IDs of {} octets at offset {}, config {}; {} packets routed by \
             server ID, by the 4-tuple: {}",
            self.server_id_len,
            self.server_id_offset,
            self.config_id,
            routed.unwrap_or(0),
            if fallbacks.is_empty() {
                "none".to_string()
            } else {
                fallbacks.join(", ")
            }
        )
    }
}

/// A VIP's health, as `status` shows it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct VipHealthReport {
    /// In panic: every backend kept in the table (fail open).
    pub panic: bool,
    /// Backends with a positive weight.
    pub backends: usize,
    /// Of those, the healthy ones.
    pub healthy: usize,
    /// How many more healthy backends could fail, heaviest first, before
    /// panic.
    pub failures_to_panic: usize,
    /// The healthy share of the weight below which it panics.
    pub panic_threshold: f64,
    /// The fewest healthy backends before it panics.
    pub min_backends: u32,
    /// Health-driven table changes, applied and held back by damping.
    pub changes: Changes,
    /// While its backends are not all judged since the daemon started
    /// (its table does not change for health meanwhile), why.
    #[serde(default)]
    pub settling: Option<String>,
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
    /// Share of the VIP's new flows over the window (0..1; 0 without any).
    pub observed_share: f64,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows assigned.
    pub new_flows: u64,
    /// Its handshakes.
    #[serde(default)]
    pub handshakes: HandshakeCounts,
    /// Its handshakes completed per attempt over the outlier detector's
    /// last interval (absent without attempts).
    #[serde(default)]
    pub handshake_success: Option<f64>,
    /// The median of its judged peers' over the same interval, when it
    /// was judged.
    #[serde(default)]
    pub peers_success: Option<f64>,
    /// Judged an outlier in the last interval.
    #[serde(default)]
    pub outlier: bool,
    /// Ejected as an outlier: out of the table for new flows, its
    /// established flows kept.
    #[serde(default)]
    pub ejected: bool,
    /// Ramping up after it joined the table (slow start): the fraction of
    /// its weight it takes now.
    #[serde(default)]
    pub slow_start: Option<f64>,
    /// Held out of the table: no MAC could be found for it.
    #[serde(default)]
    pub held_out: bool,
    /// Flagged by the imbalance detector.
    #[serde(default)]
    pub imbalanced: bool,
    /// How long it has been above the factor, in seconds, if it is now.
    #[serde(default)]
    pub skewed_for_s: Option<u64>,
    /// `up`, `down` (checks fail; out of the table unless the VIP is in
    /// panic) or `unchecked`.
    #[serde(default)]
    pub health: String,
    /// Out of the table because its checks fail.
    #[serde(default)]
    pub taken_down: bool,
    /// Flows on it now, estimated from the connection table (sent a packet
    /// in the last minute, not closed by the client); `status` only.
    #[serde(default)]
    pub active_flows: Option<u64>,
    /// The last check's latency, in milliseconds.
    #[serde(default)]
    pub check_ms: Option<f64>,
    /// The moving average of check latencies, in milliseconds.
    #[serde(default)]
    pub check_avg_ms: Option<f64>,
    /// Why the last check failed.
    #[serde(default)]
    pub check_error: Option<String>,
    /// Its QUIC server ID in hex, on a QUIC VIP.
    #[serde(default)]
    pub server_id: Option<String>,
}

impl Report {
    /// The report of `view` with `counters` and the window's judgements.
    pub fn build(
        view: &View,
        (counters, connections): (&Counters, ConnectionsReport),
        (window, outliers): (&Window, &Detector),
        attached: bool,
        healths: &Healths<'_>,
        active: Option<&HashMap<(u32, u32), u64>>,
    ) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        // The deny rules that dropped packets, by VIP: one pass over them
        // all (thousands), not one per VIP.
        let mut rule_drops: HashMap<u32, BTreeMap<String, u64>> = HashMap::new();
        for rule in &view.rules {
            if let Some(&count) = counters.rules.get(rule.slot as usize)
                && count > 0
            {
                rule_drops
                    .entry(rule.vip_id)
                    .or_default()
                    .insert(rule.prefix.to_string(), count);
            }
        }
        let vips = view
            .vips
            .iter()
            .map(|vip| {
                let totals = counters.vip(vip.vip_id);
                let judged = window.vip(vip.vip_id);
                VipReport {
                    name: vip.name.clone(),
                    endpoint: vip.endpoint.clone(),
                    packets: totals.packets,
                    bytes: totals.bytes,
                    new_flows: totals.new_flows,
                    refused: {
                        let refused = counters.refused(vip.vip_id);
                        lb_common::maps::AdmissionDrop::ALL
                            .into_iter()
                            .map(|drop| (drop.name().to_string(), refused.drops[drop as usize]))
                            .collect()
                    },
                    rule_drops: rule_drops.remove(&vip.vip_id).unwrap_or_default(),
                    handshakes: HandshakeCounts::from(&totals),
                    outliers: outliers.vip(vip.vip_id).map(ToString::to_string),
                    flow_rate: judged.flow_rate,
                    imbalance_ratio: judged.imbalance_ratio,
                    last_change: vip.last_change.clone(),
                    table_digest: vip.table_digest.clone(),
                    announced: None,
                    quic: vip
                        .quic
                        .as_ref()
                        .map(|quic| QuicReport::of(quic, &counters.quic(vip.vip_id))),
                    health: healths
                        .verdicts
                        .iter()
                        .find(|v| v.endpoint == vip.endpoint)
                        .map(|v| VipHealthReport {
                            panic: v.panic,
                            backends: v.backends,
                            healthy: v.healthy,
                            failures_to_panic: v.failures_to_panic,
                            panic_threshold: v.panic_threshold,
                            min_backends: v.min_backends,
                            changes: healths
                                .changes
                                .get(&vip.endpoint)
                                .cloned()
                                .unwrap_or_default(),
                            settling: v.settling.clone(),
                        }),
                    backends: vip
                        .backends
                        .iter()
                        .map(|b| {
                            let c = counters.backend(b.backend_id);
                            let judged = window.backend(vip.vip_id, b.backend_id);
                            let found = outliers.backend(vip.vip_id, b.backend_id);
                            let health = healths.states.get(&Key {
                                vip: vip.endpoint.clone(),
                                backend: b.socket,
                            });
                            BackendReport {
                                name: b.name.clone(),
                                address: b.address.clone(),
                                weight: b.weight,
                                expected_share: b.expected_share,
                                observed_share: judged.observed_share,
                                packets: c.packets,
                                bytes: c.bytes,
                                new_flows: c.new_flows,
                                handshakes: HandshakeCounts::from(&c),
                                handshake_success: found.handshakes.success(),
                                peers_success: found.peers,
                                outlier: found.outlier,
                                ejected: healths
                                    .ejected
                                    .contains(&(vip.endpoint.clone(), b.socket)),
                                slow_start: healths
                                    .ramped
                                    .get(&(vip.endpoint.clone(), b.socket))
                                    .copied(),
                                held_out: b.held_out,
                                imbalanced: judged.imbalanced,
                                skewed_for_s: judged.skewed_for.map(|d| d.as_secs()),
                                health: match health {
                                    Some(h) if h.up => "up",
                                    Some(_) => "down",
                                    None => "unchecked",
                                }
                                .into(),
                                taken_down: b.down,
                                active_flows: active.map(|a| {
                                    a.get(&(vip.vip_id, b.backend_id)).copied().unwrap_or(0)
                                }),
                                check_ms: health.and_then(|h| h.last_latency).map(ms),
                                check_avg_ms: health.and_then(|h| h.latency_avg).map(ms),
                                check_error: health.and_then(|h| h.last_error.clone()),
                                server_id: b.server_id.clone(),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let reasons = Reason::ALL
            .iter()
            .map(|&r| (r.name().to_string(), counters.reason(r)))
            .collect();
        Self {
            attached,
            generation: view.generation,
            window_s: window.settings().window_s,
            outlier_intervals: outliers.judged(),
            vips,
            reasons,
            connections,
            group: None,
            announce: None,
            pin_survival: None,
            xdp_mode: None,
        }
    }

    /// The report with the host's group and what it announces.
    pub fn with_group(
        mut self,
        group: Option<GroupReport>,
        announce: Option<AnnounceReport>,
    ) -> Self {
        if let Some(announce) = &announce {
            for vip in &mut self.vips {
                vip.announced = Some(announce.announced(&vip.endpoint));
            }
        }
        self.group = group;
        self.announce = announce;
        self
    }

    /// Every flagged backend, as `(vip, backend)`.
    pub fn imbalanced(&self) -> impl Iterator<Item = (&VipReport, &BackendReport)> {
        self.vips.iter().flat_map(|v| {
            v.backends
                .iter()
                .filter(|b| b.imbalanced)
                .map(move |b| (v, b))
        })
    }

    /// A table for people; flagged backends first, as a headline.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(pins) = self.pin_survival.as_ref().filter(|p| !p.survives) {
            let _ = writeln!(
                out,
                "WARNING the data plane dies with the daemon: {}",
                pins.why
            );
        }
        for (vip, b) in self.imbalanced() {
            let _ = writeln!(
                out,
                "IMBALANCE: VIP {} backend {} takes {:.1}% of new flows against {:.1}% expected \
                 ({:.2}x) for {} s; last change: {}",
                vip.name,
                b.name,
                b.observed_share * 100.0,
                b.expected_share * 100.0,
                b.observed_share / b.expected_share.max(f64::MIN_POSITIVE),
                b.skewed_for_s.unwrap_or(0),
                describe_change(vip.last_change.as_ref()),
            );
        }
        for vip in &self.vips {
            if let Some(why) = vip.health.as_ref().and_then(|h| h.settling.as_ref()) {
                let _ = writeln!(out, "SETTLING: VIP {}: {why}", vip.name);
            }
        }
        for vip in self
            .vips
            .iter()
            .filter(|v| v.health.as_ref().is_some_and(|h| h.panic))
        {
            let h = vip.health.as_ref().expect("filtered");
            let _ = writeln!(
                out,
                "PANIC: VIP {}: only {} of {} backends pass their health checks; all are kept \
                 in the table (fail open)",
                vip.name, h.healthy, h.backends
            );
        }
        if let Some(announce) = &self.announce {
            if let Some(error) = &announce.error {
                let _ = writeln!(
                    out,
                    "ANNOUNCE FAILING: BIRD did not take the last change of the routes \
                     ({} failures): {error}",
                    announce.failures
                );
            }
            for vip in announce.vips.iter().filter(|v| !v.ready) {
                let _ = writeln!(out, "NOT ANNOUNCED: VIP {}: {}", vip.name, vip.why);
            }
        }
        if let Some(group) = &self.group {
            let _ = writeln!(
                out,
                "group {}, flow hash seed fingerprint {}; compare hosts' tables with \
                 `fulcrum compare`",
                group.name.as_deref().unwrap_or("(none)"),
                group.seed_fingerprint
            );
        }
        for vip in &self.vips {
            let health = vip.health.as_ref().map_or_else(String::new, |h| {
                let state = if h.panic {
                    "PANIC".to_string()
                } else {
                    format!("{} more failures to panic", h.failures_to_panic)
                };
                format!(
                    "; healthy {}/{} ({state}; {} health changes, {} damped)",
                    h.healthy, h.backends, h.changes.applied, h.changes.damped
                )
            });
            let _ = writeln!(
                out,
                "VIP {} ({}): {} flows, {} packets, {} bytes; {:.1} new flows/s, imbalance {:.2} \
                 over {} s{health}; table {}{}",
                vip.name,
                vip.endpoint,
                vip.new_flows,
                vip.packets,
                vip.bytes,
                vip.flow_rate,
                vip.imbalance_ratio,
                self.window_s,
                vip.table_digest,
                match vip.announced {
                    Some(true) => ", announced",
                    Some(false) => ", NOT announced",
                    None => "",
                }
            );
            if vip.refused.values().any(|&n| n > 0) {
                let counts: Vec<String> = vip
                    .refused
                    .iter()
                    .map(|(reason, n)| format!("{reason} {n}"))
                    .collect();
                let mut rules: Vec<(&String, &u64)> = vip.rule_drops.iter().collect();
                rules.sort_by(|a, b| b.1.cmp(a.1));
                let top: Vec<String> = rules
                    .iter()
                    .take(3)
                    .map(|(prefix, n)| format!("{prefix} {n}"))
                    .collect();
                let top = if top.is_empty() {
                    String::new()
                } else {
                    format!("; most by deny rules {}", top.join(", "))
                };
                let _ = writeln!(out, "  refused in XDP: {} packets{top}", counts.join(", "));
            }
            if let Some(quic) = &vip.quic {
                let _ = writeln!(out, "  {}", quic.line());
            }
            if let Some(verdict) = vip
                .outliers
                .as_ref()
                .filter(|_| vip.endpoint.ends_with("/tcp"))
            {
                let _ = writeln!(out, "  outliers: {verdict}");
            }
            let _ = writeln!(
                out,
                "  {:<12} {:<24} {:>6} {:>9} {:>9} {:>10} {:>12} {:>10} {:>7} {:>14}",
                "backend",
                "address",
                "weight",
                "expected",
                "observed",
                "packets",
                "bytes",
                "flows",
                "active",
                "health"
            );
            for b in &vip.backends {
                let mark = match (b.held_out, b.imbalanced, b.taken_down) {
                    (true, _, _) => "  (no MAC: held out of the table)".to_string(),
                    (false, _, true) => format!(
                        "  DOWN, out of the table: {}",
                        b.check_error.as_deref().unwrap_or("checks fail")
                    ),
                    (false, true, false) => "  IMBALANCED".into(),
                    (false, false, false) => String::new(),
                };
                let success = |rate: Option<f64>| {
                    rate.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
                };
                let mark = match (b.ejected, b.outlier) {
                    (true, _) => format!(
                        "{mark}  EJECTED (outlier): out of the table for new flows; \
                         handshake success {}",
                        success(b.handshake_success)
                    ),
                    (false, true) => format!(
                        "{mark}  OUTLIER: handshake success {} against {} for its peers",
                        success(b.handshake_success),
                        success(b.peers_success)
                    ),
                    (false, false) => mark,
                };
                let mark = match b.slow_start {
                    Some(part) => format!(
                        "{mark}  RAMPING (slow start): {:.0}% of its weight",
                        part * 100.0
                    ),
                    None => mark,
                };
                let mark = match &b.server_id {
                    Some(id) => format!("{mark}  server ID {id}"),
                    None => mark,
                };
                let health = match b.check_ms {
                    Some(ms) => format!("{} {ms:.0}ms", b.health),
                    None => b.health.clone(),
                };
                let _ = writeln!(
                    out,
                    "  {:<12} {:<24} {:>6} {:>8.1}% {:>8.1}% {:>10} {:>12} {:>10} {:>7} {:>14}{mark}",
                    b.name,
                    b.address,
                    b.weight,
                    b.expected_share * 100.0,
                    b.observed_share * 100.0,
                    b.packets,
                    b.bytes,
                    b.new_flows,
                    b.active_flows
                        .map_or_else(|| "-".to_string(), |n| n.to_string()),
                    health,
                );
            }
        }
        let c = &self.connections;
        let _ = writeln!(
            out,
            "connection table: {:.1}% full of {} ways ({})",
            c.fill * 100.0,
            c.capacity,
            c.ways
                .iter()
                .map(|(state, n)| format!("{state} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
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
