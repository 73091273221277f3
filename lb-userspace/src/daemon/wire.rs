//! The admin API's requests and answers, as types: the daemon answers
//! with them and every verb reads them, so the two cannot drift apart;
//! `docs/api.md` is checked against them by a test.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    daemon::{
        edit::{Action, BackendEdit},
        watch::WatchReport,
    },
    monitor::report::Report,
    policy::plan::{Plan, VipPlan},
    problem::Problem,
};

/// The default cap on events a second (all CPUs).
pub const DEFAULT_RATE: u32 = 1000;

/// `POST /v1/trace`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Only this VIP (its name, or `address:port/protocol`).
    #[serde(default)]
    pub vip: Option<String>,
    /// Only this backend (its name or `address:port`; with `vip`, of that
    /// VIP).
    #[serde(default)]
    pub backend: Option<String>,
    /// Only flows from this source prefix (`ADDRESS/LEN`).
    #[serde(default)]
    pub src: Option<String>,
    /// One matching packet in `sample`.
    #[serde(default = "one")]
    pub sample: u32,
    /// At most this many events a second.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Each event carries the packet's first `snap_len` bytes (0: none;
    /// at most `TRACE_SNAP_MAX`).
    #[serde(default)]
    pub snap_len: u32,
}

fn one() -> u32 {
    1
}

fn default_rate() -> u32 {
    DEFAULT_RATE
}

/// What a session's events are named with: VIPs and backends by slot,
/// generations by table bank.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Labels {
    /// VIP id -> name.
    pub vips: HashMap<u32, String>,
    /// Backend slot -> name and `address:port`.
    pub backends: HashMap<u32, (String, String)>,
    /// Table bank -> the generation it holds.
    pub generations: HashMap<u32, u64>,
}

/// A route of the API: its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
}

impl Route {
    const fn get(path: &'static str) -> Self {
        Self {
            method: "GET",
            path,
        }
    }

    const fn post(path: &'static str) -> Self {
        Self {
            method: "POST",
            path,
        }
    }
}

/// `GET /v1/status`.
pub const STATUS: Route = Route::get("/v1/status");
/// `GET /v1/config`.
pub const CONFIG: Route = Route::get("/v1/config");
/// `POST /v1/plan`.
pub const PLAN: Route = Route::post("/v1/plan");
/// `POST /v1/apply`.
pub const APPLY: Route = Route::post("/v1/apply");
/// `POST /v1/backend`.
pub const BACKEND: Route = Route::post("/v1/backend");
/// `POST /v1/explain`.
pub const EXPLAIN: Route = Route::post("/v1/explain");
/// `GET /v1/tables`.
pub const TABLES: Route = Route::get("/v1/tables");
/// `POST /v1/trace`.
pub const TRACE: Route = Route::post("/v1/trace");
/// `POST /v1/detach`.
pub const DETACH: Route = Route::post("/v1/detach");
/// `GET /v1/watch`.
pub const WATCH: Route = Route::get("/v1/watch");

/// Every route.
pub const ROUTES: [Route; 10] = [
    STATUS, CONFIG, PLAN, APPLY, BACKEND, EXPLAIN, TABLES, TRACE, DETACH, WATCH,
];

/// `POST /v1/apply` and `POST /v1/plan`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The whole config, as TOML text.
    pub config: String,
    /// Override the guards (recorded).
    #[serde(default)]
    pub force: bool,
    /// Refuse unless this is the generation in force.
    #[serde(default)]
    pub if_generation: Option<u64>,
    /// Watch the change for this many seconds, and roll it back if it
    /// makes things worse (0: not watched; absent: `[rollout] watch_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_s: Option<u64>,
}

/// `POST /v1/backend`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    /// What to do.
    pub action: Action,
    /// The VIP: its name, or `address:port/protocol`.
    pub vip: String,
    /// The backend: its name or address (`add`: its address).
    pub backend: String,
    /// The weight (`set-weight`, optional for `add`).
    #[serde(default)]
    pub weight: Option<u32>,
    /// A name for a new backend.
    #[serde(default)]
    pub name: Option<String>,
    /// A MAC for a new backend.
    #[serde(default)]
    pub mac: Option<String>,
    /// A port for a new backend.
    #[serde(default)]
    pub port: Option<u16>,
    /// Override the guards (recorded).
    #[serde(default)]
    pub force: bool,
    /// Refuse unless this is the generation in force.
    #[serde(default)]
    pub if_generation: Option<u64>,
    /// Watch the change for this many seconds, and roll it back if it
    /// makes things worse (0: not watched; absent: `[rollout] watch_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_s: Option<u64>,
}

impl BackendRequest {
    /// The config edit it asks for.
    pub fn edit(&self) -> BackendEdit {
        BackendEdit {
            action: self.action.clone(),
            vip: self.vip.clone(),
            backend: self.backend.clone(),
            weight: self.weight,
            name: self.name.clone(),
            mac: self.mac.clone(),
            port: self.port,
        }
    }
}

/// `POST /v1/explain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The client's address and port.
    pub source: String,
    /// The VIP's address and port.
    pub destination: String,
    /// The destination connection ID of a QUIC short-header packet, in
    /// hex: for a QUIC VIP, the server ID it names decides first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// Any answer that is not a success: why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// What went wrong, for a person.
    pub error: String,
}

/// `GET /v1/status`: the interface, where things are, and the counters'
/// report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// The interface the data plane is attached to.
    pub interface: String,
    /// The table bank in use.
    pub bank: u32,
    /// The config file.
    pub config: String,
    /// The data plane's pin directory.
    pub pins: String,
    /// The change under watch, else how the last watch ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
    /// Per VIP and backend: weights, shares, counters, health.
    #[serde(flatten)]
    pub report: Report,
}

/// `GET /v1/config`: the config text in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigAnswer {
    /// The generation in force.
    pub generation: u64,
    /// The config, as the operator wrote it.
    pub config: String,
}

/// `POST /v1/plan` (and `fulcrum plan --format json`): what a change
/// would do, and whether the gate would take it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanAnswer {
    /// The gate would apply it.
    pub accepted: bool,
    /// Why no plan could be made, if none could.
    pub error: Option<String>,
    /// The new config's own problems.
    pub config_problems: Vec<Problem>,
    /// The problems of the config planned against (`fulcrum plan
    /// --against`).
    pub current_problems: Vec<Problem>,
    /// The generation planned against (the daemon's answer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The plan, when one could be made.
    #[serde(flatten)]
    pub plan: Option<Plan>,
}

/// `POST /v1/apply` and `POST /v1/backend`: what the gate did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChangeAnswer {
    /// Live and verified (or already in force).
    pub applied: bool,
    /// The config was the one in force already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// The generation in force after it.
    pub generation: u64,
    /// The guards `--force` overrode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<Vec<Problem>>,
    /// Warnings of an applied change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<Problem>>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<Problem>>,
    /// Per VIP, the plan's before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vips: Option<Vec<VipPlan>>,
    /// Why installing failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the change is watched for (`GET /v1/watch` has the
    /// verdict), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_s: Option<u64>,
}

/// `GET /v1/watch`: the change under watch, or how the last watch ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchAnswer {
    /// The watch, when a change was watched since the daemon started.
    pub watch: Option<WatchReport>,
}

/// How `explain` found a flow's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Its connection-table entry.
    ConnectionTable,
    /// The slot its hash picks in the VIP's table.
    Table,
    /// The server ID in its QUIC connection ID.
    ServerId,
}

/// `POST /v1/explain`: which backend a flow goes to, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExplainAnswer {
    /// The VIP's name.
    pub vip: String,
    /// The backend's name.
    pub backend: String,
    /// The backend's address and port.
    pub address: String,
    /// How the flow was found.
    pub via: Via,
    /// How frames reach the backend.
    pub forwarding: String,
    /// Why, for a person.
    pub why: String,
    /// The flow's hash.
    pub hash: u64,
    /// The table slot the hash picks (by table only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// `POST /v1/detach` (and `fulcrum detach --format json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetachAnswer {
    /// Detached.
    pub detached: bool,
    /// From this interface.
    pub interface: String,
    /// The pins removed (`fulcrum detach --interface` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins: Option<String>,
}

/// A trace session's counters: what the kernel dropped, what the daemon
/// could not hand on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceStatsAnswer {
    /// Events sent to the ring buffer.
    pub sent: u64,
    /// Left out by the sampling.
    pub sampled_out: u64,
    /// Dropped by the per-second cap.
    pub dropped_by_cap: u64,
    /// Dropped: the ring buffer was full.
    pub dropped_ring_full: u64,
    /// Dropped: the client read too slowly.
    pub dropped_slow_client: u64,
}

/// The daemon's answer to opening a trace session (inside the daemon: the
/// stream starts after it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceStarted {
    /// The session.
    pub session: u64,
    /// What its events are named with.
    pub labels: Labels,
    /// Its counters.
    pub stats: TraceStatsAnswer,
}

/// The daemon's answer to renewing a trace session's lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceRenewed {
    /// What its events are named with now.
    pub labels: Labels,
    /// Its counters.
    pub stats: TraceStatsAnswer,
}

/// A session's counters, as the daemon answers a renewal or a stop, and
/// as a stats line of the stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceStatsLine {
    /// The counters.
    pub stats: TraceStatsAnswer,
}

/// One traced packet, as a line of the `POST /v1/trace` stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TraceEventLine {
    /// When, in the kernel's monotonic nanoseconds.
    pub time_ns: u64,
    /// The CPU that saw it.
    pub cpu: u32,
    /// Its VLAN (0: none).
    pub vlan: u16,
    /// The XDP action: `tx`, `pass`, `drop`, ...
    pub action: String,
    /// The reason counter it moved.
    pub reason: String,
    /// `tcp`, `udp`, or the protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The client's address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The destination's address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The VIP's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// The backend's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The backend's address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How the backend was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// The table slot (by table only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// The generation of the table (by table only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// On a QUIC VIP: what its connection ID decided (`routed`, or why it
    /// went by the 4-tuple: `long_header`, `unknown_server`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<String>,
    /// The packet's length as it left the data plane.
    #[serde(default)]
    pub packet_len: u32,
    /// Its first bytes as it left (the request's `snap_len`), in
    /// lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<String>,
}

impl TraceEventLine {
    /// The bytes `packet` carries (none without it).
    pub fn packet_bytes(&self) -> Result<Vec<u8>, String> {
        let Some(text) = &self.packet else {
            return Ok(Vec::new());
        };
        if text.len() % 2 != 0 {
            return Err(format!("packet: odd hex length {}", text.len()));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| format!("packet: not hex at {i}"))
            })
            .collect()
    }
}

/// Bytes as `TraceEventLine::packet` carries them.
pub fn packet_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of the `POST /v1/trace` stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TraceLine {
    /// The session's counters, once a second.
    Stats(TraceStatsLine),
    /// A traced packet.
    Event(Box<TraceEventLine>),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;
    use crate::group::Tables;

    /// The API reference.
    const REFERENCE: &str = include_str!("../../../docs/api.md");

    /// Every request and answer by name, with every field present.
    fn samples() -> Vec<(&'static str, Value)> {
        let problem = json!({"severity": "error", "code": "c", "location": "l", "field": "f",
            "value": "v", "message": "m"});
        let report = json!({"vips": [], "reasons": {}});
        let mut status = json!({"interface": "eth0", "bank": 0, "config": "c", "pins": "p",
            "watch": {"generation": 2, "source": "file", "vips": [], "state": "kept"}});
        status
            .as_object_mut()
            .unwrap()
            .extend(report.as_object().unwrap().clone());
        let plan = json!({"table_size": [251, 251], "vips": [], "problems": [], "forced": [],
            "first_install": false});
        let mut plan_answer = json!({"accepted": true, "error": "e", "config_problems": [problem],
            "current_problems": [], "generation": 1});
        plan_answer
            .as_object_mut()
            .unwrap()
            .extend(plan.as_object().unwrap().clone());
        let change = json!({"applied": true, "unchanged": true, "generation": 1, "forced": [],
            "warnings": [], "problems": [], "vips": [], "error": "e", "watch_s": 30});
        let event = json!({"time_ns": 1, "cpu": 0, "vlan": 0, "action": "tx", "reason": "tx",
            "protocol": "tcp", "source": "s", "destination": "d", "vip": "v", "backend": "b",
            "address": "a", "via": "table", "slot": 1, "generation": 1, "quic": "long_header",
            "packet_len": 60, "packet": "02f0"});
        let stats = json!({"stats": TraceStatsAnswer::default()});
        // Each through its type and back: what the type writes.
        fn typed<T: Serialize + serde::de::DeserializeOwned>(value: Value) -> Value {
            let typed: T = serde_json::from_value(value).expect("a sample of its type");
            serde_json::to_value(typed).expect("JSON")
        }
        vec![
            (
                "ApplyRequest",
                typed::<ApplyRequest>(
                    json!({"config": "", "force": true, "if_generation": 1, "watch_s": 30}),
                ),
            ),
            (
                "BackendRequest",
                typed::<BackendRequest>(json!({"action": "add", "vip": "v", "backend": "b",
                    "weight": 1, "name": "n", "mac": "m", "port": 1, "force": true,
                    "if_generation": 1, "watch_s": 30})),
            ),
            (
                "ExplainRequest",
                typed::<ExplainRequest>(
                    json!({"protocol": "udp", "source": "s", "destination": "d", "cid": "c"}),
                ),
            ),
            (
                "TraceRequest",
                typed::<TraceRequest>(
                    json!({"vip": "v", "backend": "b", "src": "s", "snap_len": 128}),
                ),
            ),
            ("ErrorAnswer", typed::<ErrorAnswer>(json!({"error": "e"}))),
            ("StatusAnswer", typed::<StatusAnswer>(status)),
            (
                "ConfigAnswer",
                typed::<ConfigAnswer>(json!({"generation": 1, "config": ""})),
            ),
            ("PlanAnswer", typed::<PlanAnswer>(plan_answer)),
            ("ChangeAnswer", typed::<ChangeAnswer>(change)),
            (
                "ExplainAnswer",
                typed::<ExplainAnswer>(json!({"vip": "v", "backend": "b", "address": "a",
                    "via": "connection-table", "forwarding": "f", "why": "w", "hash": 1,
                    "slot": 1})),
            ),
            (
                "Tables",
                typed::<Tables>(
                    json!({"source": "s", "group": null, "seed_fingerprint": null,
                    "vips": []}),
                ),
            ),
            (
                "DetachAnswer",
                typed::<DetachAnswer>(json!({"detached": true, "interface": "i", "pins": "p"})),
            ),
            (
                "WatchAnswer",
                typed::<WatchAnswer>(json!({"watch": {"generation": 2, "source": "file",
                    "vips": [], "state": "kept"}})),
            ),
            ("TraceEventLine", typed::<TraceEventLine>(event)),
            ("TraceStatsLine", typed::<TraceStatsLine>(stats)),
        ]
    }

    /// The fields the reference's table under `### `name`` lists.
    fn documented(name: &str) -> BTreeSet<String> {
        let heading = format!("### `{name}`\n");
        let Some(start) = REFERENCE.find(&heading) else {
            panic!("docs/api.md has no section for {name}");
        };
        REFERENCE[start + heading.len()..]
            .lines()
            .take_while(|line| !line.starts_with('#'))
            .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
            .map(|(field, _)| field.to_string())
            .collect()
    }

    #[test]
    fn the_reference_lists_every_field_of_every_request_and_answer_and_no_other() {
        for (name, sample) in samples() {
            let fields: BTreeSet<String> = sample
                .as_object()
                .unwrap_or_else(|| panic!("{name} is an object"))
                .keys()
                .cloned()
                .collect();
            assert_eq!(documented(name), fields, "docs/api.md, {name}");
        }
    }

    #[test]
    fn packet_bytes_travel_as_hex() {
        let bytes = [0x02, 0xf0, 0x00, 0xff, 0x7a];
        let line = TraceEventLine {
            packet: Some(packet_hex(&bytes)),
            ..TraceEventLine::default()
        };
        assert_eq!(line.packet.as_deref(), Some("02f000ff7a"));
        assert_eq!(line.packet_bytes(), Ok(bytes.to_vec()));
        assert_eq!(TraceEventLine::default().packet_bytes(), Ok(vec![]));
        for bad in ["0", "zz", "éé"] {
            let line = TraceEventLine {
                packet: Some(bad.into()),
                ..TraceEventLine::default()
            };
            assert!(line.packet_bytes().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_reference_lists_every_route_and_no_other() {
        let start = REFERENCE.find("## Routes").expect("a routes section");
        let listed: BTreeSet<String> = REFERENCE[start..]
            .lines()
            .skip(1)
            .take_while(|line| !line.starts_with('#'))
            .filter_map(|line| Some(line.strip_prefix("| `")?.split_once('`')?.0.to_string()))
            .collect();
        let routes: BTreeSet<String> = ROUTES
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(listed, routes);
    }
}
