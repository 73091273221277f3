//! Validation: every rule a config must pass before anything is applied,
//! checked in one pass so an operator sees all problems at once. The
//! concentration guards are computed from the real lookup tables that would
//! be installed, not from the weights alone.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use lb_common::maps::{FAMILY_IPV4, FAMILY_IPV6, encap_overhead};

use crate::{
    config::{
        BACKEND_SLOT_LIMITS, BackendConfig, CHECK_INTERVALS_MS, CONNECTION_TABLE_SIZES, CheckKind,
        Config, EJECTION_TIMES_S, Guards, HealthCheck, HealthOverrides, IDLE_TIMEOUTS,
        IMBALANCE_WINDOWS_S, OUTLIER_INTERVALS_S, Protocol, RISE_FALL, SLOW_STARTS_S, VipConfig,
        WATCH_TIMES_S, span,
    },
    problem::{Problem, is_unprintable, quoted},
    table::{ALLOWED_SIZES, BackendIdentity, TableError, TableSize, VipTable},
};

/// The largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 10_000;
/// A table needs at least this many slots per backend: fewer makes shares
/// coarse and disruption large (the Maglev paper uses M >> N).
pub const MIN_SLOTS_PER_BACKEND: u32 = 100;

/// The most lookup-table slots all VIPs together may hold (VIPs ×
/// `table_size`): 128 VIPs at the default size, 1,024 at 8191 or 16 at
/// 524287. It bounds the tables' kernel memory at 32 MiB per bank (4
/// bytes a slot; an apply fills the idle bank while the other serves) and
/// the time validation spends building them: a 1 MiB config of equally
/// weighted backends at the budget validates in 0.4-0.7 s on 2 cores, and
/// at twice the budget in up to 1.7 s.
pub const MAX_TABLE_SLOTS: u64 = 128 * 65_537;

/// The outcome of validating a config: `T` is what was kept of each VIP's
/// table (the whole table, unless the caller asked for less).
#[derive(Clone, Debug)]
pub struct Validation<T = VipTable> {
    /// The config as far as it could be read.
    pub config: Option<Config>,
    /// Every problem found.
    pub problems: Vec<Problem>,
    /// Per VIP of `config`, its table (or what was kept of it) when one
    /// could be built.
    pub tables: Vec<Option<T>>,
}

impl<T> Validation<T> {
    /// No errors (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.config.is_some() && !self.problems.iter().any(Problem::is_error)
    }

    /// Only the errors.
    pub fn errors(&self) -> Vec<Problem> {
        self.problems
            .iter()
            .filter(|p| p.is_error())
            .cloned()
            .collect()
    }
}

/// A config that passed validation, with the table of each of its VIPs:
/// only `Validation::valid` makes one, so holding one is proof.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    config: Config,
    /// One per VIP, every one present (an `Option` only to be one side of
    /// a plan, as a config that failed validation is).
    tables: Vec<Option<VipTable>>,
    warnings: Vec<Problem>,
}

impl ValidConfig {
    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Per VIP of the config, its table.
    pub fn tables(&self) -> &[Option<VipTable>] {
        &self.tables
    }

    /// What validation warned of.
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }
}

impl Validation {
    /// The valid config, or (when it has errors, or a VIP has no table)
    /// this validation back, to report.
    pub fn valid(self) -> Result<ValidConfig, Box<Validation>> {
        let complete = self.tables.iter().all(Option::is_some);
        match self {
            Validation {
                config: Some(config),
                problems,
                tables,
            } if complete && !problems.iter().any(Problem::is_error) => Ok(ValidConfig {
                config,
                tables,
                warnings: problems,
            }),
            invalid => Err(Box::new(invalid)),
        }
    }
}

/// Reads and validates config text.
pub fn validate(text: &str) -> Validation {
    validated(text, |_| {}, |table| table)
}

/// Reads and validates config text, keeping of each VIP's table only what
/// `keep` takes from it. Each table is judged and then dropped, so a caller
/// that keeps less than the table (`fulcrum validate`: the shares) holds
/// one table per worker thread at a time instead of one per VIP (a table
/// is up to 2 MiB, and a config up to 1,024 VIPs).
pub fn validate_keeping<T: Send>(text: &str, keep: impl Fn(VipTable) -> T + Sync) -> Validation<T> {
    validated(text, |_| {}, keep)
}

/// Reads config text, lets `adjust` change what was read (for example, hold
/// backends without a MAC at weight 0), and validates the result.
pub fn validate_with(text: &str, adjust: impl FnOnce(&mut Config)) -> Validation {
    validated(text, adjust, |table| table)
}

fn validated<T: Send>(
    text: &str,
    adjust: impl FnOnce(&mut Config),
    keep: impl Fn(VipTable) -> T + Sync,
) -> Validation<T> {
    let (mut config, mut problems) = Config::read(text);
    if let Some(config) = &mut config {
        adjust(config);
    }
    let Some(config) = config else {
        return Validation {
            config: None,
            problems,
            tables: Vec::new(),
        };
    };
    let (more, tables) = check(&config, keep);
    problems.extend(more);
    Validation {
        config: Some(config),
        problems,
        tables,
    }
}

/// Checks what a config means; returns its problems and, per VIP, what
/// `keep` took of its table.
pub fn check<T: Send>(
    config: &Config,
    keep: impl Fn(VipTable) -> T + Sync,
) -> (Vec<Problem>, Vec<Option<T>>) {
    let mut problems = Vec::new();
    let within_capacities = check_capacities(config, &mut problems);
    check_globals(config, &mut problems);
    super::sources::check_total(config, &mut problems);
    super::quic::check_total(config, &mut problems);
    let endpoints = earlier_twins(
        config
            .vips
            .iter()
            .map(|v| Some((v.address, v.port, v.protocol))),
    );
    let names = earlier_twins(config.vips.iter().map(|v| v.name.as_deref()));
    for (index, vip) in config.vips.iter().enumerate() {
        let twins = (endpoints[index], names[index]);
        check_vip(config, vip, twins, &mut problems);
    }
    check_orphaned_backends(config, &mut problems);
    if !within_capacities {
        // Refused already, and a table costs up to 2 MiB and milliseconds:
        // counts beyond the limits must not buy more of them (a 1 MiB
        // config holds about 10,000 small VIPs).
        return (problems, config.vips.iter().map(|_| None).collect());
    }
    let size = TableSize::new(config.table_size);
    let judged = crate::parallel::map(&config.vips, |vip| {
        let mut found = Vec::new();
        let table = judge_table(config, vip, size.clone(), &mut found);
        (found, table.map(&keep))
    });
    let tables = judged
        .into_iter()
        .map(|(found, table)| {
            problems.extend(found);
            table
        })
        .collect();
    (problems, tables)
}

/// Builds the table `vip` would get in a table of `size` and judges it by
/// the concentration guards.
fn judge_table(
    config: &Config,
    vip: &VipConfig,
    size: Result<TableSize, TableError>,
    problems: &mut Vec<Problem>,
) -> Option<VipTable> {
    let location = vip_location(vip);
    match size.and_then(|size| vip.lookup_table(size)) {
        Ok(table) => {
            let guards = vip.guards.apply(&config.guards);
            check_concentration(vip, &location, &table, &guards, problems);
            Some(table)
        }
        Err(why) => {
            problems.push(Problem::error(
                "guard-unchecked",
                location,
                "backend",
                "",
                format!(
                    "the lookup table cannot be built ({why}), so the concentration \
                     guards (max_backend_share, min_backends) could not be checked"
                ),
            ));
            None
        }
    }
}

/// For each key, the position of the first earlier item with the same key
/// (`None` for the first of its kind and for items without a key). One
/// pass with a hash map, so a pool of 200,000 backends is checked in
/// linear time.
fn earlier_twins<K: Hash + Eq>(keys: impl IntoIterator<Item = Option<K>>) -> Vec<Option<usize>> {
    let mut first = HashMap::new();
    keys.into_iter()
        .enumerate()
        .map(|(index, key)| match first.entry(key?) {
            Entry::Occupied(seen) => Some(*seen.get()),
            Entry::Vacant(slot) => {
                slot.insert(index);
                None
            }
        })
        .collect()
}

/// Which earlier backend of the same list each backend repeats: by
/// identity (what the table sees) and by name.
struct Twins {
    identity: Vec<Option<usize>>,
    name: Vec<Option<usize>>,
}

impl Twins {
    fn of(
        backends: &[BackendConfig],
        identity: impl Fn(&BackendConfig) -> BackendIdentity,
    ) -> Self {
        Self {
            identity: earlier_twins(backends.iter().map(|b| Some(identity(b)))),
            name: earlier_twins(backends.iter().map(|b| b.name.as_deref())),
        }
    }
}

/// How problems name each VIP: `vip "name"`, else its endpoint.
pub fn vip_location(vip: &VipConfig) -> String {
    match &vip.name {
        Some(name) => format!("vip {}", quoted(name)),
        None => format!("vip {}", vip.endpoint()),
    }
}

/// How problems name a backend: `backend "name"`, else its position and
/// address (the position tells apart two spellings of one address).
fn backend_location(vip: &str, index: usize, backend: &BackendConfig) -> String {
    match &backend.name {
        Some(name) => format!("{vip} backend {}", quoted(name)),
        None => format!("{vip} backend #{} ({})", index + 1, backend.address),
    }
}

/// Why text that is printed (plan, status, tables, the logs) cannot hold
/// control characters.
const UNPRINTABLE: &str = "must not hold control characters (newlines, escapes) or \
                           bidirectional marks: it is printed, where they would forge \
                           lines or drive the terminal";

/// Whether `text` holds a character that acts instead of showing.
fn unprintable(text: &str) -> bool {
    text.chars().any(is_unprintable)
}

/// What is wrong with a VIP's or backend's name, if anything (its code
/// and why): a name is how plan, status, tables and the logs show the
/// entry, so it must show, and show as written.
fn name_fault(name: &str) -> Option<(&'static str, &'static str)> {
    if name.trim().is_empty() {
        Some((
            "empty-name",
            "a name must not be empty or only spaces (leave it out to use the address)",
        ))
    } else if unprintable(name) {
        Some(("control-character", UNPRINTABLE))
    } else {
        None
    }
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Why an address cannot be a VIP or a backend, if it cannot.
fn reserved(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("the unspecified address");
    }
    if addr.is_multicast() {
        return Some("a multicast address");
    }
    if addr.is_loopback() {
        return Some("a loopback address");
    }
    match addr {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("in 0.0.0.0/8 (this network)"),
        _ => None,
    }
}

fn check_guard_ranges(guards: &Guards, location: &str, problems: &mut Vec<Problem>) {
    let fractions = [
        ("max_backend_share", guards.max_backend_share, false),
        ("max_flows_moved", guards.max_flows_moved, true),
        ("max_capacity_removed", guards.max_capacity_removed, true),
        ("max_clients_refused", guards.max_clients_refused, true),
    ];
    for (field, value, zero_ok) in fractions {
        let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
        if !(low_ok && value <= 1.0) {
            let range = if zero_ok {
                "from 0 to 1"
            } else {
                "above 0, at most 1"
            };
            problems.push(Problem::error(
                "guard-range",
                location,
                field,
                value.to_string(),
                format!("must be a share {range}"),
            ));
        }
    }
    if guards.min_backends == 0 {
        problems.push(Problem::error(
            "guard-range",
            location,
            "min_backends",
            "0",
            "must be at least 1",
        ));
    }
}

fn check_globals(config: &Config, problems: &mut Vec<Problem>) {
    if let Some(name) = &config.interface {
        let valid = !name.is_empty()
            && name.len() <= 15
            && !name
                .contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || is_unprintable(c));
        if !valid {
            problems.push(Problem::error(
                "interface-name",
                "config",
                "interface",
                format!("{name:?}"),
                "not a valid interface name (1 to 15 characters, no '/', ':', spaces or \
                 control characters)",
            ));
        }
    }
    if !ALLOWED_SIZES.contains(&config.table_size) {
        problems.push(Problem::error(
            "table-size",
            "config",
            "table_size",
            config.table_size.to_string(),
            format!("must be one of the primes {ALLOWED_SIZES:?}"),
        ));
    }
    if !CONNECTION_TABLE_SIZES.contains(&config.connection_table_size) {
        problems.push(Problem::error(
            "connection-table-size",
            "config",
            "connection_table_size",
            config.connection_table_size.to_string(),
            format!("must be {} flows", span(&CONNECTION_TABLE_SIZES)),
        ));
    }
    for (key, seconds) in [
        ("tcp_idle_s", config.idle.tcp_s),
        ("udp_idle_s", config.idle.udp_s),
    ] {
        if !IDLE_TIMEOUTS.contains(&seconds) {
            problems.push(Problem::error(
                "idle-timeout",
                "config",
                key,
                seconds.to_string(),
                format!(
                    "must be {} seconds (the data plane's clock ticks once a second)",
                    span(&IDLE_TIMEOUTS)
                ),
            ));
        }
    }
    if !BACKEND_SLOT_LIMITS.contains(&config.max_backends) {
        problems.push(Problem::error(
            "max-backends",
            "config",
            "max_backends",
            config.max_backends.to_string(),
            format!("must be {}", span(&BACKEND_SLOT_LIMITS)),
        ));
    }
    check_guard_ranges(&config.guards, "guards", problems);
    check_encapsulation(config, problems);
    check_health(config, problems);
    check_imbalance(&config.imbalance, problems);
    check_outlier(&config.outlier, problems);
    check_rollout(&config.rollout, problems);
    check_group(config, problems);
    for (section, key, path) in [
        ("api", "socket", Some(&config.api.socket)),
        (
            "announce",
            "bird_include",
            config.announce.as_ref().map(|a| &a.bird_include),
        ),
        (
            "announce",
            "bird_socket",
            config.announce.as_ref().map(|a| &a.bird_socket),
        ),
    ] {
        let Some(path) = path else {
            continue;
        };
        let shown = format!("{:?}", path.display().to_string());
        if !path.is_absolute() {
            problems.push(Problem::error(
                "relative-path",
                section,
                key,
                shown.clone(),
                "must be an absolute path",
            ));
        }
        if unprintable(&path.to_string_lossy()) {
            problems.push(Problem::error(
                "control-character",
                section,
                key,
                shown,
                UNPRINTABLE,
            ));
        }
    }
    if !config.api.metrics.ip().is_loopback() {
        problems.push(
            Problem::error(
                "metrics-exposed",
                "api",
                "metrics",
                config.api.metrics.to_string(),
                "metrics are served beyond this host; make sure that is intended",
            )
            .warning(),
        );
    }
}

/// The longest drain `fulcrum detach` may wait before detaching.
const MAX_DRAIN_S: u64 = 300;

/// A group's hosts must hash alike: a seed each host generated for itself
/// would send a flow that changes host to another backend. A drain is
/// bounded: `fulcrum detach` waits it out.
fn check_group(config: &Config, problems: &mut Vec<Problem>) {
    if let Some(group) = &config.group {
        if group.name.trim().is_empty() {
            problems.push(Problem::error(
                "group-name",
                "group",
                "name",
                format!("{:?}", group.name),
                "a group needs a name, the same on every host",
            ));
        } else if unprintable(&group.name) {
            problems.push(Problem::error(
                "control-character",
                "group",
                "name",
                format!("{:?}", group.name),
                UNPRINTABLE,
            ));
        }
        if config.flow_hash_seed.is_none() {
            problems.push(Problem::error(
                "group-without-seed",
                "config",
                "flow_hash_seed",
                "",
                format!(
                    "group {:?}: every host of a group must hash flows with the same seed, \
                     or a flow that moves between hosts (a host down, a router's ECMP \
                     change) moves to another backend; set flow_hash_seed, the same \
                     32 hex digits on every host",
                    group.name
                ),
            ));
        }
    }
    if let Some(announce) = &config.announce
        && announce.drain_s > MAX_DRAIN_S
    {
        problems.push(Problem::error(
            "drain-too-long",
            "announce",
            "drain_s",
            announce.drain_s.to_string(),
            format!("must be at most {MAX_DRAIN_S} seconds"),
        ));
    }
}

/// The smallest packet a client of each family must be able to send whole
/// (IPv6: RFC 8200; IPv4: RFC 791's 576, which TCP's default MSS assumes).
fn minimum_path_mtu(ipv6: bool) -> u16 {
    if ipv6 { 1280 } else { 576 }
}

/// The `[encapsulation]` settings and what encapsulating VIPs need of
/// them: an outer source prefix of each backend family used, of the right
/// family, and room under the MTU for the outer headers.
fn check_encapsulation(config: &Config, problems: &mut Vec<Problem>) {
    let encap = &config.encapsulation;
    for (key, prefix, ipv6) in [
        ("source4", encap.source4, false),
        ("source6", encap.source6, true),
    ] {
        if let Some(prefix) = prefix
            && prefix.address.is_ipv6() != ipv6
        {
            problems.push(Problem::error(
                "source-family",
                "encapsulation",
                key,
                prefix.to_string(),
                format!(
                    "{key} is the outer source of {} backends: give an {} prefix",
                    if ipv6 { "IPv6" } else { "IPv4" },
                    if ipv6 { "IPv6" } else { "IPv4" },
                ),
            ));
        }
    }
    for vip in config.vips.iter().filter(|v| v.forwarding.encapsulates()) {
        let location = vip_location(vip);
        for (ipv6, key, prefix) in [
            (false, "source4", encap.source4),
            (true, "source6", encap.source6),
        ] {
            if prefix.is_none() && vip.backends.iter().any(|b| b.address.is_ipv6() == ipv6) {
                problems.push(Problem::error(
                    "no-outer-source",
                    "encapsulation",
                    key,
                    "",
                    format!(
                        "{location} encapsulates to {} backends: set encapsulation.{key}, the \
                         prefix its outer source addresses come from (route it to this host)",
                        if ipv6 { "IPv6" } else { "IPv4" }
                    ),
                ));
            }
        }
        let Some(mtu) = encap.mtu else {
            continue;
        };
        let worst = vip
            .backends
            .iter()
            .map(|b| {
                let family = if b.address.is_ipv6() {
                    FAMILY_IPV6
                } else {
                    FAMILY_IPV4
                };
                encap_overhead(family, vip.forwarding.kernel()) as u16
            })
            .max()
            .unwrap_or(0);
        let least = minimum_path_mtu(vip.address.is_ipv6());
        if mtu < least + worst {
            problems.push(Problem::error(
                "mtu-headroom",
                &location,
                "forwarding",
                vip.forwarding.name(),
                format!(
                    "encapsulation.mtu {mtu} leaves {} bytes for a client's packet once \
                     encapsulated ({worst} bytes of outer headers), below the {least} every {} \
                     client may send; raise the MTU of the path to the backends",
                    mtu.saturating_sub(worst),
                    family(vip.address),
                ),
            ));
        }
    }
}

/// Every health-check setting in force somewhere: the global one, each
/// VIP's and each backend's (reported where the override is written).
fn check_health(config: &Config, problems: &mut Vec<Problem>) {
    let global = &config.health_check;
    check_health_settings(global, "health_check", problems);
    for vip in &config.vips {
        let location = format!("vip {}", quoted(&vip.label()));
        let at_vip = vip.health(global);
        check_overrides(
            &vip.health_check,
            &at_vip,
            &format!("{location} health_check"),
            problems,
        );
        let mut checked = 0;
        let mut at_port_zero = 0;
        for backend in &vip.backends {
            check_overrides(
                &backend.health_check,
                &backend.health_check.apply(&at_vip),
                &format!(
                    "{location} backend {} health_check",
                    quoted(&backend.label())
                ),
                problems,
            );
            let check = vip.check_of(backend, global);
            if check.settings.kind == CheckKind::None {
                continue;
            }
            checked += 1;
            // A `port = 0` written in a health_check table is reported where
            // it is written (`check_health_settings`).
            let own_port = check.settings.port.is_some();
            if check.target.port() == 0 {
                if !own_port {
                    at_port_zero += 1;
                }
                continue;
            }
            if vip.protocol == Protocol::Udp && !own_port {
                problems.push(
                    Problem::error(
                        "udp-health-check",
                        format!("{location} backend {}", quoted(&backend.label())),
                        "health_check.port",
                        check.target.to_string(),
                        "a UDP service is checked over TCP at its own port, where nothing may \
                         listen; set health_check.port (the VIP's or the backend's) to a TCP \
                         or HTTP health port, or kind = \"none\"",
                    )
                    .warning(),
                );
            }
        }
        if at_port_zero > 0 {
            // Once for the VIP: its port 0 is what the backends inherit, and
            // its health_check.port is the one setting that mends them all.
            let which = if at_port_zero == checked {
                format!("its {checked} backend(s)")
            } else {
                format!("{at_port_zero} of its {checked} checked backends")
            };
            problems.push(Problem::error(
                "health-check-port",
                &location,
                "health_check.port",
                "",
                format!(
                    "an any-port VIP (port 0) gives its checks no port: {which} would be \
                     checked at port 0, found down, and the VIP sent into panic; set \
                     health_check.port on this VIP (or in [health_check]) to the port the \
                     backends answer checks on, or kind = \"none\""
                ),
            ));
        }
    }
}

/// The settings an override table resolves to, where it sets the values
/// at fault: a value it inherits was reported where it is written.
fn check_overrides(
    overrides: &HealthOverrides,
    resolved: &HealthCheck,
    location: &str,
    problems: &mut Vec<Problem>,
) {
    let mut found = Vec::new();
    check_health_settings(resolved, location, &mut found);
    let sets = |field: &str| match field {
        "interval_ms" => overrides.interval_ms.is_some(),
        "timeout_ms" => overrides.timeout_ms.is_some() || overrides.interval_ms.is_some(),
        "rise" => overrides.rise.is_some(),
        "fall" => overrides.fall.is_some(),
        "http_path" => overrides.http_path.is_some(),
        "panic_threshold" => overrides.panic_threshold.is_some(),
        "max_changes_per_minute" => overrides.max_changes_per_minute.is_some(),
        "port" => overrides.port.is_some(),
        _ => true,
    };
    problems.extend(found.into_iter().filter(|p| sets(&p.field)));
}

/// One resolved set of health-check settings at `location`.
fn check_health_settings(hc: &HealthCheck, location: &str, problems: &mut Vec<Problem>) {
    let mut health = |field: &str, value: String, message: &str| {
        problems.push(Problem::error(
            "health-check",
            location,
            field,
            value,
            message,
        ));
    };
    if !CHECK_INTERVALS_MS.contains(&hc.interval_ms) {
        health(
            "interval_ms",
            hc.interval_ms.to_string(),
            &format!("must be {}", span(&CHECK_INTERVALS_MS)),
        );
    }
    if hc.timeout_ms == 0 || hc.timeout_ms >= hc.interval_ms {
        health(
            "timeout_ms",
            hc.timeout_ms.to_string(),
            "must be above 0 and below interval_ms",
        );
    }
    let counts = format!("must be {}", span(&RISE_FALL));
    if !RISE_FALL.contains(&hc.rise) {
        health("rise", hc.rise.to_string(), &counts);
    }
    if !RISE_FALL.contains(&hc.fall) {
        health("fall", hc.fall.to_string(), &counts);
    }
    if !hc.http_path.starts_with('/')
        || hc
            .http_path
            .chars()
            .any(|c| c.is_whitespace() || is_unprintable(c))
    {
        health(
            "http_path",
            format!("{:?}", hc.http_path),
            "must start with '/' and hold no spaces or control characters (it goes \
             into the request line)",
        );
    }
    if !(0.0..=1.0).contains(&hc.panic_threshold) {
        health(
            "panic_threshold",
            hc.panic_threshold.to_string(),
            "must be from 0 to 1 (a share of the VIP's weight)",
        );
    }
    if hc.port == Some(0) {
        health(
            "port",
            "0".into(),
            "must be from 1 to 65535: there is no port 0 to connect to, so every backend \
             would be found down",
        );
    }
    if hc.max_changes_per_minute == 0 {
        health(
            "max_changes_per_minute",
            "0".into(),
            "must be at least 1, or health checks could never take a dead backend out",
        );
    }
}

/// The imbalance detector's settings must be able to flag skew at all.
fn check_imbalance(settings: &crate::config::Imbalance, problems: &mut Vec<Problem>) {
    let mut bad = |field: &str, value: String, message: &str| {
        problems.push(Problem::error(
            "imbalance",
            "imbalance",
            field,
            value,
            message,
        ));
    };
    if !(settings.factor > 1.0 && settings.factor <= 100.0) {
        bad(
            "factor",
            settings.factor.to_string(),
            "must be above 1 and at most 100 (observed ÷ expected share)",
        );
    }
    if !IMBALANCE_WINDOWS_S.contains(&settings.window_s) {
        bad(
            "window_s",
            settings.window_s.to_string(),
            &format!("must be {} seconds", span(&IMBALANCE_WINDOWS_S)),
        );
    }
    if settings.for_s > 86_400 {
        bad(
            "for_s",
            settings.for_s.to_string(),
            "must be at most 86400 seconds",
        );
    }
    if !(0.0..=1e9).contains(&settings.min_flow_rate) {
        bad(
            "min_flow_rate",
            settings.min_flow_rate.to_string(),
            "must be from 0 to 1e9 new flows per second",
        );
    }
}

/// The outlier detector's settings must judge a backend against peers, on
/// evidence, and eject for a bounded time.
fn check_outlier(settings: &crate::config::Outlier, problems: &mut Vec<Problem>) {
    let mut bad = |field: &str, value: String, message: String| {
        problems.push(Problem::error("outlier", "outlier", field, value, message));
    };
    if !OUTLIER_INTERVALS_S.contains(&settings.interval_s) {
        bad(
            "interval_s",
            settings.interval_s.to_string(),
            format!("must be {} seconds", span(&OUTLIER_INTERVALS_S)),
        );
    }
    if settings.min_syns == 0 {
        bad(
            "min_syns",
            "0".into(),
            "must be at least 1: a backend with no attempts says nothing".into(),
        );
    }
    if settings.min_backends < 2 {
        bad(
            "min_backends",
            settings.min_backends.to_string(),
            "must be at least 2: a backend is judged against its peers".into(),
        );
    }
    if !(settings.success_factor > 0.0 && settings.success_factor < 1.0) {
        bad(
            "success_factor",
            settings.success_factor.to_string(),
            "must be above 0 and below 1 (a fraction of the peers' median success)".into(),
        );
    }
    if !(0.0..=1.0).contains(&settings.min_median) {
        bad(
            "min_median",
            settings.min_median.to_string(),
            "must be from 0 to 1 (a success ratio)".into(),
        );
    }
    for (field, value) in [
        ("base_ejection_s", settings.base_ejection_s),
        ("max_ejection_s", settings.max_ejection_s),
    ] {
        if !EJECTION_TIMES_S.contains(&value) {
            bad(
                field,
                value.to_string(),
                format!("must be {} seconds", span(&EJECTION_TIMES_S)),
            );
        }
    }
    if settings.base_ejection_s > settings.max_ejection_s {
        bad(
            "base_ejection_s",
            settings.base_ejection_s.to_string(),
            format!(
                "must be at most max_ejection_s ({})",
                settings.max_ejection_s
            ),
        );
    }
    if settings.max_ejection_percent > 100 {
        bad(
            "max_ejection_percent",
            settings.max_ejection_percent.to_string(),
            "must be from 0 (never eject) to 100".into(),
        );
    }
}

/// A watch must be able to compare, and to see a change at all.
fn check_rollout(settings: &crate::config::Rollout, problems: &mut Vec<Problem>) {
    let mut bad = |field: &str, value: String, message: String| {
        problems.push(Problem::error("rollout", "rollout", field, value, message));
    };
    if !WATCH_TIMES_S.contains(&settings.watch_s) {
        bad(
            "watch_s",
            settings.watch_s.to_string(),
            format!("must be {} seconds", span(&WATCH_TIMES_S)),
        );
    }
    if !(settings.max_success_drop > 0.0 && settings.max_success_drop <= 1.0) {
        bad(
            "max_success_drop",
            settings.max_success_drop.to_string(),
            "must be above 0 and at most 1 (a fall in handshake success)".into(),
        );
    }
    if settings.min_syns == 0 {
        bad(
            "min_syns",
            "0".into(),
            "must be at least 1: no attempts say nothing".into(),
        );
    }
}

/// The data plane's capacities, which `fulcrum run` would otherwise hit,
/// the budget of lookup-table slots, and the backends a table of
/// `table_size` slots holds; whether the config is within them all.
fn check_capacities(config: &Config, problems: &mut Vec<Problem>) -> bool {
    use lb_common::maps::MAX_VIPS;
    let before = problems.len();
    if config.vips.is_empty() && config.unreadable_vips.is_empty() {
        problems.push(
            Problem::error(
                "no-vips",
                "config",
                "vip",
                "0",
                "no VIPs: nothing would be balanced",
            )
            .warning(),
        );
    }
    let too_many_vips = config.vips.len() > MAX_VIPS as usize;
    if too_many_vips {
        problems.push(Problem::error(
            "too-many-vips",
            "config",
            "vip",
            config.vips.len().to_string(),
            format!("the data plane holds at most {MAX_VIPS} VIPs"),
        ));
    }
    let backends: usize = config.vips.iter().map(|v| v.backends.len()).sum();
    if backends > config.max_backends as usize {
        problems.push(Problem::error(
            "too-many-backends",
            "config",
            "backend",
            backends.to_string(),
            format!(
                "more backends over all VIPs than max_backends = {} (a backend serving \
                 two VIPs counts twice); raise max_backends",
                config.max_backends
            ),
        ));
    }
    // Judged only for a VIP count and a table size that are allowed
    // themselves: otherwise their own errors say what to change.
    let slots = config.vips.len() as u64 * u64::from(config.table_size);
    if !too_many_vips && ALLOWED_SIZES.contains(&config.table_size) && slots > MAX_TABLE_SLOTS {
        problems.push(Problem::error(
            "table-slots",
            "config",
            "table_size",
            config.table_size.to_string(),
            format!(
                "{} VIPs × table_size {} = {slots} slots, above the budget of \
                 {MAX_TABLE_SLOTS} ({} MiB of kernel memory per bank); lower table_size \
                 or split the VIPs over hosts",
                config.vips.len(),
                config.table_size,
                (MAX_TABLE_SLOTS * size_of::<u32>() as u64) >> 20
            ),
        ));
    }
    let limit = config.table_size / MIN_SLOTS_PER_BACKEND;
    for vip in config
        .vips
        .iter()
        .filter(|v| v.backends.len() as u32 > limit)
    {
        problems.push(Problem::error(
            "table-too-small",
            vip_location(vip),
            "backend",
            vip.backends.len().to_string(),
            format!(
                "table_size {} allows at most {limit} backends per VIP \
                 ({MIN_SLOTS_PER_BACKEND} slots each); raise table_size",
                config.table_size
            ),
        ));
    }
    !problems[before..].iter().any(Problem::is_error)
}

/// `twins`: the earlier VIPs with the same endpoint and the same name.
fn check_vip(
    config: &Config,
    vip: &VipConfig,
    twins: (Option<usize>, Option<usize>),
    problems: &mut Vec<Problem>,
) {
    let location = vip_location(vip);
    if let Some(why) = reserved(vip.address) {
        problems.push(Problem::error(
            "reserved-address",
            &location,
            "address",
            vip.address.to_string(),
            format!("a VIP cannot be {why}"),
        ));
    }
    if !SLOW_STARTS_S.contains(&vip.slow_start_s) {
        problems.push(Problem::error(
            "slow-start",
            &location,
            "slow_start_s",
            vip.slow_start_s.to_string(),
            format!("must be {} seconds", span(&SLOW_STARTS_S)),
        ));
    }
    super::sources::check(vip, &location, problems);
    super::quic::check(vip, &location, problems);
    if vip.protocol == Protocol::Udp && vip.eject_outliers == Some(true) {
        problems.push(Problem::error(
            "outlier-udp",
            &location,
            "eject_outliers",
            "true",
            "UDP has no handshake to judge a backend by: outliers are found on TCP VIPs only",
        ));
    }
    let (endpoint_twin, name_twin) = twins;
    if let Some(twin) = endpoint_twin.map(|i| &config.vips[i]) {
        problems.push(Problem::error(
            "duplicate-vip",
            &location,
            "address",
            vip.endpoint(),
            format!(
                "{} is already defined as {}",
                vip.endpoint(),
                vip_location(twin)
            ),
        ));
    }
    if let Some(name) = &vip.name
        && name_twin.is_some()
    {
        problems.push(Problem::error(
            "duplicate-name",
            &location,
            "name",
            format!("{name:?}"),
            "another VIP has the same name",
        ));
    }
    // Only the VIP's own overrides: the global values are checked once.
    let overrides = vip.guards.apply(&Guards::default());
    let mut own = Vec::new();
    check_guard_ranges(&overrides, &format!("{location} guards"), &mut own);
    problems.extend(own.into_iter().filter(|p| vip.guards.sets(&p.field)));
    if let Some(name) = &vip.name
        && let Some((code, why)) = name_fault(name)
    {
        problems.push(Problem::error(
            code,
            &location,
            "name",
            format!("{name:?}"),
            why,
        ));
    }
    if vip.backends.is_empty() {
        problems.push(Problem::error(
            "no-backends",
            &location,
            "backend",
            "",
            "a VIP needs at least one backend",
        ));
        return;
    }
    if vip.backends.iter().all(|b| b.weight == 0) {
        problems.push(Problem::error(
            "no-capacity",
            &location,
            "weight",
            "0",
            "every backend has weight 0, so the VIP could not take a single new flow",
        ));
    }
    let twins = Twins::of(&vip.backends, |b| BackendIdentity::new(vip.backend_addr(b)));
    for i in 0..vip.backends.len() {
        check_backend_in_vip(vip, &location, i, &twins, problems);
    }
}

/// The checks a backend needs no VIP for: its address, MAC, name and
/// weight, and (given `twins`) whether an earlier backend is the same server.
fn check_backend_alone(
    backends: &[BackendConfig],
    vip_location: &str,
    index: usize,
    twins: &Twins,
    problems: &mut Vec<Problem>,
) {
    let backend = &backends[index];
    let location = backend_location(vip_location, index, backend);
    let mut error = |code, field: &str, value: String, message: String| {
        problems.push(Problem::error(code, &location, field, value, message));
    };
    if let Some(why) = reserved(backend.address) {
        error(
            "reserved-address",
            "address",
            backend.address.to_string(),
            format!("a backend cannot be {why}"),
        );
    }
    if let Some(mac) = backend.mac {
        let unusable = if mac.0 == [0; 6] {
            Some("all zero")
        } else if mac.0[0] & 1 != 0 {
            Some("a multicast or broadcast address")
        } else {
            None
        };
        if let Some(why) = unusable {
            error(
                "invalid-mac",
                "mac",
                mac.to_string(),
                format!("a backend MAC must be a unicast address; this one is {why}"),
            );
        }
    }
    match (&backend.name, backend.name.as_deref().and_then(name_fault)) {
        (Some(name), Some((code, why))) => error(code, "name", format!("{name:?}"), why.into()),
        (Some(name), None) if twins.name[index].is_some() => error(
            "duplicate-name",
            "name",
            format!("{name:?}"),
            "another backend of this VIP has the same name".into(),
        ),
        _ => {}
    }
    if backend.weight > MAX_WEIGHT {
        error(
            "weight-range",
            "weight",
            backend.weight.to_string(),
            format!("weights go from 0 (drain) to {MAX_WEIGHT}"),
        );
    }
    if let Some(twin_index) = twins.identity[index] {
        let twin = &backends[twin_index];
        let twin_location = backend_location(vip_location, twin_index, twin);
        if twin.address == backend.address {
            error(
                "duplicate-backend",
                "address",
                backend.address.to_string(),
                format!(
                    "the same server is already listed as {twin_location}; listing it \
                     twice would double its share"
                ),
            );
        } else {
            error(
                "identity-clash",
                "address",
                backend.address.to_string(),
                format!(
                    "{} is another spelling of {} ({twin_location}): an IPv4-mapped IPv6 \
                     address is the IPv4 address, so the table would see one server \
                     twice; list it once",
                    backend.address, twin.address
                ),
            );
        }
    }
}

/// The checks of a backend against its VIP.
fn check_backend_in_vip(
    vip: &VipConfig,
    vip_location: &str,
    index: usize,
    twins: &Twins,
    problems: &mut Vec<Problem>,
) {
    check_backend_alone(&vip.backends, vip_location, index, twins, problems);
    let backend = &vip.backends[index];
    let location = backend_location(vip_location, index, backend);
    let mut error = |code, field: &str, value: String, message: String| {
        problems.push(Problem::error(code, &location, field, value, message));
    };
    if backend.address == vip.address {
        error(
            "backend-is-vip",
            "address",
            backend.address.to_string(),
            "a backend cannot be the VIP itself".into(),
        );
    }
    if backend.address.is_ipv4() != vip.address.is_ipv4() && !vip.forwarding.encapsulates() {
        error(
            "family-mismatch",
            "address",
            backend.address.to_string(),
            format!(
                "the VIP is {} and this backend {}: L2 direct server return forwards \
                 the client's packet unchanged, so the backend must have the VIP's \
                 address family (forwarding = \"ipip\" or \"gue\" carries either \
                 family in the other)",
                family(vip.address),
                family(backend.address)
            ),
        );
    }
    if let Some(port) = backend.port {
        if vip.port == 0 {
            error(
                "port-mismatch",
                "port",
                port.to_string(),
                "an any-port VIP (port 0) forwards every port unchanged; leave the \
                 backend port unset"
                    .into(),
            );
        } else if port != vip.port {
            error(
                "port-mismatch",
                "port",
                port.to_string(),
                format!(
                    "no forwarding mode changes ports (L2 DSR rewrites MACs, IP in IP and \
                     GUE carry the packet whole): the backend must listen on the VIP's port {}",
                    vip.port
                ),
            );
        }
    }
}

/// Backends of a VIP whose own keys could not be read still get every check
/// that needs no VIP, so one bad key does not hide the rest.
fn check_orphaned_backends(config: &Config, problems: &mut Vec<Problem>) {
    for orphans in &config.unreadable_vips {
        // Without the VIP's port, an unset backend port is its own identity.
        let twins = Twins::of(&orphans.backends, |b| {
            BackendIdentity::new(SocketAddr::new(b.address, b.port.unwrap_or(0)))
        });
        for index in 0..orphans.backends.len() {
            check_backend_alone(
                &orphans.backends,
                &orphans.location,
                index,
                &twins,
                problems,
            );
        }
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// The concentration guards on the table `vip` would get: enough backends
/// taking new flows, and none above its share limit.
pub fn check_concentration(
    vip: &VipConfig,
    location: &str,
    table: &VipTable,
    guards: &Guards,
    problems: &mut Vec<Problem>,
) {
    let active = vip.backends.iter().filter(|b| b.weight > 0).count() as u32;
    if active < guards.min_backends {
        problems.push(Problem::error(
            "too-few-backends",
            location,
            "backend",
            active.to_string(),
            format!(
                "only {active} backend(s) can take new flows; guards.min_backends = {0} asks \
                 for at least {0} (set guards.min_backends = {active} on this VIP if that is \
                 intended)",
                guards.min_backends
            ),
        ));
    }
    let single_allowed = active == 1 && guards.min_backends <= 1;
    if single_allowed {
        return;
    }
    // Quotas are exact to one slot: a 1:1 pair in an odd-sized table gives
    // one backend one slot more than half, which is not concentration.
    let max_slots = (guards.max_backend_share * table.table.len() as f64).ceil() as u32;
    for (i, backend) in vip.backends.iter().enumerate() {
        let share = table.share(i);
        if table.slots[i] > max_slots {
            problems.push(Problem::error(
                "concentration",
                backend_location(location, i, backend),
                "weight",
                backend.weight.to_string(),
                format!(
                    "this backend would take {} of the VIP's new flows, above the limit \
                     of {} (guards.max_backend_share; raise it on this VIP if intended)",
                    percent(share),
                    percent(guards.max_backend_share)
                ),
            ));
        }
    }
}
