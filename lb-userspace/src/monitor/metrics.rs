//! The Prometheus exposition: a report and the controller's facts encoded
//! as OpenMetrics text by `prometheus-client`, through collectors made for
//! each scrape (the values are read fresh each time, so nothing is
//! registered twice or kept between scrapes). With 100,000 backends the
//! text is tens of megabytes, so its families are encoded in parts, one per
//! core, and joined. Every name and label is listed in docs/monitoring.md.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric as _,
        text::{encode_eof, encode_registry},
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{
    Facts, WATCH_RESULTS,
    report::{BackendReport, HandshakeCounts, Report, VipHealthReport, VipReport},
};
use crate::{parallel, policy::Outcome};
use lb_common::maps::Reason;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Encoded = Result<(), std::fmt::Error>;

/// One metric family: its name (without the prefix, and for counters
/// without `_total`), help and type.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
}

impl Family<'_> {
    fn encode<L, V>(
        &self,
        encoder: &mut DescriptorEncoder,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> Encoded
    where
        L: EncodeLabelSet,
        V: EncodeCounterValue + EncodeGaugeValue + std::fmt::Debug,
    {
        let mut family = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, value) in samples {
            let metric = family.encode_family(&labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(value).encode(metric)?,
                _ => ConstGauge::new(value).encode(metric)?,
            }
        }
        Ok(())
    }
}

const fn counter<'a>(name: &'a str, help: &'a str) -> Family<'a> {
    Family {
        name,
        help,
        kind: MetricType::Counter,
    }
}

const fn gauge<'a>(name: &'a str, help: &'a str) -> Family<'a> {
    Family {
        name,
        help,
        kind: MetricType::Gauge,
    }
}

/// Reads one handshake counter.
type HandshakeField = fn(&HandshakeCounts) -> u64;

/// The handshake counter families of `scope` (`vip` or `backend`), whose
/// help ends with `whose`: each handed to `encode` with the field it reads.
fn handshake_counters(
    scope: &str,
    whose: &str,
    mut encode: impl FnMut(&Family<'_>, HandshakeField) -> Encoded,
) -> Encoded {
    let families: [(&str, &str, HandshakeField); 4] = [
        (
            "syns",
            "TCP flows recorded from their SYN (handshakes attempted) to",
            |h| h.syns,
        ),
        ("syn_retries", "SYNs sent again, unanswered, to", |h| {
            h.syn_retries
        }),
        ("handshakes", "Handshakes the clients completed with", |h| {
            h.completed
        }),
        (
            "early_resets",
            "Handshaken flows the client reset within 2 s, to",
            |h| h.early_resets,
        ),
    ];
    for (name, help, read) in families {
        let (name, help) = (format!("{scope}_{name}"), format!("{help} {whose}."));
        encode(&counter(&name, &help), read)?;
    }
    Ok(())
}

/// The label set of a family without labels.
const NO_LABELS: [(&str, &str); 0] = [];

fn flag(on: bool) -> u64 {
    u64::from(on)
}

/// A share to six decimals: what a dashboard shows, in half the text.
fn share(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

#[derive(Debug)]
struct Scrape {
    report: Report,
    facts: Facts,
}

/// The parts the exposition is encoded in, in order; each is a run of
/// whole families.
#[derive(Clone, Copy, Debug)]
enum Part {
    /// VIPs, global counters and the controller's facts.
    Summary,
    /// Backend info and packets.
    BackendInfo,
    /// Backend bytes and new flows.
    BackendTraffic,
    /// Expected and observed shares.
    BackendShares,
    /// Imbalance flags.
    BackendFlags,
}

const PARTS: [Part; 5] = [
    Part::Summary,
    Part::BackendInfo,
    Part::BackendTraffic,
    Part::BackendShares,
    Part::BackendFlags,
];

impl Scrape {
    fn per_vip<V>(
        &self,
        value: impl Fn(&VipReport) -> V,
    ) -> impl Iterator<Item = ([(&'static str, &str); 1], V)> {
        self.report
            .vips
            .iter()
            .map(move |v| ([("vip", v.name.as_str())], value(v)))
    }

    fn pairs(&self) -> impl Iterator<Item = (&VipReport, &BackendReport)> {
        self.report
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
    }

    fn per_backend<V>(
        &self,
        value: impl Fn(&BackendReport) -> V,
    ) -> impl Iterator<Item = ([(&'static str, &str); 2], V)> {
        self.pairs().map(move |(v, b)| {
            (
                [("vip", v.name.as_str()), ("backend", b.name.as_str())],
                value(b),
            )
        })
    }

    fn vips(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        gauge("vip_info", "A VIP: its address:port/protocol (always 1).").encode(
            encoder,
            self.report.vips.iter().map(|v| {
                (
                    [("vip", v.name.as_str()), ("endpoint", v.endpoint.as_str())],
                    1u64,
                )
            }),
        )?;
        counter("vip_packets", "Packets forwarded for the VIP.")
            .encode(encoder, self.per_vip(|v| v.packets))?;
        counter("vip_bytes", "Bytes forwarded for the VIP (whole frames).")
            .encode(encoder, self.per_vip(|v| v.bytes))?;
        counter(
            "vip_new_flows",
            "Flows the VIP's lookup table assigned (SYNs and connection-table misses).",
        )
        .encode(encoder, self.per_vip(|v| v.new_flows))?;
        counter(
            "vip_refused_packets",
            "Packets the VIP refused in XDP, by reason: denied (a deny rule), not_allowed \
             (no allow rule covers the source), source_limit, flow_limit, packet_limit (over \
             a cap of its limits).",
        )
        .encode(
            encoder,
            self.report.vips.iter().flat_map(|v| {
                v.refused.iter().map(|(reason, count)| {
                    (
                        [("vip", v.name.as_str()), ("reason", reason.as_str())],
                        *count,
                    )
                })
            }),
        )?;
        counter(
            "vip_quic_packets",
            "A QUIC VIP's UDP packets, by outcome: routed (by the server ID in a short header's \
             connection ID), or the reason they went by the 4-tuple: long_header, unroutable \
             (config codepoint 7), other_config (another config rotation codepoint), \
             unknown_server (an ID no backend has), server_down (its backend is out of the \
             table), truncated (no whole short header).",
        )
        .encode(
            encoder,
            self.report.vips.iter().flat_map(|v| {
                v.quic.iter().flat_map(|quic| {
                    quic.packets.iter().map(|(outcome, count)| {
                        (
                            [("vip", v.name.as_str()), ("outcome", outcome.as_str())],
                            *count,
                        )
                    })
                })
            }),
        )?;
        counter(
            "source_rule_drops",
            "Packets a deny rule of the VIP dropped in XDP, by the rule's prefix (rules that \
             dropped nothing are left out).",
        )
        .encode(
            encoder,
            self.report.vips.iter().flat_map(|v| {
                v.rule_drops.iter().map(|(rule, count)| {
                    ([("vip", v.name.as_str()), ("rule", rule.as_str())], *count)
                })
            }),
        )?;
        handshake_counters("vip", "the VIP's backends", |kind, read| {
            kind.encode(encoder, self.per_vip(|v| read(&v.handshakes)))
        })?;
        gauge(
            "vip_new_flow_rate",
            "New flows per second over the imbalance detector's window.",
        )
        .encode(encoder, self.per_vip(|v| share(v.flow_rate)))?;
        gauge(
            "vip_imbalance_ratio",
            "The largest observed / expected share of the VIP's backends over the window \
             (0 without new flows).",
        )
        .encode(encoder, self.per_vip(|v| share(v.imbalance_ratio)))?;
        let health = |value: fn(&VipHealthReport) -> u64| {
            self.report.vips.iter().filter_map(move |v| {
                v.health
                    .as_ref()
                    .map(|h| ([("vip", v.name.as_str())], value(h)))
            })
        };
        gauge(
            "vip_panic",
            "1 while the VIP is in panic: too few of its backends are healthy, so it keeps \
             them all in its table (fail open).",
        )
        .encode(encoder, health(|h| flag(h.panic)))?;
        gauge(
            "vip_healthy_backends",
            "The VIP's backends (weight above 0) whose health checks pass.",
        )
        .encode(encoder, health(|h| h.healthy as u64))?;
        gauge(
            "vip_failures_to_panic",
            "How many more of the VIP's healthy backends could fail, heaviest first, before \
             it panics.",
        )
        .encode(encoder, health(|h| h.failures_to_panic as u64))?;
        counter(
            "vip_health_changes",
            "Table changes health checks asked for: applied, or held back by damping.",
        )
        .encode(
            encoder,
            self.report.vips.iter().flat_map(|v| {
                let changes = v
                    .health
                    .as_ref()
                    .map(|h| h.changes.clone())
                    .unwrap_or_default();
                [
                    (
                        [("vip", v.name.as_str()), ("result", "applied")],
                        changes.applied,
                    ),
                    (
                        [("vip", v.name.as_str()), ("result", "damped")],
                        changes.damped,
                    ),
                ]
            }),
        )
    }

    /// What the hosts of a group must agree on, and what this one announces.
    fn group(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        gauge(
            "vip_table_digest",
            "A digest (48 bits) of the VIP's installed lookup table in backend identities: \
             equal on every host of a group that holds the same table.",
        )
        .encode(
            encoder,
            self.per_vip(|v| u64::from_str_radix(&v.table_digest, 16).unwrap_or(0) as f64),
        )?;
        if let Some(group) = &self.report.group {
            gauge(
                "group_info",
                "The host's group and the fingerprint of the flow hash seed in force \
                 (always 1): every host of a group must show the same fingerprint.",
            )
            .encode(
                encoder,
                [(
                    [
                        ("group", group.name.as_deref().unwrap_or("")),
                        ("seed_fingerprint", group.seed_fingerprint.as_str()),
                    ],
                    1u64,
                )],
            )?;
        }
        let Some(announce) = &self.report.announce else {
            return Ok(());
        };
        gauge(
            "vip_announced",
            "1 while the VIP's address is announced to the routers through BIRD.",
        )
        .encode(
            encoder,
            self.report.vips.iter().filter_map(|v| {
                v.announced
                    .map(|announced| ([("vip", v.name.as_str())], flag(announced)))
            }),
        )?;
        gauge(
            "announce_ok",
            "1 when BIRD took the last change of the routes; 0 while telling it fails.",
        )
        .encode(encoder, [(NO_LABELS, flag(announce.error.is_none()))])?;
        counter(
            "announce_failures",
            "Attempts to tell BIRD the routes that failed.",
        )
        .encode(encoder, [(NO_LABELS, announce.failures)])
    }

    fn backend_info(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        let weights: Vec<String> = self.pairs().map(|(_, b)| b.weight.to_string()).collect();
        gauge(
            "backend_info",
            "A backend: its address:port, its configured weight, and whether it is held out \
             of the table for want of a MAC (always 1).",
        )
        .encode(
            encoder,
            self.pairs().zip(&weights).map(|((v, b), weight)| {
                (
                    [
                        ("vip", v.name.as_str()),
                        ("backend", b.name.as_str()),
                        ("address", b.address.as_str()),
                        ("weight", weight.as_str()),
                        ("held_out", if b.held_out { "true" } else { "false" }),
                    ],
                    1u64,
                )
            }),
        )?;
        counter("backend_packets", "Packets forwarded to the backend.")
            .encode(encoder, self.per_backend(|b| b.packets))
    }

    fn backend_traffic(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        counter(
            "backend_bytes",
            "Bytes forwarded to the backend (whole frames).",
        )
        .encode(encoder, self.per_backend(|b| b.bytes))?;
        counter(
            "backend_new_flows",
            "Flows the lookup table assigned to the backend.",
        )
        .encode(encoder, self.per_backend(|b| b.new_flows))?;
        handshake_counters("backend", "the backend", |kind, read| {
            kind.encode(encoder, self.per_backend(|b| read(&b.handshakes)))
        })
    }

    fn backend_shares(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        gauge(
            "backend_expected_share",
            "The backend's share of the installed lookup table (0 to 1).",
        )
        .encode(encoder, self.per_backend(|b| share(b.expected_share)))?;
        gauge(
            "backend_observed_share",
            "The backend's share of its VIP's new flows over the imbalance detector's window \
             (0 to 1).",
        )
        .encode(encoder, self.per_backend(|b| share(b.observed_share)))
    }

    fn backend_flags(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        gauge(
            "backend_imbalanced",
            "1 while the imbalance detector flags the backend: its observed share stayed \
             above factor x its expected share for for_s seconds.",
        )
        .encode(encoder, self.per_backend(|b| flag(b.imbalanced)))?;
        gauge(
            "backend_outlier",
            "1 while the outlier detector judged the backend an outlier in its last interval: \
             its handshake success far below its peers'.",
        )
        .encode(encoder, self.per_backend(|b| flag(b.outlier)))?;
        gauge(
            "backend_ejected",
            "1 while the backend is ejected as an outlier: out of its VIP's table for new \
             flows, its established flows kept.",
        )
        .encode(encoder, self.per_backend(|b| flag(b.ejected)))?;
        gauge(
            "backend_slow_start",
            "The fraction of its weight a backend ramping up after it joined its table takes \
             now (ramping backends only).",
        )
        .encode(
            encoder,
            self.pairs().filter_map(|(v, b)| {
                b.slow_start.map(|part| {
                    (
                        [("vip", v.name.as_str()), ("backend", b.name.as_str())],
                        part,
                    )
                })
            }),
        )?;
        // Health: only backends that are checked (kind "none" is not).
        let checked = |value: fn(&BackendReport) -> Option<f64>| {
            self.pairs().filter_map(move |(v, b)| {
                value(b).map(|x| ([("vip", v.name.as_str()), ("backend", b.name.as_str())], x))
            })
        };
        gauge(
            "backend_healthy",
            "1 while the backend's health checks pass, 0 while they fail (it is out of the \
             table unless its VIP is in panic).",
        )
        .encode(
            encoder,
            checked(|b| match b.health.as_str() {
                "up" => Some(1.0),
                "down" => Some(0.0),
                _ => None,
            }),
        )?;
        gauge(
            "backend_taken_down",
            "1 while the backend is out of its VIP's table because its health checks fail \
             (0 while it is kept: healthy, or its VIP in panic).",
        )
        .encode(
            encoder,
            checked(|b| (b.health != "unchecked").then_some(f64::from(u8::from(b.taken_down)))),
        )?;
        gauge(
            "backend_check_seconds",
            "The latency of the backend's last health check (to connect, or to the HTTP \
             status line; the timeout when it timed out).",
        )
        .encode(encoder, checked(|b| b.check_ms.map(|ms| share(ms / 1e3))))?;
        gauge(
            "backend_handshake_success",
            "Handshakes completed per attempt over the outlier detector's last interval \
             (backends with attempts only).",
        )
        .encode(encoder, checked(|b| b.handshake_success.map(share)))
    }

    fn global(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        let count = |reason: Reason| self.report.reasons.get(reason.name()).copied().unwrap_or(0);
        counter(
            "packets",
            "Packets by verdict: action tx, pass or drop, and the reason.",
        )
        .encode(
            encoder,
            Reason::ALL
                .into_iter()
                .filter(|r| r.is_verdict())
                .map(|r| ([("action", r.action()), ("reason", r.name())], count(r))),
        )?;
        counter(
            "conn_table_lookups",
            "Connection-table lookups by result: hit (an established flow) or miss.",
        )
        .encode(
            encoder,
            [
                ([("result", "hit")], count(Reason::ConnHit)),
                ([("result", "miss")], count(Reason::ConnMiss)),
            ],
        )?;
        counter(
            "conn_table_inserts",
            "New flows written to the connection table, by result: ok, or failed when their \
             set held only established flows (the flow is forwarded by the lookup table, \
             untracked).",
        )
        .encode(
            encoder,
            [
                ([("result", "ok")], count(Reason::ConnInsert)),
                ([("result", "failed")], count(Reason::ConnInsertFailed)),
            ],
        )?;
        counter(
            "conn_table_evictions",
            "New flows' entries that took another flow's way (an unproven, closing or idle \
             flow's; never an established one's).",
        )
        .encode(encoder, [(NO_LABELS, count(Reason::ConnEvicted))])?;
        counter(
            "conn_table_expired",
            "Flows that came back after idling past their protocol's timeout, hashed again.",
        )
        .encode(encoder, [(NO_LABELS, count(Reason::ConnExpired))])?;
        let connections = &self.report.connections;
        gauge(
            "conn_table_capacity",
            "Flows the connection table can hold.",
        )
        .encode(encoder, [(NO_LABELS, connections.capacity)])?;
        gauge(
            "conn_table_ways",
            "Connection-table ways by state (empty, established, unproven, closing, idle), \
             estimated from a sample of its sets.",
        )
        .encode(
            encoder,
            connections
                .ways
                .iter()
                .map(|(state, n)| ([("state", state.as_str())], *n)),
        )?;
        gauge(
            "conn_table_fill_ratio",
            "Connection-table ways holding a flow not idle past its timeout, over the capacity.",
        )
        .encode(encoder, [(NO_LABELS, connections.fill)])?;
        counter(
            "ipv4_options_packets",
            "IPv4 packets with header options that were parsed.",
        )
        .encode(encoder, [(NO_LABELS, count(Reason::Ipv4Options))])?;
        counter(
            "icmp_errors_to_backends",
            "ICMP errors about a VIP's flows (too big, unreachable) sent on to the backend \
             that owns the flow.",
        )
        .encode(encoder, [(NO_LABELS, count(Reason::IcmpToBackend))])?;
        gauge(
            "dataplane_attached",
            "1 while the kernel has the XDP program attached to the interface.",
        )
        .encode(encoder, [(NO_LABELS, flag(self.report.attached))])?;
        if let Some(mode) = &self.report.xdp_mode {
            gauge(
                "dataplane_xdp_mode",
                "1 for the XDP mode the kernel runs the program in (native: in the driver; \
                 generic: after an skb is made, slower).",
            )
            .encode(encoder, [([("mode", mode.as_str())], 1u64)])?;
        }
        if let Some(pins) = &self.report.pin_survival {
            gauge(
                "pins_survive_restart",
                "1 when the pinned data plane outlives the daemon; 0 when its bpffs goes with \
                 the daemon's own mount namespace, so a crash or restart stops every flow.",
            )
            .encode(encoder, [(NO_LABELS, flag(pins.survives))])?;
        }
        gauge("config_generation", "The config generation in force.")
            .encode(encoder, [(NO_LABELS, self.report.generation)])
    }

    fn controller(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        let facts = &self.facts;
        counter(
            "apply_decisions",
            "Changes the gate decided since the daemon started, by result: applied, refused \
             or failed.",
        )
        .encode(
            encoder,
            // Every outcome from zero, so that a first refusal shows as an
            // increase.
            Outcome::ALL.iter().map(|result| {
                let n = facts.applies.get(result).copied().unwrap_or(0);
                ([("result", result.name())], n)
            }),
        )?;
        counter(
            "apply_refusals",
            "Problems that made the gate refuse a change, by problem code.",
        )
        .encode(
            encoder,
            facts
                .refusals
                .iter()
                .map(|(code, &n)| ([("code", code.as_str())], n)),
        )?;
        gauge(
            "change_watched",
            "1 while an operator's change is watched, to be rolled back if it makes its VIPs \
             worse.",
        )
        .encode(encoder, [(NO_LABELS, flag(facts.watching))])?;
        counter(
            "watches",
            "Watches of changes that ended, by result: kept, rolled_back, rollback_refused (the \
             guards refused the rollback, or it failed) or superseded (another change came).",
        )
        .encode(
            encoder,
            WATCH_RESULTS.iter().map(|&result| {
                let n = facts.watches.get(result).copied().unwrap_or(0);
                ([("result", result)], n)
            }),
        )?;
        if let Some((time, result)) = facts.last_apply {
            gauge(
                "last_apply_timestamp_seconds",
                "When the gate last decided a change (Unix time).",
            )
            .encode(encoder, [(NO_LABELS, time)])?;
            gauge(
                "last_apply_success",
                "1 when the last change the gate decided was applied, 0 when it was refused \
                 or failed.",
            )
            .encode(encoder, [(NO_LABELS, flag(result == Outcome::Applied))])?;
        }
        if let Some(path) = &facts.journal {
            gauge(
                "journal_info",
                "The journal of changes the daemon writes, by path (always 1): where the \
                 reasons for every decision are.",
            )
            .encode(encoder, [([("path", path.as_str())], 1u64)])?;
        }
        if let Some(in_force) = facts.file_in_force {
            gauge(
                "config_file_in_force",
                "1 when the config file on disk is the config in force; 0 while an edit of \
                 it (or a SIGHUP) stands refused and the installed state is older than the file.",
            )
            .encode(encoder, [(NO_LABELS, flag(in_force))])?;
        }
        let layout = lb_common::maps::LAYOUT_VERSION.to_string();
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("FULCRUM_GIT_COMMIT")),
            ("layout", layout.as_str()),
        ];
        gauge(
            "build_info",
            "The fulcrum build: its version, the commit it was built from and its map layout \
             (always 1).",
        )
        .encode(encoder, [(build, 1u64)])
    }
}

/// One part of one scrape, as a collector.
#[derive(Debug)]
struct PartOf(Arc<Scrape>, Part);

impl Collector for PartOf {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Encoded {
        let scrape = &self.0;
        match self.1 {
            Part::Summary => {
                scrape.vips(&mut encoder)?;
                scrape.group(&mut encoder)?;
                scrape.global(&mut encoder)?;
                scrape.controller(&mut encoder)
            }
            Part::BackendInfo => scrape.backend_info(&mut encoder),
            Part::BackendTraffic => scrape.backend_traffic(&mut encoder),
            Part::BackendShares => scrape.backend_shares(&mut encoder),
            Part::BackendFlags => scrape.backend_flags(&mut encoder),
        }
    }
}

/// About how many bytes a part takes: its per-backend lines at ~80 bytes.
fn estimate(scrape: &Scrape, part: Part) -> usize {
    let backends: usize = scrape.report.vips.iter().map(|v| v.backends.len()).sum();
    let families = match part {
        Part::Summary => return 16 << 10,
        Part::BackendFlags => 1,
        _ => 2,
    };
    backends * families * 80
}

/// The OpenMetrics text of `report` and `facts`, every name prefixed
/// `fulcrum_`, in parts to be sent one after the other.
pub fn exposition(report: Report, facts: Facts) -> Vec<String> {
    let scrape = Arc::new(Scrape { report, facts });
    let parts = parallel::map(&PARTS, |&part| {
        let mut registry = Registry::with_prefix("fulcrum");
        registry.register_collector(Box::new(PartOf(scrape.clone(), part)));
        let mut text = String::with_capacity(estimate(&scrape, part));
        encode_registry(&mut text, &registry).map(|()| text)
    });
    let mut texts = Vec::with_capacity(parts.len() + 1);
    for part in parts {
        match part {
            Ok(part) => texts.push(part),
            // Writing into a String cannot fail; a label the encoder
            // refuses would, and is reported in the text, not as a panic.
            Err(e) => return vec![format!("# encoding failed: {e}\n# EOF\n")],
        }
    }
    let mut eof = String::new();
    let _ = encode_eof(&mut eof);
    texts.push(eof);
    texts
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lb_common::maps::{QuicOutcome, Reason};

    use super::*;
    use crate::monitor::report::{QuicReport, VipReport};

    /// Every counter the kernel keeps, and so every one `status` shows, is
    /// exported: each reason's count (all different) is a sample's value.
    #[test]
    fn every_counter_in_status_is_in_the_metrics() {
        let report = Report {
            reasons: Reason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name().to_string(), 1000 + i as u64))
                .collect(),
            ..Report::default()
        };
        let text = exposition(report, Facts::default()).concat();
        let values: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next())
            .collect();
        for (i, reason) in Reason::ALL.iter().enumerate() {
            let value = (1000 + i).to_string();
            assert!(
                values.contains(&value.as_str()),
                "{} ({value}) is in no metric",
                reason.name()
            );
        }
    }

    /// A QUIC VIP's packets are exported by outcome, each its own count;
    /// a VIP without QUIC routing exports none.
    #[test]
    fn a_quic_vips_packets_are_exported_by_outcome() {
        let vip = |name: &str, quic| VipReport {
            name: name.into(),
            endpoint: String::new(),
            packets: 0,
            bytes: 0,
            new_flows: 0,
            refused: BTreeMap::new(),
            rule_drops: BTreeMap::new(),
            handshakes: Default::default(),
            outliers: None,
            flow_rate: 0.0,
            imbalance_ratio: 0.0,
            last_change: None,
            health: None,
            table_digest: String::new(),
            announced: None,
            quic,
            backends: Vec::new(),
        };
        let packets: BTreeMap<String, u64> = QuicOutcome::ALL
            .iter()
            .enumerate()
            .map(|(i, o)| (o.name().to_string(), 500 + i as u64))
            .collect();
        let report = Report {
            vips: vec![
                vip(
                    "h3",
                    Some(QuicReport {
                        packets,
                        ..QuicReport::default()
                    }),
                ),
                vip("dns", None),
            ],
            ..Report::default()
        };
        let text = exposition(report, Facts::default()).concat();
        for (i, outcome) in QuicOutcome::ALL.iter().enumerate() {
            let line = format!(
                "fulcrum_vip_quic_packets_total{{vip=\"h3\",outcome=\"{}\"}} {}",
                outcome.name(),
                500 + i
            );
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(
            !text.contains("vip_quic_packets_total{vip=\"dns\""),
            "{text}"
        );
    }
}
