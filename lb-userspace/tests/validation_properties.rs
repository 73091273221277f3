//! Properties of validation over generated input: it never panics on any
//! TOML (or any text at all), no config it accepts installs a table in
//! which a backend exceeds its VIP's concentration limit, and no change the
//! plan accepts without `--force` breaks the guards of the config in force.

use std::fmt::Write as _;

use lb_userspace::{
    policy::plan::plan,
    policy::validate::{Validation, validate},
    table::TableSize,
};
use proptest::prelude::*;

/// Keys the config knows, and some it does not.
const KEYS: &[&str] = &[
    "interface",
    "forwarding",
    "table_size",
    "name",
    "address",
    "port",
    "protocol",
    "weight",
    "mac",
    "max_backend_share",
    "min_backends",
    "max_flows_moved",
    "max_capacity_removed",
    "kind",
    "interval_ms",
    "timeout_ms",
    "rise",
    "fall",
    "http_path",
    "socket",
    "metrics",
    "guards",
    "backend",
    "vip",
    "bogus",
];

const HEADERS: &[&str] = &[
    "[[vip]]",
    "[[vip.backend]]",
    "[guards]",
    "[vip.guards]",
    "[health_check]",
    "[api]",
    "[[backend]]",
    "[vip]",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..70000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:?}")
        } else {
            "nan".into()
        }),
        prop_oneof![
            Just("inf"),
            Just("-inf"),
            Just("true"),
            Just("false"),
            Just("[]"),
            Just("{}")
        ]
        .prop_map(str::to_string),
        prop_oneof![
            Just("198.18.0.1"),
            Just("2001:2::1"),
            Just("0.0.0.0"),
            Just("ff02::1"),
            Just("tcp"),
            Just("udp"),
            Just("l2-dsr"),
            Just("http"),
            Just("/x"),
            Just("02:00:00:00:00:01"),
            Just("127.0.0.1:1"),
            Just(""),
        ]
        .prop_map(|s| format!("{s:?}")),
        "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        (0u32..5).prop_map(|n| {
            let items: Vec<String> = (0..n)
                .map(|i| format!("{{ address = \"198.18.0.{i}\", weight = {i} }}"))
                .collect();
            format!("[{}]", items.join(", "))
        }),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(HEADERS).prop_map(str::to_string),
        1 => "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_never_panics_on_toml_shaped_text(lines in prop::collection::vec(line(), 0..40)) {
        let validation = validate(&lines.join("\n"));
        prop_assert_eq!(validation.is_valid(), validation.errors().is_empty() && validation.config.is_some());
    }

    #[test]
    fn validation_never_panics_on_any_text(text in "\\PC{0,400}") {
        let _ = validate(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn accepted_configs_respect_the_concentration_limit(
        weights in prop::collection::vec(0u32..30, 1..8),
        limit_percent in 20u32..=100,
        min_backends in 1u32..4,
    ) {
        let mut text = String::from("table_size = 4093\n[[vip]]\nname = \"v\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n");
        let limit = f64::from(limit_percent) / 100.0;
        writeln!(text, "guards = {{ max_backend_share = {limit}, min_backends = {min_backends} }}").unwrap();
        for (i, w) in weights.iter().enumerate() {
            writeln!(text, "[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}", i + 1).unwrap();
        }
        let validation = validate(&text);
        if validation.is_valid() {
            let table = validation.tables[0].as_ref().expect("valid configs have tables");
            let size = TableSize::new(4093).unwrap().get();
            let active = weights.iter().filter(|&&w| w > 0).count() as u32;
            prop_assert!(active >= min_backends);
            if active > 1 || min_backends > 1 {
                for &slots in &table.slots {
                    prop_assert!(
                        f64::from(slots) <= (limit * f64::from(size)).ceil(),
                        "a backend holds {slots} of {size} slots, limit {limit}"
                    );
                }
            }
        }
    }
}

/// Guard settings, each maybe unset.
#[derive(Clone, Debug)]
struct GuardSet {
    max_backend_share: Option<f64>,
    min_backends: Option<u32>,
    max_flows_moved: Option<f64>,
    max_capacity_removed: Option<f64>,
}

fn guard_set() -> impl Strategy<Value = GuardSet> {
    let fraction = |values: &'static [f64]| prop::option::of(prop::sample::select(values));
    (
        fraction(&[0.3, 0.4, 0.5, 0.7, 1.0]),
        prop::option::of(1u32..=4),
        fraction(&[0.1, 0.35, 0.6, 1.0]),
        fraction(&[0.2, 0.5, 1.0]),
    )
        .prop_map(|(share, min, flows, capacity)| GuardSet {
            max_backend_share: share,
            min_backends: min,
            max_flows_moved: flows,
            max_capacity_removed: capacity,
        })
}

impl GuardSet {
    /// As an inline TOML table, or nothing when every field is unset.
    fn toml(&self) -> Option<String> {
        let mut fields = Vec::new();
        let mut push = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                fields.push(format!("{key} = {value}"));
            }
        };
        push(
            "max_backend_share",
            self.max_backend_share.map(|v| format!("{v:?}")),
        );
        push("min_backends", self.min_backends.map(|v| v.to_string()));
        push(
            "max_flows_moved",
            self.max_flows_moved.map(|v| format!("{v:?}")),
        );
        push(
            "max_capacity_removed",
            self.max_capacity_removed.map(|v| format!("{v:?}")),
        );
        (!fields.is_empty()).then(|| format!("{{ {} }}", fields.join(", ")))
    }
}

/// One side of a change: global guards, and up to two VIPs with their own
/// guards and backends (weights by position; `None` = not listed).
#[derive(Clone, Debug)]
struct Side {
    global: GuardSet,
    vips: Vec<(GuardSet, Vec<Option<u32>>)>,
}

fn pool() -> impl Strategy<Value = Vec<Option<u32>>> {
    prop::collection::vec(prop::option::weighted(0.8, 0u32..=4), 6)
}

fn side() -> impl Strategy<Value = Side> {
    (
        guard_set(),
        prop::collection::vec((guard_set(), pool()), 1..=2),
    )
        .prop_map(|(global, vips)| Side { global, vips })
}

impl Side {
    fn toml(&self) -> String {
        let mut text = String::from("table_size = 1021\n");
        if let Some(global) = self.global.toml() {
            writeln!(text, "guards = {global}").unwrap();
        }
        for (v, (guards, weights)) in self.vips.iter().enumerate() {
            writeln!(
                text,
                "[[vip]]\naddress = \"198.18.100.{}\"\nport = 80\nprotocol = \"tcp\"",
                v + 1
            )
            .unwrap();
            if let Some(guards) = guards.toml() {
                writeln!(text, "guards = {guards}").unwrap();
            }
            for (i, weight) in weights.iter().enumerate() {
                if let Some(w) = weight {
                    writeln!(
                        text,
                        "[[vip.backend]]\naddress = \"198.18.{v}.{}\"\nweight = {w}",
                        i + 1
                    )
                    .unwrap();
                }
            }
        }
        text
    }

    /// This side with `mask`'s positions taken from `other`: a change that
    /// is often small, so that accepted plans are common.
    fn mixed(&self, other: &Side, mask: &[bool]) -> Side {
        let pick = |i: usize| mask.get(i).copied().unwrap_or(false);
        let guards = |a: &GuardSet, b: &GuardSet, at: usize| GuardSet {
            max_backend_share: either(pick(at), a.max_backend_share, b.max_backend_share),
            min_backends: either(pick(at + 1), a.min_backends, b.min_backends),
            max_flows_moved: either(pick(at + 2), a.max_flows_moved, b.max_flows_moved),
            max_capacity_removed: either(
                pick(at + 3),
                a.max_capacity_removed,
                b.max_capacity_removed,
            ),
        };
        let vips = (0..other.vips.len().max(self.vips.len()))
            .filter_map(|v| match (self.vips.get(v), other.vips.get(v)) {
                (Some(a), Some(b)) => Some((
                    guards(&a.0, &b.0, 4 + v * 10),
                    a.1.iter()
                        .zip(&b.1)
                        .enumerate()
                        .map(|(i, (x, y))| if pick(8 + v * 10 + i) { *y } else { *x })
                        .collect(),
                )),
                (a, b) => {
                    if pick(30 + v) {
                        b.cloned()
                    } else {
                        a.cloned()
                    }
                }
            })
            .collect();
        Side {
            global: guards(&self.global, &other.global, 0),
            vips,
        }
    }
}

/// `b` if `pick`, else `a`.
fn either<T>(pick: bool, a: T, b: T) -> T {
    if pick { b } else { a }
}

/// The fraction of slots whose backend identity differs (same table size).
fn moved(before: &Validation, v: usize, after: &Validation, w: usize) -> f64 {
    let (old, new) = (
        before.tables[v].as_ref().unwrap(),
        after.tables[w].as_ref().unwrap(),
    );
    let changed = old
        .table
        .iter()
        .zip(&new.table)
        .filter(|&(&a, &b)| old.identities[a as usize] != new.identities[b as usize])
        .count();
    changed as f64 / old.table.len() as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn a_plan_accepted_without_force_keeps_the_guards_in_force(
        current in side(),
        other in side(),
        mask in prop::collection::vec(prop::bool::weighted(0.25), 32),
    ) {
        let next = current.mixed(&other, &mask);
        let (current, next) = (validate(&current.toml()), validate(&next.toml()));
        prop_assume!(current.is_valid() && next.is_valid());
        let planned = plan(current.side(), next.side().unwrap(), false, None);
        if !planned.accepted() {
            return Ok(());
        }
        let (before, after) = (current.config.as_ref().unwrap(), next.config.as_ref().unwrap());
        for (w, vip) in after.vips.iter().enumerate() {
            let old = before.vips.iter().position(|o| o.address == vip.address);
            let in_force = old.map_or(before.guards, |v| before.vips[v].guards.apply(&before.guards));
            let active = vip.backends.iter().filter(|b| b.weight > 0).count() as u32;
            prop_assert!(active >= in_force.min_backends, "{active} active, in force {in_force:?}");
            let table = next.tables[w].as_ref().unwrap();
            if active > 1 || in_force.min_backends > 1 {
                let limit = (in_force.max_backend_share * table.table.len() as f64).ceil() as u32;
                prop_assert!(table.slots.iter().all(|&s| s <= limit), "{:?} over {limit}", table.slots);
            }
            let Some(v) = old else { continue };
            prop_assert!(moved(&current, v, &next, w) <= in_force.max_flows_moved + 1e-9);
            let weight_of = |backends: &[lb_userspace::config::BackendConfig], address| {
                backends.iter().find(|b| b.address == address).map_or(0, |b| u64::from(b.weight))
            };
            let old_backends = &before.vips[v].backends;
            let total: u64 = old_backends.iter().map(|b| u64::from(b.weight)).sum();
            let removed: u64 = old_backends
                .iter()
                .map(|b| u64::from(b.weight).saturating_sub(weight_of(&vip.backends, b.address)))
                .sum();
            prop_assert!(removed as f64 <= in_force.max_capacity_removed * total as f64 + 1e-9);
        }
    }
}
