//! Properties of validation over generated input: it never panics on any
//! TOML (or any text at all), and no config it accepts installs a table in
//! which a backend exceeds its VIP's concentration limit.

use std::fmt::Write as _;

use lb_userspace::{lookup_table::TableSize, validate::validate};
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
