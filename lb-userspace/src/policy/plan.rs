//! The plan: what applying a config would change, VIP by VIP — each
//! backend's share before and after, the fraction of flows whose backend
//! changes, the capacity taken away — and the guards' verdicts. It is the
//! one gate every path that applies a config goes through. A change is
//! judged by the guards in force (the current config's), tightened where
//! the new config is stricter; loosening a guard is itself a change that
//! needs `--force`. Pure: two validated configs in, a plan out.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, GuardOverrides, Guards, ServerId, VipConfig},
    policy::health::{Down, judge},
    policy::refusal::{Clients, Refusal, refusal},
    policy::validate::{ValidConfig, Validation, check_concentration, vip_location},
    problem::{Problem, quoted},
    table::VipTable,
    table::algorithm::Algorithm,
};

/// What happened to a VIP or a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the new config.
    Added,
    /// Only in the current config.
    Removed,
    /// In both, different.
    Changed,
    /// In both, the same.
    Unchanged,
}

impl Change {
    /// Its name, as the plan's JSON spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// One backend's before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendPlan {
    /// Label.
    pub name: String,
    /// Address and port (its identity).
    pub address: SocketAddr,
    /// What happens to it.
    pub change: Change,
    /// Weight now (absent if new).
    pub weight_before: Option<u32>,
    /// Weight after (absent if removed).
    pub weight_after: Option<u32>,
    /// Share of the VIP's table now (0..=1).
    pub share_before: f64,
    /// Share after.
    pub share_after: f64,
    /// Its QUIC server ID now, in hex (on a QUIC VIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id_before: Option<String>,
    /// Its QUIC server ID after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id_after: Option<String>,
}

/// One VIP's before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipPlan {
    /// Its name (its endpoint when it has none).
    pub name: String,
    /// `address:port/protocol`.
    pub endpoint: String,
    /// What happens to it.
    pub change: Change,
    /// Its table algorithm before and after (the same one on both sides
    /// for a VIP added or removed).
    pub table: (Algorithm, Algorithm),
    /// Fraction of the flow hash space whose backend changes (0..=1).
    pub flows_moved: f64,
    /// Fraction of the current total weight taken away (0..=1).
    pub capacity_removed: f64,
    /// Its backends: the new config's order, then removed ones.
    pub backends: Vec<BackendPlan>,
    /// After the change, how many more of its healthy backends could fail,
    /// heaviest first, before it panics (`None` for a removed VIP).
    pub failures_to_panic: Option<usize>,
    /// After the change, it would be in panic (with the backends found
    /// dead now).
    pub panic: bool,
    /// What a change of its source rules or limits would refuse of the
    /// clients the data plane saw (absent when they do not change, or
    /// when no traffic was at hand: a plan against a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// A whole plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Lookup-table size before and after (a change rebuilds every table).
    pub table_size: (u32, u32),
    /// Per VIP: the new config's order, then removed VIPs.
    pub vips: Vec<VipPlan>,
    /// Guard verdicts and other findings.
    pub problems: Vec<Problem>,
    /// Guards `--force` overrode (recorded as warnings).
    pub forced: Vec<Problem>,
    /// Whether nothing was installed, so the config's own guards applied.
    pub first_install: bool,
}

impl Plan {
    /// Whether the plan may be applied.
    pub fn accepted(&self) -> bool {
        !self.problems.iter().any(Problem::is_error)
    }
}

/// A config with the tables validation built for it.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    /// The config.
    pub config: &'a Config,
    /// Per VIP of `config`.
    pub tables: &'a [Option<VipTable>],
}

impl Validation {
    /// This validation as one side of a plan, if its config could be read.
    pub fn side(&self) -> Option<Side<'_>> {
        self.config.as_ref().map(|config| Side {
            config,
            tables: &self.tables,
        })
    }
}

impl ValidConfig {
    /// This config as one side of a plan.
    pub fn side(&self) -> Side<'_> {
        Side {
            config: self.config(),
            tables: self.tables(),
        }
    }
}

/// What makes two configs' VIPs the same VIP.
fn endpoint_key(vip: &VipConfig) -> (std::net::IpAddr, u16, crate::config::Protocol) {
    (vip.address, vip.port, vip.protocol)
}

/// Samples used to compare tables of different sizes.
const SAMPLES: u32 = 1 << 18;

/// The fraction of the hash space whose backend identity differs.
fn moved_fraction(before: &VipTable, after: &VipTable) -> f64 {
    let owner = |t: &VipTable, hash: u32| {
        t.identities[t.table[(hash % t.table.len() as u32) as usize] as usize]
    };
    if before.table.len() == after.table.len() {
        let moved = (0..before.table.len() as u32)
            .filter(|&slot| owner(before, slot) != owner(after, slot))
            .count();
        return moved as f64 / before.table.len() as f64;
    }
    let moved = (0..SAMPLES)
        .map(|i| lb_common::flow_hash::mix64(u64::from(i)) as u32)
        .filter(|&hash| owner(before, hash) != owner(after, hash))
        .count();
    moved as f64 / f64::from(SAMPLES)
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Plans moving from `current` (nothing installed if `None`) to `next`.
/// With `force`, guard loosenings and blast-radius refusals become
/// recorded warnings. With `clients` (what the data plane saw), a change
/// of source rules or limits is also judged by the clients it would
/// refuse.
///
/// With nothing installed there are no guards in force: the config's own
/// apply, and where they are looser than the built-in defaults the plan
/// says so in warnings.
pub fn plan(
    current: Option<Side<'_>>,
    next: Side<'_>,
    force: bool,
    clients: Option<&Clients>,
) -> Plan {
    let first_install = current.is_none();
    // The defaults stand in for the rules in force when nothing is.
    let empty = Config {
        vips: Vec::new(),
        unreadable_vips: Vec::new(),
        guards: Guards::default(),
        ..next.config.clone()
    };
    let current = current.unwrap_or(Side {
        config: &empty,
        tables: &[],
    });
    let mut vips = Vec::new();
    let mut problems = Vec::new();
    loosened_guards(
        "guards",
        &current.config.guards,
        &next.config.guards,
        |_| true,
        &mut problems,
    );
    let current_vips: HashMap<_, _> = current
        .config
        .vips
        .iter()
        .zip(current.tables)
        .map(|(vip, table)| (endpoint_key(vip), (vip, table)))
        .collect();
    for (vip, table) in next.config.vips.iter().zip(next.tables) {
        let old = current_vips.get(&endpoint_key(vip)).copied();
        let mut vip_plan = match old {
            None => vip_plan(None, Some((vip, table.as_ref())), Change::Added),
            Some((old_vip, old_table)) => vip_plan(
                Some((old_vip, old_table.as_ref())),
                Some((vip, table.as_ref())),
                Change::Changed,
            ),
        };
        if let Some(clients) = clients {
            let seen = clients.get(&vip.endpoint()).cloned().unwrap_or_default();
            vip_plan.refused = refusal(old.map(|(o, _)| o), vip, &seen);
        }
        // A VIP added now is judged by the global guards in force.
        let old_overrides = old.map_or(GuardOverrides::default(), |(o, _)| o.guards);
        let in_force = old_overrides.apply(&current.config.guards);
        let brought = vip.guards.apply(&next.config.guards);
        let location = format!("{} guards", plan_location(&vip_plan));
        // A global loosening is reported once, on the global line.
        let own = |field: &str| vip.guards.sets(field) || old_overrides.sets(field);
        loosened_guards(&location, &in_force, &brought, own, &mut problems);
        // Even with --force the change is judged by the rules in force, so
        // the record names everything the override let through.
        let judged = if first_install {
            brought
        } else {
            in_force.stricter(&brought)
        };
        // Validation checked concentration by the guards the config
        // brings; judge it again only where the rules in force are stricter.
        if judged != brought
            && let Some(table) = table
        {
            let mut found = Vec::new();
            check_concentration(vip, &vip_location(vip), table, &judged, &mut found);
            for mut problem in found {
                problem.message.push_str(
                    "; judged by the guards in force, not the looser ones this change brings",
                );
                problems.push(problem);
            }
        }
        check_blast_radius(&vip_plan, &judged, &mut problems);
        if let Some((old_vip, _)) = old {
            check_quic_change(old_vip, vip, &vip_plan, &mut problems);
        }
        vips.push(vip_plan);
    }
    let next_endpoints: HashSet<_> = next.config.vips.iter().map(endpoint_key).collect();
    for (old_vip, old_table) in current.config.vips.iter().zip(current.tables) {
        if !next_endpoints.contains(&endpoint_key(old_vip)) {
            let vip_plan = vip_plan(Some((old_vip, old_table.as_ref())), None, Change::Removed);
            let guards = old_vip.guards.apply(&current.config.guards);
            check_blast_radius(&vip_plan, &guards, &mut problems);
            vips.push(vip_plan);
        }
    }
    let forced = resolve_overridable(&mut problems, force, first_install);
    let mut plan = Plan {
        table_size: (current.config.table_size, next.config.table_size),
        vips,
        problems,
        forced,
        first_install,
    };
    plan.judge_health(next.config, &BTreeSet::new());
    plan
}

impl Plan {
    /// Fills in each VIP's distance to panic under `next` (the planned
    /// config), with the backends in `down` found dead.
    pub fn judge_health(&mut self, next: &Config, down: &BTreeSet<Down>) {
        let verdicts = judge(next, down);
        for vip in &mut self.vips {
            let verdict = verdicts.iter().find(|v| v.endpoint == vip.endpoint);
            vip.failures_to_panic = verdict.map(|v| v.failures_to_panic);
            vip.panic = verdict.is_some_and(|v| v.panic);
        }
    }
}

/// Refuses each threshold `next` loosens relative to `in_force`, among
/// the fields `reported` selects: one problem per threshold, old → new.
fn loosened_guards(
    location: &str,
    in_force: &Guards,
    next: &Guards,
    reported: impl Fn(&str) -> bool,
    problems: &mut Vec<Problem>,
) {
    for (old, new) in in_force.values().iter().zip(next.values()) {
        if old.loosened_by(&new) && reported(old.field) {
            problems.push(Problem::error(
                "guard-loosened",
                location,
                old.field,
                format!("{} → {}", old.value, new.value),
                "looser than the guard in force; a change is judged by the guards in \
                 force, so loosening one is a change of its own",
            ));
        }
    }
}

type Entry<'a> = (&'a VipConfig, Option<&'a VipTable>);

fn vip_plan(before: Option<Entry<'_>>, after: Option<Entry<'_>>, change: Change) -> VipPlan {
    let vip = after.or(before).expect("a VIP on at least one side").0;
    let positions = |entry: Option<Entry<'_>>| -> HashMap<SocketAddr, usize> {
        entry.map_or_else(HashMap::new, |(vip, _)| {
            let addrs = vip.backends.iter().map(|b| vip.backend_addr(b));
            addrs.enumerate().map(|(i, addr)| (addr, i)).collect()
        })
    };
    let (positions_before, positions_after) = (positions(before), positions(after));
    let ids = |entry: Option<Entry<'_>>| {
        entry
            .and_then(|(vip, _)| super::quic::server_ids(vip))
            .unwrap_or_default()
    };
    let (ids_before, ids_after) = (ids(before), ids(after));
    let id = |ids: &[ServerId], positions: &HashMap<SocketAddr, usize>, addr| {
        let at = positions.get(&addr)?;
        ids.get(*at).map(ToString::to_string)
    };
    let share = |entry: Option<Entry<'_>>,
                 positions: &HashMap<SocketAddr, usize>,
                 addr: SocketAddr|
     -> (Option<u32>, f64) {
        match (entry, positions.get(&addr)) {
            (Some((vip, table)), Some(&i)) => (
                Some(vip.backends[i].weight),
                table.map_or(0.0, |t| t.share(i)),
            ),
            _ => (None, 0.0),
        }
    };
    let mut backends = Vec::new();
    let mut listed_addrs = HashSet::new();
    for (side_vip, _) in after.into_iter().chain(before) {
        for backend in &side_vip.backends {
            let addr = side_vip.backend_addr(backend);
            if !listed_addrs.insert(addr) {
                continue;
            }
            let (weight_before, share_before) = share(before, &positions_before, addr);
            let (weight_after, share_after) = share(after, &positions_after, addr);
            let server_id_before = id(&ids_before, &positions_before, addr);
            let server_id_after = id(&ids_after, &positions_after, addr);
            let change = match (weight_before, weight_after) {
                (None, _) => Change::Added,
                (_, None) => Change::Removed,
                (b, a)
                    if b == a
                        && (share_before - share_after).abs() < 1e-12
                        && server_id_before == server_id_after =>
                {
                    Change::Unchanged
                }
                _ => Change::Changed,
            };
            backends.push(BackendPlan {
                name: backend.label(),
                address: addr,
                change,
                weight_before,
                weight_after,
                share_before,
                share_after,
                server_id_before,
                server_id_after,
            });
        }
    }
    let total_before: u64 = backends
        .iter()
        .map(|b| u64::from(b.weight_before.unwrap_or(0)))
        .sum();
    let removed: u64 = backends
        .iter()
        .map(|b| {
            u64::from(b.weight_before.unwrap_or(0))
                .saturating_sub(u64::from(b.weight_after.unwrap_or(0)))
        })
        .sum();
    let capacity_removed = if total_before == 0 {
        0.0
    } else {
        removed as f64 / total_before as f64
    };
    let flows_moved = match (before, after) {
        (Some((_, Some(old))), Some((_, Some(new)))) => moved_fraction(old, new),
        (Some(_), _) if change != Change::Added => 1.0,
        _ => 0.0,
    };
    let change = if change == Change::Changed
        && flows_moved == 0.0
        && backends.iter().all(|b| b.change == Change::Unchanged)
    {
        Change::Unchanged
    } else {
        change
    };
    let algorithm = |entry: Option<Entry<'_>>| entry.map(|(vip, _)| vip.table);
    let table = (
        algorithm(before).unwrap_or(vip.table),
        algorithm(after).unwrap_or(vip.table),
    );
    let admission_changed = match (before, after) {
        (Some((old, _)), Some((new, _))) => {
            old.sources != new.sources || old.limits != new.limits || old.quic != new.quic
        }
        _ => false,
    };
    let change = if change == Change::Unchanged && (table.0 != table.1 || admission_changed) {
        Change::Changed
    } else {
        change
    };
    VipPlan {
        name: vip.label(),
        endpoint: vip.endpoint(),
        change,
        table,
        flows_moved,
        capacity_removed,
        backends,
        failures_to_panic: None,
        panic: false,
        refused: None,
    }
}

/// Warns of a change that strands a QUIC VIP's connections: a new
/// server-ID layout (or none), or a kept backend's new server ID. The
/// connection IDs its servers issued name the old ones: their short
/// headers go by the 4-tuple until the connections end, and a client
/// that changes address meanwhile loses its connection.
fn check_quic_change(
    old: &VipConfig,
    new: &VipConfig,
    plan: &VipPlan,
    problems: &mut Vec<Problem>,
) {
    let Some(quic) = old.quic else {
        return;
    };
    let stranded = "the connection IDs issued so far name the old ones: their packets go by the \
                    4-tuple until those connections end, and a client that changes address \
                    meanwhile loses its connection";
    if new.quic != Some(quic) {
        let after = new.quic.map_or_else(
            || "no routing by connection ID".to_string(),
            |q| {
                format!(
                    "server IDs of {} octets at offset {}, config {}",
                    q.server_id_len, q.server_id_offset, q.config_id
                )
            },
        );
        problems.push(
            Problem::error(
                "quic-change",
                plan_location(plan),
                "quic",
                after,
                format!(
                    "the VIP's QUIC routing changes from server IDs of {} octets at offset {}, \
                 config {}: {stranded}; make it when few connections are open",
                    quic.server_id_len, quic.server_id_offset, quic.config_id
                ),
            )
            .warning(),
        );
        return;
    }
    let changed: Vec<String> = plan
        .backends
        .iter()
        .filter(|b| {
            b.server_id_before.is_some()
                && b.server_id_after.is_some()
                && b.server_id_before != b.server_id_after
        })
        .map(|b| {
            format!(
                "{} {} → {}",
                b.name,
                b.server_id_before.as_deref().unwrap_or(""),
                b.server_id_after.as_deref().unwrap_or("")
            )
        })
        .collect();
    if !changed.is_empty() {
        problems.push(
            Problem::error(
                "server-id-change",
                plan_location(plan),
                "server_id",
                changed.join(", "),
                format!("kept backends get new QUIC server IDs: {stranded}"),
            )
            .warning(),
        );
    }
    // A removed backend's ID on a new one: its open connections would
    // reach the new server, which cannot decrypt them.
    let reused: Vec<String> = plan
        .backends
        .iter()
        .filter(|b| b.change == Change::Added)
        .filter_map(|added| {
            let id = added.server_id_after.as_deref()?;
            let gone = plan.backends.iter().find(|b| {
                b.change == Change::Removed && b.server_id_before.as_deref() == Some(id)
            })?;
            Some(format!("{} takes {id} from {}", added.name, gone.name))
        })
        .collect();
    if !reused.is_empty() {
        problems.push(
            Problem::error(
                "server-id-reuse",
                plan_location(plan),
                "server_id",
                reused.join(", "),
                "a new backend takes the server ID of one removed in the same change: the \
                 removed server's open connections would reach the new one, which cannot \
                 decrypt them; give the new backend another server_id",
            )
            .warning(),
        );
    }
}

/// Where plan problems point: the VIP's name and endpoint, because the
/// same name may be removed at one endpoint and added at another.
fn plan_location(vip: &VipPlan) -> String {
    if vip.name == vip.endpoint {
        format!("vip {} ({})", vip.endpoint, vip.endpoint)
    } else {
        format!("vip {} ({})", quoted(&vip.name), vip.endpoint)
    }
}

fn check_blast_radius(vip: &VipPlan, guards: &Guards, problems: &mut Vec<Problem>) {
    let location = plan_location(vip);
    if vip.change == Change::Removed {
        problems.push(Problem::error(
            "blast-radius-removal",
            location,
            "vip",
            vip.endpoint.clone(),
            "removing this VIP drops all of its flows and all of its capacity",
        ));
        return;
    }
    if vip.flows_moved > guards.max_flows_moved + 1e-12 {
        problems.push(Problem::error(
            "blast-radius-flows",
            &location,
            "flows_moved",
            percent(vip.flows_moved),
            format!(
                "this change moves {} of the VIP's flows to another backend, above the \
                 limit of {} (guards.max_flows_moved)",
                percent(vip.flows_moved),
                percent(guards.max_flows_moved)
            ),
        ));
    }
    if let Some(refused) = &vip.refused
        && refused.share() > guards.max_clients_refused + 1e-12
    {
        problems.push(Problem::error(
            "blast-radius-clients",
            &location,
            "sources",
            percent(refused.share()),
            format!(
                "this change refuses {} of the VIP's {} active flows and {} of the {} flows \
                 its clients opened in the last {} s ({}), above the limit of {} \
                 (guards.max_clients_refused)",
                refused.active_flows,
                refused.active_total,
                refused.new_flows,
                refused.new_total,
                refused.window_s,
                percent(refused.share()),
                percent(guards.max_clients_refused)
            ),
        ));
    }
    if vip.capacity_removed > guards.max_capacity_removed + 1e-12 {
        problems.push(Problem::error(
            "blast-radius-capacity",
            &location,
            "capacity_removed",
            percent(vip.capacity_removed),
            format!(
                "this change takes away {} of the VIP's capacity (weight), above the limit \
                 of {} (guards.max_capacity_removed)",
                percent(vip.capacity_removed),
                percent(guards.max_capacity_removed)
            ),
        ));
    }
}

/// Tells the operator what to do about each verdict of the plan (every one
/// may be overridden: config errors are not the plan's), or records that
/// `--force` overrode it. On a first install, loosenings of the built-in
/// defaults are warnings: no guards were in force.
fn resolve_overridable(problems: &mut [Problem], force: bool, first_install: bool) -> Vec<Problem> {
    let mut forced = Vec::new();
    for problem in problems.iter_mut().filter(|p| p.is_error()) {
        if first_install && problem.code == "guard-loosened" {
            problem.message = format!(
                "looser than the built-in default ({}); nothing is installed, so the \
                 config's own guards apply",
                problem.value
            );
            *problem = problem.clone().warning();
        } else if force {
            problem.message.push_str("; overridden by --force");
            *problem = problem.clone().warning();
            forced.push(problem.clone());
        } else if problem.code == "blast-radius-removal" {
            problem.message.push_str("; confirm with --force");
        } else if problem.code.starts_with("blast-radius") {
            problem
                .message
                .push_str("; apply in smaller steps, or override with --force");
        } else {
            problem
                .message
                .push_str("; confirm with --force (the override is recorded)");
        }
    }
    forced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::validate;

    fn pool(weights: &[u32], extra: &str) -> String {
        let mut text = format!(
            "{extra}\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n"
        );
        for (i, w) in weights.iter().enumerate() {
            text += &format!(
                "[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}\n",
                i + 1
            );
        }
        text
    }

    fn plan_texts(current: Option<&str>, next: &str, force: bool) -> Plan {
        let next = validate(next);
        let current = current.map(validate);
        let current = current.as_ref().map(|c| c.side().unwrap());
        plan(current, next.side().unwrap(), force, None)
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let text = pool(&[1, 1, 1, 1], "");
        let plan = plan_texts(Some(&text), &text, false);
        assert!(plan.accepted());
        assert_eq!(plan.vips[0].change, Change::Unchanged);
        assert_eq!(plan.vips[0].flows_moved, 0.0);
        assert!(
            plan.vips[0]
                .backends
                .iter()
                .all(|b| b.change == Change::Unchanged)
        );
    }

    #[test]
    fn draining_one_of_four_moves_about_a_quarter() {
        let plan = plan_texts(
            Some(&pool(&[1, 1, 1, 1], "")),
            &pool(&[1, 1, 1, 0], ""),
            false,
        );
        let vip = &plan.vips[0];
        assert_eq!(vip.change, Change::Changed);
        assert_eq!(vip.capacity_removed, 0.25);
        assert!(
            (0.25..0.35).contains(&vip.flows_moved),
            "{}",
            vip.flows_moved
        );
        assert!(plan.accepted(), "{:?}", plan.problems);
        assert_eq!(vip.backends[3].share_after, 0.0);
        assert!((vip.backends[3].share_before - 0.25).abs() < 0.001);
    }

    #[test]
    fn halving_a_pool_is_refused_unless_forced() {
        let before = pool(&[1, 1, 1, 1], "");
        let after = pool(&[1, 1, 0, 0], "");
        let refused = plan_texts(Some(&before), &after, false);
        let codes: Vec<_> = refused.problems.iter().map(|p| &*p.code).collect();
        assert_eq!(codes, vec!["blast-radius-flows"], "{:?}", refused.problems);
        assert!(!refused.accepted());
        let forced = plan_texts(Some(&before), &after, true);
        assert!(forced.accepted());
        assert_eq!(forced.forced.len(), 1);
        assert!(forced.forced[0].message.contains("overridden by --force"));
    }

    #[test]
    fn per_vip_overrides_raise_the_limits() {
        let relaxed = "[guards]\nmax_flows_moved = 0.6\nmax_capacity_removed = 0.6";
        let plan = plan_texts(
            Some(&pool(&[1, 1, 1, 1], relaxed)),
            &pool(&[1, 1, 0, 0], relaxed),
            false,
        );
        assert!(plan.accepted(), "{:?}", plan.problems);
    }

    #[test]
    fn removing_a_vip_takes_all_its_capacity() {
        let plan = plan_texts(
            Some(&pool(&[1, 1], "")),
            "[[vip]]\naddress = \"198.18.100.9\"\nport = 1\nprotocol = \"udp\"\nbackend = [{ address = \"198.18.0.9\" }, { address = \"198.18.0.8\" }]",
            false,
        );
        assert_eq!(plan.vips[0].change, Change::Added);
        assert_eq!(plan.vips[1].change, Change::Removed);
        assert_eq!(plan.vips[1].capacity_removed, 1.0);
        assert_eq!(plan.vips[1].flows_moved, 1.0);
        let codes: Vec<_> = plan.problems.iter().map(|p| &*p.code).collect();
        assert_eq!(codes, vec!["blast-radius-removal"]);
        assert!(plan.problems[0].message.ends_with("confirm with --force"));
        assert!(!plan.accepted());
    }

    #[test]
    fn a_new_table_size_is_compared_over_the_hash_space() {
        let plan = plan_texts(
            Some(&pool(&[1, 1, 1], "table_size = 65537")),
            &pool(&[1, 1, 1], "table_size = 131071"),
            false,
        );
        let moved = plan.vips[0].flows_moved;
        assert!(moved > 0.3, "different sizes reshuffle the tables: {moved}");
    }

    /// A new algorithm is a change like any other: the plan shows the
    /// flows it moves and the blast-radius guard judges them. Both
    /// algorithms walk the same permutations, so a switch moves few.
    #[test]
    fn a_new_table_algorithm_is_a_change_the_guards_judge() {
        let strict = "[guards]\nmax_flows_moved = 0.0001";
        let before = pool(&[1, 1, 1, 1], &format!("table = \"maglev\"\n{strict}"));
        let after = pool(&[1, 1, 1, 1], &format!("table = \"stable\"\n{strict}"));
        let refused = plan_texts(Some(&before), &after, false);
        let vip = &refused.vips[0];
        assert_eq!(vip.change, Change::Changed);
        assert_eq!(vip.table, (Algorithm::Maglev, Algorithm::Stable));
        assert!(
            (0.0001..0.05).contains(&vip.flows_moved),
            "{}",
            vip.flows_moved
        );
        assert_eq!(vip.capacity_removed, 0.0);
        let codes: Vec<_> = refused.problems.iter().map(|p| &*p.code).collect();
        assert_eq!(codes, vec!["blast-radius-flows"], "{:?}", refused.problems);
        assert!(plan_texts(Some(&before), &after, true).accepted());
        let same = plan_texts(Some(&after), &after, false);
        assert_eq!(same.vips[0].table, (Algorithm::Stable, Algorithm::Stable));
        assert_eq!(same.vips[0].change, Change::Unchanged);
    }

    /// A QUIC VIP's plan shows each backend's server ID before and after,
    /// and warns when kept backends' IDs or the VIP's layout change.
    #[test]
    fn the_plan_shows_server_ids_and_warns_when_they_change() {
        let quic = |extra: &str, b2: &str| {
            pool(&[1, 1, 1], "")
                .replace(
                    "port = 80\nprotocol = \"tcp\"",
                    &format!("port = 443\nprotocol = \"udp\"\n{extra}"),
                )
                .replace(
                    "\"198.18.0.2\"\n",
                    &format!("\"198.18.0.2\"\nname = \"b2\"\n{b2}"),
                )
        };
        let before = quic("quic = { server_id_len = 2 }", "server_id = \"0a02\"\n");
        let warnings = |plan: &Plan| -> Vec<String> {
            plan.problems.iter().map(|p| p.code.to_string()).collect()
        };
        let same = plan_texts(Some(&before), &before, false);
        assert_eq!(same.vips[0].change, Change::Unchanged);
        assert_eq!(warnings(&same), Vec::<String>::new());
        let b2 = |plan: &Plan| {
            let b = plan.vips[0]
                .backends
                .iter()
                .find(|b| b.name == "b2")
                .unwrap();
            (
                b.server_id_before.clone(),
                b.server_id_after.clone(),
                b.change,
            )
        };
        assert_eq!(
            b2(&same),
            (Some("0a02".into()), Some("0a02".into()), Change::Unchanged)
        );

        let renumbered = quic("quic = { server_id_len = 2 }", "server_id = \"0b02\"\n");
        let plan = plan_texts(Some(&before), &renumbered, false);
        assert!(plan.accepted(), "a warning, not a refusal");
        assert_eq!(
            b2(&plan),
            (Some("0a02".into()), Some("0b02".into()), Change::Changed)
        );
        assert_eq!(plan.vips[0].change, Change::Changed);
        assert_eq!(warnings(&plan), ["server-id-change"]);
        assert!(
            plan.problems[0].value.contains("b2 0a02 → 0b02"),
            "{:?}",
            plan.problems
        );

        let reused = quic("quic = { server_id_len = 2 }", "server_id = \"0a02\"\n")
            .replace("198.18.0.2\"", "198.18.0.9\"");
        let plan = plan_texts(Some(&before), &reused, false);
        assert!(
            warnings(&plan).contains(&"server-id-reuse".to_string()),
            "{:?}",
            plan.problems
        );

        let rotated = quic(
            "quic = { server_id_len = 2, config_id = 1 }",
            "server_id = \"0a02\"\n",
        );
        let plan = plan_texts(Some(&before), &rotated, false);
        assert_eq!(plan.vips[0].change, Change::Changed);
        assert_eq!(warnings(&plan), ["quic-change"]);
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let plan = plan_texts(None, &pool(&[1, 1], ""), false);
        assert_eq!(plan.vips[0].change, Change::Added);
        assert!(plan.accepted());
    }
}
