//! TOML text to `Config`, collecting every shape problem instead of
//! stopping at the first: syntax (with line and column), unknown keys, wrong
//! types, missing keys. An entry missing a required key is left out of the
//! result, so later checks still run on everything else.

use std::{fmt, net::IpAddr, net::SocketAddr, ops::RangeInclusive, path::PathBuf};

use toml::{Table, Value};

use super::{
    Announce, Api, BACKEND_SLOT_LIMITS, BackendConfig, CHECK_INTERVALS_MS, CONNECTION_TABLE_SIZES,
    CheckKind, Config, EJECTION_TIMES_S, Encapsulation, Forwarding, Group, GuardOverrides, Guards,
    HealthCheck, HealthOverrides, IDLE_TIMEOUTS, IMBALANCE_WINDOWS_S, IdleTimeouts, Imbalance,
    Limits, MacAddr, OUTLIER_INTERVALS_S, Outlier, Prefix, Protocol, QUIC_CONFIG_IDS, QuicConfig,
    RATE_LIMITS, RISE_FALL, Rollout, SERVER_ID_LENS, SERVER_ID_OFFSETS, SLOW_STARTS_S, Secret,
    ServerId, SourceRules, UnreadableVip, VipConfig, WATCH_TIMES_S, span,
};
use crate::{
    problem::{Problem, quoted},
    table::{DEFAULT_SIZE, algorithm::Algorithm},
};

/// A value as written, for messages (`Problem` cuts it short).
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Table(_) => "{...}".into(),
        Value::Array(a) => format!("[{} items]", a.len()),
        other => other.to_string(),
    }
}

/// One TOML table being read: remembers which keys were asked for so that
/// the rest can be reported as unknown.
struct Section<'t> {
    table: &'t Table,
    location: String,
    known: Vec<&'static str>,
}

type Convert<'v, T> = fn(&'v Value) -> Result<T, String>;

impl<'t> Section<'t> {
    fn new(table: &'t Table, location: impl Into<String>) -> Self {
        Self {
            table,
            location: location.into(),
            known: Vec::new(),
        }
    }

    /// Reads optional key `key` with `convert`; a bad value is a problem.
    fn optional<T>(
        &mut self,
        problems: &mut Vec<Problem>,
        key: &'static str,
        convert: Convert<'t, T>,
    ) -> Option<T> {
        self.known.push(key);
        let value = self.table.get(key)?;
        convert(value)
            .map_err(|why| {
                problems.push(Problem::error(
                    "invalid-value",
                    &self.location,
                    key,
                    render(value),
                    why,
                ))
            })
            .ok()
    }

    /// Reads required key `key`; absence is a problem too.
    fn required<T>(
        &mut self,
        problems: &mut Vec<Problem>,
        key: &'static str,
        convert: Convert<'t, T>,
    ) -> Option<T> {
        if !self.table.contains_key(key) {
            self.known.push(key);
            problems.push(Problem::error(
                "missing-key",
                &self.location,
                key,
                "",
                "required key is missing",
            ));
            return None;
        }
        self.optional(problems, key, convert)
    }

    /// Reports every key nobody asked for.
    fn finish(self, problems: &mut Vec<Problem>) {
        for (key, value) in self.table {
            if !self.known.contains(&key.as_str()) {
                problems.push(Problem::error(
                    "unknown-key",
                    &self.location,
                    key.clone(),
                    render(value),
                    format!("unknown key; expected one of: {}", self.known.join(", ")),
                ));
            }
        }
    }
}

fn string(value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "expected a string".into())
}

fn table(value: &Value) -> Result<&Table, String> {
    value.as_table().ok_or_else(|| "expected a table".into())
}

fn tables(value: &Value) -> Result<Vec<&Table>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| "expected an array of tables".to_string())?;
    items
        .iter()
        .map(|item| {
            item.as_table()
                .ok_or_else(|| "expected an array of tables".into())
        })
        .collect()
}

fn integer_in<T: TryFrom<i64>>(value: &Value, what: &str) -> Result<T, String> {
    let n = value
        .as_integer()
        .ok_or_else(|| format!("expected {what}"))?;
    T::try_from(n).map_err(|_| format!("expected {what}"))
}

fn port(value: &Value) -> Result<u16, String> {
    integer_in(value, "a port from 0 to 65535")
}

fn uint(value: &Value) -> Result<u32, String> {
    integer_in(value, "a whole number from 0 to 4294967295")
}

fn millis(value: &Value) -> Result<u64, String> {
    integer_in(value, "a whole number of milliseconds")
}

/// A whole number that must lie in `range` (what validation enforces): a
/// value no integer type holds is told the same range.
fn in_range<T: TryFrom<i64> + fmt::Display>(
    value: &Value,
    range: &RangeInclusive<T>,
    unit: &str,
) -> Result<T, String> {
    integer_in(value, &format!("a whole number {}{unit}", span(range)))
}

fn connection_table_size(value: &Value) -> Result<u32, String> {
    in_range(value, &CONNECTION_TABLE_SIZES, " flows")
}

fn idle_timeout(value: &Value) -> Result<u32, String> {
    in_range(value, &IDLE_TIMEOUTS, " seconds")
}

fn max_backends(value: &Value) -> Result<u32, String> {
    in_range(value, &BACKEND_SLOT_LIMITS, "")
}

fn rise_fall(value: &Value) -> Result<u32, String> {
    in_range(value, &RISE_FALL, "")
}

fn check_interval(value: &Value) -> Result<u64, String> {
    in_range(value, &CHECK_INTERVALS_MS, " milliseconds")
}

fn imbalance_window(value: &Value) -> Result<u64, String> {
    in_range(value, &IMBALANCE_WINDOWS_S, " seconds")
}

fn finite(value: &Value, what: &str) -> Result<f64, String> {
    match value {
        Value::Float(f) if f.is_finite() => Ok(*f),
        Value::Integer(i) => Ok(*i as f64),
        _ => Err(format!("expected {what}")),
    }
}

fn fraction(value: &Value) -> Result<f64, String> {
    finite(value, "a number from 0 to 1")
}

fn number(value: &Value) -> Result<f64, String> {
    finite(value, "a number")
}

fn count(value: &Value) -> Result<u64, String> {
    integer_in(value, "a whole number")
}

fn boolean(value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| "expected true or false".to_string())
}

fn outlier_interval(value: &Value) -> Result<u64, String> {
    in_range(value, &OUTLIER_INTERVALS_S, " seconds")
}

fn watch_time(value: &Value) -> Result<u64, String> {
    in_range(value, &WATCH_TIMES_S, " seconds")
}

fn slow_start(value: &Value) -> Result<u64, String> {
    in_range(value, &SLOW_STARTS_S, " seconds")
}

fn ejection_time(value: &Value) -> Result<u64, String> {
    in_range(value, &EJECTION_TIMES_S, " seconds")
}

fn percent(value: &Value) -> Result<u32, String> {
    in_range(value, &(0..=100), " percent")
}

fn seconds(value: &Value) -> Result<u64, String> {
    integer_in(value, "a whole number of seconds")
}

fn weight(value: &Value) -> Result<u32, String> {
    integer_in(value, "a whole number from 0 (drain) to 10000")
}

fn table_size(value: &Value) -> Result<u32, String> {
    integer_in(
        value,
        &format!("one of the primes {:?}", crate::table::ALLOWED_SIZES),
    )
}

fn ip(value: &Value) -> Result<IpAddr, String> {
    let text = value
        .as_str()
        .ok_or_else(|| "expected an IP address string".to_string())?;
    text.parse()
        .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address"))
}

fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    let text = value
        .as_str()
        .ok_or_else(|| "expected an address:port string".to_string())?;
    text.parse()
        .map_err(|_| format!("{text:?} is not an address:port like 127.0.0.1:9487"))
}

fn mac(value: &Value) -> Result<MacAddr, String> {
    value
        .as_str()
        .ok_or_else(|| "expected a MAC address string".to_string())?
        .parse()
}

fn protocol(value: &Value) -> Result<Protocol, String> {
    value.as_str().unwrap_or_default().parse()
}

/// One of `all`, by its name in the config.
fn one_of<T: Copy>(value: &Value, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    let text = value.as_str();
    all.iter()
        .copied()
        .find(|&t| Some(name(t)) == text)
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|&t| format!("{:?}", name(t))).collect();
            format!("expected one of {}", names.join(", "))
        })
}

fn algorithm(value: &Value) -> Result<Algorithm, String> {
    one_of(value, &Algorithm::ALL, Algorithm::name)
}

fn forwarding(value: &Value) -> Result<Forwarding, String> {
    one_of(value, &Forwarding::ALL, Forwarding::name)
}

fn prefix(value: &Value) -> Result<Prefix, String> {
    value
        .as_str()
        .ok_or_else(|| "expected a prefix string like \"198.18.64.0/24\"".to_string())?
        .parse()
}

fn prefixes(value: &Value) -> Result<Vec<Prefix>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| "expected an array of prefixes like [\"198.18.64.0/24\"]".to_string())?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| prefix(item).map_err(|e| format!("item {}: {e}", i + 1)))
        .collect()
}

fn mtu(value: &Value) -> Result<u16, String> {
    integer_in::<u16>(value, "an MTU from 576 to 65535").and_then(|m| {
        (m >= 576)
            .then_some(m)
            .ok_or("expected an MTU from 576 to 65535".into())
    })
}

fn check_kind(value: &Value) -> Result<CheckKind, String> {
    match value.as_str() {
        Some("tcp") => Ok(CheckKind::Tcp),
        Some("http") => Ok(CheckKind::Http),
        Some("none") => Ok(CheckKind::None),
        _ => Err("expected \"tcp\", \"http\" or \"none\"".into()),
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The key assigned on line `line` (from 1), when `column` (from 1) lies
/// in its value: `key = value`.
fn key_before(text: &str, line: usize, column: usize) -> Option<String> {
    let line = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    (bare && column > line.find('=')? + 1).then(|| key.to_string())
}

/// Reads `text`; see the module doc.
pub(super) fn read(text: &str) -> (Option<Config>, Vec<Problem>) {
    let root: Table = match text.parse() {
        Ok(root) => root,
        Err(err) => {
            let err: toml::de::Error = err;
            let at = err.span().map(|span| line_and_column(text, span.start));
            let mut message = err.message().trim().replace('\n', "; ");
            // An error in a value (a number no integer holds) names its key.
            if let Some(key) = at.and_then(|(line, column)| key_before(text, line, column)) {
                message = format!("{key}: {message}");
            }
            let at = at.map_or(String::new(), |(line, column)| {
                format!("line {line}, column {column}")
            });
            return (
                None,
                vec![Problem::error("syntax", "config", at, "", message)],
            );
        }
    };
    let mut problems = Vec::new();
    let mut top = Section::new(&root, "config");
    let interface = top.optional(&mut problems, "interface", string);
    let forwarding = top
        .optional(&mut problems, "forwarding", forwarding)
        .unwrap_or(Forwarding::L2Dsr);
    let table_size = top
        .optional(&mut problems, "table_size", table_size)
        .unwrap_or(DEFAULT_SIZE.get());
    let default_table = top
        .optional(&mut problems, "table", algorithm)
        .unwrap_or_default();
    let connection_table_size = top
        .optional(
            &mut problems,
            "connection_table_size",
            connection_table_size,
        )
        .unwrap_or(lb_common::maps::CONN_TABLE_ENTRIES);
    let defaults = IdleTimeouts::default();
    let idle = IdleTimeouts {
        tcp_s: top
            .optional(&mut problems, "tcp_idle_s", idle_timeout)
            .unwrap_or(defaults.tcp_s),
        udp_s: top
            .optional(&mut problems, "udp_idle_s", idle_timeout)
            .unwrap_or(defaults.udp_s),
    };
    // A secret: a bad one is reported without its text.
    let flow_hash_seed = top
        .optional(&mut problems, "flow_hash_seed", string)
        .and_then(|text| {
            text.parse::<Secret>()
                .map_err(|why| {
                    problems.push(Problem::error(
                        "invalid-value",
                        "config",
                        "flow_hash_seed",
                        "(not shown: a secret)",
                        why,
                    ))
                })
                .ok()
        });
    let max_backends = top
        .optional(&mut problems, "max_backends", max_backends)
        .unwrap_or(lb_common::maps::MAX_BACKENDS - 1);
    let guards = top
        .optional(&mut problems, "guards", table)
        .map(|t| read_guards(t, "guards", &mut problems))
        .unwrap_or_default()
        .apply(&Guards::default());
    let health_check = top
        .optional(&mut problems, "health_check", table)
        .map(|t| read_health_check(t, "health_check", HealthScope::Global, &mut problems))
        .unwrap_or_default()
        .apply(&HealthCheck::default());
    let api = top
        .optional(&mut problems, "api", table)
        .map(|t| read_api(t, &mut problems))
        .unwrap_or_default();
    let imbalance = top
        .optional(&mut problems, "imbalance", table)
        .map(|t| read_imbalance(t, &mut problems))
        .unwrap_or_default();
    let outlier = top
        .optional(&mut problems, "outlier", table)
        .map(|t| read_outlier(t, &mut problems))
        .unwrap_or_default();
    let rollout = top
        .optional(&mut problems, "rollout", table)
        .map(|t| read_rollout(t, &mut problems))
        .unwrap_or_default();
    let encapsulation = top
        .optional(&mut problems, "encapsulation", table)
        .map(|t| read_encapsulation(t, &mut problems))
        .unwrap_or_default();
    let group = top
        .optional(&mut problems, "group", table)
        .map(|t| read_group(t, &mut problems));
    let announce = top
        .optional(&mut problems, "announce", table)
        .and_then(|t| read_announce(t, &mut problems));
    let defaults = VipDefaults {
        table: default_table,
        forwarding,
    };
    let mut vips = Vec::new();
    let mut unreadable_vips = Vec::new();
    for (i, t) in top
        .optional(&mut problems, "vip", tables)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match read_vip(t, i, defaults, &mut problems) {
            Ok(vip) => vips.push(vip),
            Err(unreadable) => unreadable_vips.push(unreadable),
        }
    }
    top.finish(&mut problems);
    let config = Config {
        interface,
        forwarding,
        table_size,
        connection_table_size,
        idle,
        flow_hash_seed,
        max_backends,
        guards,
        health_check,
        api,
        imbalance,
        outlier,
        rollout,
        group,
        announce,
        encapsulation,
        vips,
        unreadable_vips,
    };
    (Some(config), problems)
}

fn read_encapsulation(t: &Table, problems: &mut Vec<Problem>) -> Encapsulation {
    let mut s = Section::new(t, "encapsulation");
    let defaults = Encapsulation::default();
    let encapsulation = Encapsulation {
        source4: s.optional(problems, "source4", prefix),
        source6: s.optional(problems, "source6", prefix),
        mtu: s.optional(problems, "mtu", mtu),
        gue_port: s
            .optional(problems, "gue_port", port)
            .unwrap_or(defaults.gue_port),
    };
    s.finish(problems);
    encapsulation
}

fn rate_limit(value: &Value) -> Result<u32, String> {
    in_range(value, &RATE_LIMITS, " a second")
}

fn read_limits(t: &Table, location: &str, problems: &mut Vec<Problem>) -> Limits {
    let mut s = Section::new(t, location);
    let defaults = Limits::default();
    let limits = Limits {
        new_flows_per_s: s.optional(problems, "new_flows_per_s", rate_limit),
        packets_per_s: s.optional(problems, "packets_per_s", rate_limit),
        source_new_flows_per_s: s.optional(problems, "source_new_flows_per_s", rate_limit),
        source_prefix_v4: s
            .optional(problems, "source_prefix_v4", |v| in_range(v, &(8..=32), ""))
            .unwrap_or(defaults.source_prefix_v4),
        source_prefix_v6: s
            .optional(problems, "source_prefix_v6", |v| {
                in_range(v, &(16..=128), "")
            })
            .unwrap_or(defaults.source_prefix_v6),
    };
    s.finish(problems);
    limits
}

fn server_id(value: &Value) -> Result<ServerId, String> {
    value
        .as_str()
        .ok_or_else(|| "expected a string of hex digits".to_string())?
        .parse()
}

fn read_quic(t: &Table, location: &str, problems: &mut Vec<Problem>) -> QuicConfig {
    let mut s = Section::new(t, location);
    let quic = QuicConfig {
        config_id: s
            .optional(problems, "config_id", |v| in_range(v, &QUIC_CONFIG_IDS, ""))
            .unwrap_or(0),
        server_id_offset: s
            .optional(problems, "server_id_offset", |v| {
                in_range(v, &SERVER_ID_OFFSETS, " octets")
            })
            .unwrap_or(1),
        server_id_len: s
            .required(problems, "server_id_len", |v| {
                in_range(v, &SERVER_ID_LENS, " octets")
            })
            .unwrap_or(*SERVER_ID_LENS.start()),
    };
    s.finish(problems);
    quic
}

fn read_guards(t: &Table, location: &str, problems: &mut Vec<Problem>) -> GuardOverrides {
    let mut s = Section::new(t, location);
    let overrides = GuardOverrides {
        max_backend_share: s.optional(problems, "max_backend_share", fraction),
        min_backends: s.optional(problems, "min_backends", uint),
        max_flows_moved: s.optional(problems, "max_flows_moved", fraction),
        max_capacity_removed: s.optional(problems, "max_capacity_removed", fraction),
        max_clients_refused: s.optional(problems, "max_clients_refused", fraction),
    };
    s.finish(problems);
    overrides
}

/// Which `health_check` table is read: the global one, a VIP's or a
/// backend's. Each allows its own keys; the others are unknown keys there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HealthScope {
    Global,
    Vip,
    Backend,
}

fn read_health_check(
    t: &Table,
    location: &str,
    scope: HealthScope,
    problems: &mut Vec<Problem>,
) -> HealthOverrides {
    let mut s = Section::new(t, location);
    let mut overrides = HealthOverrides {
        kind: s.optional(problems, "kind", check_kind),
        interval_ms: s.optional(problems, "interval_ms", check_interval),
        timeout_ms: s.optional(problems, "timeout_ms", millis),
        rise: s.optional(problems, "rise", rise_fall),
        fall: s.optional(problems, "fall", rise_fall),
        http_path: s.optional(problems, "http_path", string),
        http_status: s.optional(problems, "http_status", status_ranges),
        ..HealthOverrides::default()
    };
    if scope != HealthScope::Backend {
        overrides.panic_threshold = s.optional(problems, "panic_threshold", fraction);
        overrides.max_changes_per_minute = s.optional(problems, "max_changes_per_minute", uint);
    }
    overrides.port = s.optional(problems, "port", port);
    if scope == HealthScope::Backend {
        overrides.address = s.optional(problems, "address", ip);
    }
    s.finish(problems);
    overrides
}

/// `http_status`: a list of codes (`200`) and inclusive ranges (`"200-299"`).
fn status_ranges(value: &Value) -> Result<Vec<(u16, u16)>, String> {
    const WANT: &str =
        "expected a list of HTTP status codes (100 to 599) and ranges like \"200-299\"";
    let items = value.as_array().ok_or(WANT)?;
    let code = |n: i64| u16::try_from(n).ok().filter(|c| (100..=599).contains(c));
    let ranges = items
        .iter()
        .map(|item| match item {
            Value::Integer(n) => code(*n).map(|c| (c, c)),
            Value::String(text) => {
                let (low, high) = text.split_once('-')?;
                let (low, high) = (
                    code(low.trim().parse().ok()?)?,
                    code(high.trim().parse().ok()?)?,
                );
                (low <= high).then_some((low, high))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(WANT)?;
    if ranges.is_empty() {
        return Err(WANT.into());
    }
    Ok(ranges)
}

fn read_api(t: &Table, problems: &mut Vec<Problem>) -> Api {
    let mut s = Section::new(t, "api");
    let defaults = Api::default();
    let api = Api {
        socket: s
            .optional(problems, "socket", string)
            .map(PathBuf::from)
            .unwrap_or(defaults.socket),
        metrics: s
            .optional(problems, "metrics", socket_addr)
            .unwrap_or(defaults.metrics),
    };
    s.finish(problems);
    api
}

fn read_group(t: &Table, problems: &mut Vec<Problem>) -> Group {
    let mut s = Section::new(t, "group");
    let name = s.required(problems, "name", string).unwrap_or_default();
    s.finish(problems);
    Group { name }
}

fn read_announce(t: &Table, problems: &mut Vec<Problem>) -> Option<Announce> {
    let mut s = Section::new(t, "announce");
    let bird_include = s.required(problems, "bird_include", string);
    let bird_socket = s
        .optional(problems, "bird_socket", string)
        .unwrap_or_else(|| Announce::DEFAULT_SOCKET.into());
    let drain_s = s
        .optional(problems, "drain_s", seconds)
        .unwrap_or(Announce::DEFAULT_DRAIN_S);
    s.finish(problems);
    Some(Announce {
        bird_include: bird_include?.into(),
        bird_socket: bird_socket.into(),
        drain_s,
    })
}

fn read_imbalance(t: &Table, problems: &mut Vec<Problem>) -> Imbalance {
    let mut s = Section::new(t, "imbalance");
    let defaults = Imbalance::default();
    let imbalance = Imbalance {
        factor: s
            .optional(problems, "factor", number)
            .unwrap_or(defaults.factor),
        window_s: s
            .optional(problems, "window_s", imbalance_window)
            .unwrap_or(defaults.window_s),
        for_s: s
            .optional(problems, "for_s", seconds)
            .unwrap_or(defaults.for_s),
        min_flow_rate: s
            .optional(problems, "min_flow_rate", number)
            .unwrap_or(defaults.min_flow_rate),
    };
    s.finish(problems);
    imbalance
}

fn read_outlier(t: &Table, problems: &mut Vec<Problem>) -> Outlier {
    let mut s = Section::new(t, "outlier");
    let defaults = Outlier::default();
    let outlier = Outlier {
        eject: s
            .optional(problems, "eject", boolean)
            .unwrap_or(defaults.eject),
        interval_s: s
            .optional(problems, "interval_s", outlier_interval)
            .unwrap_or(defaults.interval_s),
        min_syns: s
            .optional(problems, "min_syns", count)
            .unwrap_or(defaults.min_syns),
        min_backends: s
            .optional(problems, "min_backends", uint)
            .unwrap_or(defaults.min_backends),
        success_factor: s
            .optional(problems, "success_factor", fraction)
            .unwrap_or(defaults.success_factor),
        min_median: s
            .optional(problems, "min_median", fraction)
            .unwrap_or(defaults.min_median),
        base_ejection_s: s
            .optional(problems, "base_ejection_s", ejection_time)
            .unwrap_or(defaults.base_ejection_s),
        max_ejection_s: s
            .optional(problems, "max_ejection_s", ejection_time)
            .unwrap_or(defaults.max_ejection_s),
        max_ejection_percent: s
            .optional(problems, "max_ejection_percent", percent)
            .unwrap_or(defaults.max_ejection_percent),
    };
    s.finish(problems);
    outlier
}

fn read_rollout(t: &Table, problems: &mut Vec<Problem>) -> Rollout {
    let mut s = Section::new(t, "rollout");
    let defaults = Rollout::default();
    let rollout = Rollout {
        watch_s: s
            .optional(problems, "watch_s", watch_time)
            .unwrap_or(defaults.watch_s),
        rollback: s
            .optional(problems, "rollback", boolean)
            .unwrap_or(defaults.rollback),
        max_success_drop: s
            .optional(problems, "max_success_drop", fraction)
            .unwrap_or(defaults.max_success_drop),
        min_syns: s
            .optional(problems, "min_syns", count)
            .unwrap_or(defaults.min_syns),
    };
    s.finish(problems);
    rollout
}

/// `vip "name"`, else `vip <address>:<port>/<protocol>` as written, else
/// `vip #n`: the most recognisable label available before reading.
fn vip_location(t: &Table, index: usize) -> String {
    if let Some(name) = t.get("name").and_then(Value::as_str) {
        return format!("vip {}", quoted(name));
    }
    let address = t.get("address").and_then(Value::as_str);
    let port = t.get("port").and_then(Value::as_integer);
    let protocol = t.get("protocol").and_then(Value::as_str);
    match (address, port, protocol) {
        (Some(a), Some(p), Some(proto)) if a.contains(':') => format!("vip [{a}]:{p}/{proto}"),
        (Some(a), Some(p), Some(proto)) => format!("vip {a}:{p}/{proto}"),
        _ => format!("vip #{}", index + 1),
    }
}

/// What a VIP takes from the top level unless it says otherwise.
#[derive(Clone, Copy)]
struct VipDefaults {
    table: Algorithm,
    forwarding: Forwarding,
}

fn read_vip(
    t: &Table,
    index: usize,
    defaults: VipDefaults,
    problems: &mut Vec<Problem>,
) -> Result<VipConfig, UnreadableVip> {
    let location = vip_location(t, index);
    let mut s = Section::new(t, location.clone());
    let name = s.optional(problems, "name", string);
    let address = s.required(problems, "address", ip);
    let port = s.required(problems, "port", port);
    let protocol = s.required(problems, "protocol", protocol);
    let guards = s
        .optional(problems, "guards", table)
        .map(|g| read_guards(g, &format!("{location} guards"), problems))
        .unwrap_or_default();
    let health_check = s
        .optional(problems, "health_check", table)
        .map(|h| {
            let location = format!("{location} health_check");
            read_health_check(h, &location, HealthScope::Vip, problems)
        })
        .unwrap_or_default();
    let limits = s
        .optional(problems, "limits", table)
        .map(|l| read_limits(l, &format!("{location} limits"), problems))
        .unwrap_or_default();
    let quic = s
        .optional(problems, "quic", table)
        .map(|q| read_quic(q, &format!("{location} quic"), problems));
    let table = s
        .optional(problems, "table", algorithm)
        .unwrap_or(defaults.table);
    let forwarding = s
        .optional(problems, "forwarding", forwarding)
        .unwrap_or(defaults.forwarding);
    let eject_outliers = s.optional(problems, "eject_outliers", boolean);
    let slow_start_s = s
        .optional(problems, "slow_start_s", slow_start)
        .unwrap_or(0);
    let rollback = s.optional(problems, "rollback", boolean);
    let sources = SourceRules {
        allow: s
            .optional(problems, "allow_sources", prefixes)
            .unwrap_or_default(),
        deny: s
            .optional(problems, "deny_sources", prefixes)
            .unwrap_or_default(),
    };
    let backends = s
        .optional(problems, "backend", tables)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| read_backend(b, &location, i, problems))
        .collect();
    s.finish(problems);
    match (address, port, protocol) {
        (Some(address), Some(port), Some(protocol)) => Ok(VipConfig {
            name,
            address,
            port,
            protocol,
            guards,
            health_check,
            table,
            forwarding,
            eject_outliers,
            slow_start_s,
            rollback,
            sources,
            limits,
            quic,
            backends,
        }),
        _ => Err(UnreadableVip { location, backends }),
    }
}

fn read_backend(
    t: &Table,
    vip_location: &str,
    index: usize,
    problems: &mut Vec<Problem>,
) -> Option<BackendConfig> {
    let label = match (t.get("name"), t.get("address")) {
        (Some(Value::String(name)), _) => quoted(name),
        (_, Some(Value::String(address))) => format!("#{} ({address})", index + 1),
        _ => format!("#{}", index + 1),
    };
    let location = format!("{vip_location} backend {label}");
    let mut s = Section::new(t, location.clone());
    let name = s.optional(problems, "name", string);
    let address = s.required(problems, "address", ip);
    let port = s.optional(problems, "port", port);
    let weight = s.optional(problems, "weight", weight).unwrap_or(1);
    let mac = s.optional(problems, "mac", mac);
    let server_id = s.optional(problems, "server_id", server_id);
    let health_check = s
        .optional(problems, "health_check", table)
        .map(|h| {
            let location = format!("{location} health_check");
            read_health_check(h, &location, HealthScope::Backend, problems)
        })
        .unwrap_or_default();
    s.finish(problems);
    Some(BackendConfig {
        name,
        address: address?,
        port,
        weight,
        mac,
        health_check,
        server_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(text: &str) -> Vec<(String, String, String)> {
        read(text)
            .1
            .into_iter()
            .map(|p| (p.code.into_owned(), p.location, p.field))
            .collect()
    }

    #[test]
    fn a_bad_seed_is_refused_without_showing_it() {
        let (_, problems) = read("flow_hash_seed = \"0011223344556677889900aabbccddeZ\"\n");
        let text = format!("{problems:?}");
        assert_eq!(problems.len(), 1, "{text}");
        assert_eq!(problems[0].field, "flow_hash_seed");
        assert!(!text.contains("0011223344"), "the secret leaked: {text}");
        let (config, problems) = read("flow_hash_seed = \"00112233445566778899aabbccddeeff\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        let seed = config.and_then(|c| c.flow_hash_seed).expect("a seed");
        assert_eq!(seed.0.0, [0x0011_2233_4455_6677, 0x8899_aabb_ccdd_eeff]);
        assert_eq!(format!("{seed:?}"), "Secret(..)");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let (config, problems) = read("interface = \n");
        assert!(config.is_none());
        assert_eq!(problems[0].code, "syntax");
        assert_eq!(problems[0].field, "line 1, column 13");
    }

    /// A value no integer type holds is told the range validation
    /// enforces, and a number TOML itself cannot hold names its key.
    #[test]
    fn out_of_range_integers_say_the_documented_range_and_their_key() {
        for (line, range) in [
            ("connection_table_size = -5", "from 1024 to 67108864 flows"),
            (
                "connection_table_size = 5000000000",
                "from 1024 to 67108864 flows",
            ),
            ("tcp_idle_s = -1", "from 2 to 604800 seconds"),
            ("max_backends = -1", "from 1 to 1048575"),
            ("[health_check]\nrise = -1", "from 1 to 100"),
            (
                "[health_check]\ninterval_ms = -1",
                "from 1 to 3600000 milliseconds",
            ),
            ("[imbalance]\nwindow_s = -1", "from 2 to 3600 seconds"),
            ("[outlier]\ninterval_s = -1", "from 1 to 3600 seconds"),
            ("[outlier]\nmax_ejection_s = -1", "from 1 to 86400 seconds"),
            (
                "[outlier]\nmax_ejection_percent = -1",
                "from 0 to 100 percent",
            ),
        ] {
            let (_, problems) = read(line);
            let problem = problems
                .iter()
                .find(|p| p.code == "invalid-value")
                .unwrap_or_else(|| panic!("{line}: {problems:?}"));
            assert!(problem.message.contains(range), "{line}: {problem}");
        }
        let (_, problems) = read("\nmax_backends = 99999999999999999999\n");
        assert_eq!(problems[0].code, "syntax");
        assert_eq!(problems[0].field, "line 2, column 16");
        assert!(
            problems[0].message.starts_with("max_backends: "),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn all_shape_problems_come_at_once() {
        let text = r#"
            tabel_size = 65537
            [[vip]]
            name = "web"
            address = "198.18.100.1"
            port = 70000
            protocol = "sctp"
            backend = [{ address = "198.18.0.1", weight = -1 }, { weight = 1 }]
        "#;
        let found = codes(text);
        let want = [
            ("invalid-value", "vip \"web\"", "port"),
            ("invalid-value", "vip \"web\"", "protocol"),
            (
                "invalid-value",
                "vip \"web\" backend #1 (198.18.0.1)",
                "weight",
            ),
            ("missing-key", "vip \"web\" backend #2", "address"),
            ("unknown-key", "config", "tabel_size"),
        ];
        for (code, location, field) in want {
            assert!(
                found.contains(&(code.to_string(), location.to_string(), field.to_string())),
                "missing {code} at {location} {field}; got {found:?}"
            );
        }
        assert_eq!(found.len(), want.len(), "{found:?}");
    }
}
