//! The configuration reference (`docs/configuration.md`) names every key
//! the parser accepts, in the section of the table it belongs to. The
//! parser says which keys each table accepts when it meets an unknown one,
//! so a config with an unknown key in every table lists them all.

use std::collections::BTreeMap;

use lb_userspace::policy::validate::validate;

/// The reference.
const REFERENCE: &str = include_str!("../../docs/configuration.md");

/// Every table of a config, each with an unknown key.
const EVERY_TABLE: &str = r#"
zzz = 1
[guards]
zzz = 1
[health_check]
zzz = 1
[imbalance]
zzz = 1
[encapsulation]
zzz = 1
[api]
zzz = 1
[group]
name = "g"
zzz = 1
[announce]
zzz = 1
[[vip]]
name = "v"
address = "198.18.100.1"
port = 80
protocol = "tcp"
zzz = 1
guards = { zzz = 1 }
health_check = { zzz = 1 }
limits = { zzz = 1 }
[[vip.backend]]
address = "198.18.0.1"
zzz = 1
health_check = { zzz = 1 }
"#;

/// The reference's section for a table the parser names `location`.
fn section(location: &str) -> String {
    match location.rsplit(' ').next().unwrap_or_default() {
        "config" => "## Top-level keys".into(),
        table @ ("guards" | "health_check" | "imbalance" | "encapsulation" | "api" | "group"
        | "announce") => format!("## `[{table}]`"),
        _ if location.contains(" backend ") => "## `[[vip.backend]]`".into(),
        "limits" => "## `[vip.limits]`".into(),
        _ => "## `[[vip]]`".into(),
    }
}

/// The keys in the table rows of the reference's `heading` section.
fn documented(heading: &str) -> Vec<String> {
    let start = REFERENCE
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/configuration.md has no section {heading:?}"));
    let body = &REFERENCE[start + heading.len() + 2..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end]
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

#[test]
fn every_key_the_parser_accepts_is_in_the_reference() {
    let validation = validate(EVERY_TABLE);
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for problem in validation
        .problems
        .iter()
        .filter(|p| p.code == "unknown-key")
    {
        let (_, keys) = problem
            .message
            .split_once("expected one of: ")
            .unwrap_or_else(|| panic!("{problem}"));
        accepted
            .entry(section(&problem.location))
            .or_default()
            .extend(keys.split(", ").map(str::to_string));
    }
    assert_eq!(accepted.len(), 11, "a table of every kind: {accepted:?}");
    let mut missing = Vec::new();
    for (heading, keys) in &accepted {
        let listed = documented(heading);
        missing.extend(
            keys.iter()
                .filter(|key| !listed.contains(key))
                .map(|key| format!("{heading}: {key}")),
        );
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:#?}"
    );
}
