//! The desired-state file: its model (global settings, guards, health-check
//! defaults, API endpoints, VIPs and backends) and its TOML reading. Reading
//! reports every shape problem at once (unknown keys, wrong types, missing
//! keys); what the values mean is checked by `validate`.

mod read;

use std::{
    fmt,
    io::Read as _,
    net::IpAddr,
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
};

use lb_common::maps::{PROTO_TCP, PROTO_UDP};

use crate::{
    problem::Problem,
    table::{TableError, TableSize, VipTable},
};

/// Accepted `max_backends`: each slot costs per-CPU counters, so the
/// ceiling keeps kernel memory in check.
pub const BACKEND_SLOT_LIMITS: RangeInclusive<u32> = 1..=((1 << 20) - 1);

/// Accepted connection-table capacities: enough for a small lab, at most
/// 64 Mi flows (several GiB of kernel memory).
pub const CONNECTION_TABLE_SIZES: RangeInclusive<u32> = 1024..=(64 << 20);

/// Allowed flow idle timeouts, in seconds (up to a week).
pub const IDLE_TIMEOUTS: RangeInclusive<u32> = 2..=604_800;

/// Allowed health-check `rise` and `fall`.
pub const RISE_FALL: RangeInclusive<u32> = 1..=100;

/// Allowed health-check intervals, in milliseconds (up to an hour).
pub const CHECK_INTERVALS_MS: RangeInclusive<u64> = 1..=3_600_000;

/// Allowed imbalance windows, in seconds.
pub const IMBALANCE_WINDOWS_S: RangeInclusive<u64> = 2..=3600;

/// Allowed outlier-detection intervals, in seconds.
pub const OUTLIER_INTERVALS_S: RangeInclusive<u64> = 1..=3600;

/// Allowed slow-start ramps, in seconds (0: off; up to an hour).
pub const SLOW_STARTS_S: RangeInclusive<u64> = 0..=3600;

/// Allowed watch times, in seconds (0: only when asked; up to an hour).
pub const WATCH_TIMES_S: RangeInclusive<u64> = 0..=3600;

/// Allowed ejection times, in seconds (up to a day).
pub const EJECTION_TIMES_S: RangeInclusive<u64> = 1..=86_400;

/// `from A to B`: a range as the reader's and the validator's messages
/// say it.
pub fn span<T: fmt::Display>(range: &RangeInclusive<T>) -> String {
    format!("from {} to {}", range.start(), range.end())
}

/// The whole config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The interface to attach to (overridable on the command line).
    pub interface: Option<String>,
    /// How frames reach backends, unless a VIP says otherwise.
    pub forwarding: Forwarding,
    /// Outer headers of encapsulated frames.
    pub encapsulation: Encapsulation,
    /// Lookup-table size M, one of the allowed primes.
    pub table_size: u32,
    /// Capacity of the connection table (flows tracked at once, shared by
    /// every CPU; rounded up to a power of two sets of 8 ways).
    pub connection_table_size: u32,
    /// When idle flows' connection entries expire.
    pub idle: IdleTimeouts,
    /// The flow hash's secret seed; `None` makes `fulcrum run` use the
    /// host's own (generated once and kept beside the journal).
    pub flow_hash_seed: Option<Secret>,
    /// Backend slots over all VIPs (a backend serving two VIPs uses two).
    pub max_backends: u32,
    /// Guard thresholds, overridable per VIP.
    pub guards: Guards,
    /// Health-check defaults.
    pub health_check: HealthCheck,
    /// Where the admin API and the metrics listen.
    pub api: Api,
    /// When a backend's observed share of new flows counts as skew.
    pub imbalance: Imbalance,
    /// When a backend's handshakes make it an outlier, and how outliers
    /// are ejected.
    pub outlier: Outlier,
    /// How operator changes are watched, and when they roll back.
    pub rollout: Rollout,
    /// The group of hosts behind one ECMP route this host belongs to.
    pub group: Option<Group>,
    /// How this host announces the VIPs it is ready to serve.
    pub announce: Option<Announce>,
    /// The virtual services.
    pub vips: Vec<VipConfig>,
    /// VIPs whose own keys could not be read, kept so that their backends
    /// are still checked. Always empty in a config that parsed cleanly.
    pub unreadable_vips: Vec<UnreadableVip>,
}

/// Seconds a flow may idle before its connection entry expires: its next
/// packet is hashed again as a new flow, and a new flow may take its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// For TCP (`tcp_idle_s`; default 900, as IPVS).
    pub tcp_s: u32,
    /// For UDP (`udp_idle_s`; default 60).
    pub udp_s: u32,
}

impl Default for IdleTimeouts {
    fn default() -> Self {
        Self {
            tcp_s: 900,
            udp_s: 60,
        }
    }
}

/// The flow hash seed from the config: 32 hex digits. Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub lb_common::flow_hash::FlowSeed);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = String;

    /// 32 hex digits (128 bits), not all zero.
    fn from_str(text: &str) -> Result<Self, String> {
        let hex = text.trim();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "expected 32 hex digits (128 bits), e.g. from `openssl rand -hex 16`".into(),
            );
        }
        let half = |i: usize| u64::from_str_radix(&hex[i * 16..(i + 1) * 16], 16);
        let seed = [half(0), half(1)];
        match seed {
            [Ok(0), Ok(0)] => Err("an all-zero seed is no secret".into()),
            [Ok(a), Ok(b)] => Ok(Secret(lb_common::flow_hash::FlowSeed([a, b]))),
            _ => Err("expected 32 hex digits".into()),
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.0.0[0], self.0.0[1])
    }
}

/// The backends of a VIP whose address, port or protocol could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct UnreadableVip {
    /// How problems name the VIP.
    pub location: String,
    /// Its backends, as far as they could be read.
    pub backends: Vec<BackendConfig>,
}

/// Forwarding modes. None changes the packet's own addresses or ports, so
/// every mode's backends listen on the VIP's address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// L2 direct server return: MAC rewrite, backends on the same segment.
    L2Dsr,
    /// IP in IP (4in4, 6in6, 6in4, 4in6) to the backend's address, through
    /// the next hop: backends on any routable network, which decapsulate.
    Ipip,
    /// GUE (UDP encapsulation): like `Ipip`, with the flow's hash in the
    /// UDP source port, for networks and NICs that spread UDP only.
    Gue,
}

impl Forwarding {
    /// Every mode, in config order.
    pub const ALL: [Forwarding; 3] = [Forwarding::L2Dsr, Forwarding::Ipip, Forwarding::Gue];

    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::L2Dsr => "l2-dsr",
            Forwarding::Ipip => "ipip",
            Forwarding::Gue => "gue",
        }
    }

    /// The mode of that name.
    pub fn named(name: &str) -> Option<Forwarding> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether frames are encapsulated (backends may sit behind routers).
    pub fn encapsulates(self) -> bool {
        self != Forwarding::L2Dsr
    }

    /// Where its backends' MACs come from.
    pub fn reach(self) -> Reach {
        if self.encapsulates() {
            Reach::Routed
        } else {
            Reach::Segment
        }
    }

    /// The data plane's `FORWARD_*` value.
    pub fn kernel(self) -> u8 {
        match self {
            Forwarding::L2Dsr => lb_common::maps::FORWARD_L2_DSR,
            Forwarding::Ipip => lb_common::maps::FORWARD_IPIP,
            Forwarding::Gue => lb_common::maps::FORWARD_GUE,
        }
    }
}

/// Where the MAC a backend's frames go to comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Its own, from the neighbour table: it must be on the segment (L2
    /// DSR).
    Segment,
    /// Its next hop's, through the routing table (encapsulation).
    Routed,
}

/// An address prefix (`198.18.64.0/24`, `2001:2:0:64::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// Its first address.
    pub address: IpAddr,
    /// Its length in bits.
    pub len: u8,
}

impl Prefix {
    /// Its first address's bytes (4 or 16).
    pub fn bytes(&self) -> Vec<u8> {
        match self.address {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }

    /// Its last address.
    pub fn last(&self) -> IpAddr {
        let bytes: Vec<u8> = self
            .bytes()
            .iter()
            .zip(self.host_mask())
            .map(|(byte, host)| byte | host)
            .collect();
        match <[u8; 4]>::try_from(bytes.as_slice()) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).unwrap_or_default()),
        }
    }

    /// The mask of its host bits, as bytes of its family's width (4 or 16).
    pub fn host_mask(&self) -> Vec<u8> {
        (0..self.bytes().len() as u32)
            .map(|i| {
                let network_bits = u32::from(self.len).saturating_sub(i * 8).min(8);
                0xffu8.checked_shr(network_bits).unwrap_or(0)
            })
            .collect()
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a prefix like \"198.18.64.0/24\""))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 or IPv6 address"))?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|&l| l <= width)
            .ok_or_else(|| format!("the length after / must be 0 to {width}"))?;
        let prefix = Prefix { address, len };
        if prefix
            .bytes()
            .iter()
            .zip(prefix.host_mask())
            .any(|(byte, host)| byte & host != 0)
        {
            let first = Prefix {
                address: masked(address, len),
                len,
            };
            return Err(format!(
                "{text:?} has host bits set: a prefix is written with its first address \
                 ({first})"
            ));
        }
        Ok(prefix)
    }
}

/// `address` with all but its first `len` bits cleared.
pub fn masked(address: IpAddr, len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// The `[encapsulation]` table: where encapsulated frames come from, how
/// large they may be, and GUE's port.
#[derive(Clone, Debug, PartialEq)]
pub struct Encapsulation {
    /// The outer IPv4 source prefix: each flow's source is one of its
    /// addresses, by the flow's hash. Needed for IPv4 backends.
    pub source4: Option<Prefix>,
    /// The outer IPv6 source prefix. Needed for IPv6 backends.
    pub source6: Option<Prefix>,
    /// The largest packet the path to the backends carries; `None`: the
    /// attached interface's MTU.
    pub mtu: Option<u16>,
    /// GUE's UDP destination port.
    pub gue_port: u16,
}

impl Default for Encapsulation {
    fn default() -> Self {
        Self {
            source4: None,
            source6: None,
            mtu: None,
            gue_port: 6080,
        }
    }
}

impl Encapsulation {
    /// The data plane's form, with `link_mtu` where no MTU is set.
    pub fn kernel(&self, link_mtu: u16) -> lb_common::maps::Encapsulation {
        let mut kernel = lb_common::maps::Encapsulation {
            mtu: self.mtu.unwrap_or(link_mtu),
            gue_port: self.gue_port,
            ..Default::default()
        };
        // A prefix of the other family (validation refuses it) is left out.
        let fill = |prefix: Option<Prefix>, source: &mut [u8], host: &mut [u8]| {
            if let Some(prefix) = prefix.filter(|p| p.bytes().len() == source.len()) {
                source.copy_from_slice(&prefix.bytes());
                host.copy_from_slice(&prefix.host_mask());
            }
        };
        fill(self.source4, &mut kernel.source4, &mut kernel.source4_host);
        fill(self.source6, &mut kernel.source6, &mut kernel.source6_host);
        kernel
    }
}

/// Guard thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guards {
    /// No backend may hold more than this share of a VIP's table (0..=1).
    pub max_backend_share: f64,
    /// A VIP needs at least this many backends with a positive weight.
    pub min_backends: u32,
    /// One apply may move at most this share of a VIP's flows (0..=1).
    pub max_flows_moved: f64,
    /// One apply may remove at most this share of a VIP's capacity (0..=1).
    pub max_capacity_removed: f64,
    /// One apply of source rules or limits may refuse at most this share
    /// of a VIP's active flows, or of the flows its clients opened in the
    /// last window (0..=1).
    pub max_clients_refused: f64,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            max_backend_share: 0.5,
            min_backends: 2,
            max_flows_moved: 0.35,
            max_capacity_removed: 0.5,
            max_clients_refused: 0.1,
        }
    }
}

/// One guard threshold as the plan compares it: its config name, its
/// value, and which way is looser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardValue {
    /// The config key, e.g. `max_backend_share`.
    pub field: &'static str,
    /// The value (`min_backends` as a whole number).
    pub value: f64,
    /// Whether a larger value allows more (every threshold but `min_backends`).
    pub larger_is_looser: bool,
}

impl GuardValue {
    /// Whether `next` allows more than `self` (same field).
    pub fn loosened_by(&self, next: &GuardValue) -> bool {
        if self.larger_is_looser {
            next.value > self.value
        } else {
            next.value < self.value
        }
    }
}

impl Guards {
    /// Every threshold, in config order.
    pub fn values(&self) -> [GuardValue; 5] {
        let value = |field, value, larger_is_looser| GuardValue {
            field,
            value,
            larger_is_looser,
        };
        [
            value("max_backend_share", self.max_backend_share, true),
            value("min_backends", f64::from(self.min_backends), false),
            value("max_flows_moved", self.max_flows_moved, true),
            value("max_capacity_removed", self.max_capacity_removed, true),
            value("max_clients_refused", self.max_clients_refused, true),
        ]
    }

    /// Threshold by threshold, the stricter of `self` and `other`.
    pub fn stricter(&self, other: &Guards) -> Guards {
        Guards {
            max_backend_share: self.max_backend_share.min(other.max_backend_share),
            min_backends: self.min_backends.max(other.min_backends),
            max_flows_moved: self.max_flows_moved.min(other.max_flows_moved),
            max_capacity_removed: self.max_capacity_removed.min(other.max_capacity_removed),
            max_clients_refused: self.max_clients_refused.min(other.max_clients_refused),
        }
    }
}

/// Per-VIP guard overrides; unset fields use the global value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GuardOverrides {
    /// Overrides `Guards::max_backend_share`.
    pub max_backend_share: Option<f64>,
    /// Overrides `Guards::min_backends` (1 allows a single-backend VIP).
    pub min_backends: Option<u32>,
    /// Overrides `Guards::max_flows_moved`.
    pub max_flows_moved: Option<f64>,
    /// Overrides `Guards::max_capacity_removed`.
    pub max_capacity_removed: Option<f64>,
    /// Overrides `Guards::max_clients_refused`.
    pub max_clients_refused: Option<f64>,
}

impl GuardOverrides {
    /// The thresholds in force given the global ones.
    pub fn apply(&self, global: &Guards) -> Guards {
        Guards {
            max_backend_share: self.max_backend_share.unwrap_or(global.max_backend_share),
            min_backends: self.min_backends.unwrap_or(global.min_backends),
            max_flows_moved: self.max_flows_moved.unwrap_or(global.max_flows_moved),
            max_capacity_removed: self
                .max_capacity_removed
                .unwrap_or(global.max_capacity_removed),
            max_clients_refused: self
                .max_clients_refused
                .unwrap_or(global.max_clients_refused),
        }
    }

    /// Whether this VIP sets `field` itself.
    pub fn sets(&self, field: &str) -> bool {
        match field {
            "max_backend_share" => self.max_backend_share.is_some(),
            "min_backends" => self.min_backends.is_some(),
            "max_flows_moved" => self.max_flows_moved.is_some(),
            "max_capacity_removed" => self.max_capacity_removed.is_some(),
            "max_clients_refused" => self.max_clients_refused.is_some(),
            _ => false,
        }
    }
}

/// Health-check kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// An HTTP GET answers with an expected status.
    Http,
    /// Not checked: always counted healthy.
    None,
}

/// Health-check settings: the global defaults (`[health_check]`), with
/// what a VIP's and then a backend's own `health_check` table override.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// What is checked.
    pub kind: CheckKind,
    /// Time between checks.
    pub interval_ms: u64,
    /// Time a check may take.
    pub timeout_ms: u64,
    /// Consecutive successes that make a down backend healthy again.
    pub rise: u32,
    /// Consecutive failures that make a backend down.
    pub fall: u32,
    /// Path for HTTP checks.
    pub http_path: String,
    /// HTTP status codes that count as healthy, as inclusive ranges.
    pub http_status: Vec<(u16, u16)>,
    /// A VIP whose healthy backends would hold less than this share of its
    /// weight goes into panic mode and keeps them all (0..=1).
    pub panic_threshold: f64,
    /// At most this many health-driven table changes per VIP per minute;
    /// more are held back (damping).
    pub max_changes_per_minute: u32,
    /// The port every check goes to, unless a VIP or backend says
    /// otherwise; `None`: the backend's own port.
    pub port: Option<u16>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            http_path: "/".into(),
            http_status: vec![(200, 299)],
            panic_threshold: 0.5,
            max_changes_per_minute: 6,
            port: None,
        }
    }
}

/// The `health_check` table (global, a VIP's or a backend's): each key
/// given replaces the one above it. `port` and `address` (a backend's
/// only) say where checks go, when not to the backend's own address and
/// port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthOverrides {
    /// `kind`.
    pub kind: Option<CheckKind>,
    /// `interval_ms`.
    pub interval_ms: Option<u64>,
    /// `timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// `rise`.
    pub rise: Option<u32>,
    /// `fall`.
    pub fall: Option<u32>,
    /// `http_path`.
    pub http_path: Option<String>,
    /// `http_status`.
    pub http_status: Option<Vec<(u16, u16)>>,
    /// `panic_threshold` (a VIP's only).
    pub panic_threshold: Option<f64>,
    /// `max_changes_per_minute` (a VIP's only).
    pub max_changes_per_minute: Option<u32>,
    /// The address checked (a backend's only).
    pub address: Option<IpAddr>,
    /// The port checked.
    pub port: Option<u16>,
}

impl HealthOverrides {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: &HealthCheck) -> HealthCheck {
        HealthCheck {
            kind: self.kind.unwrap_or(base.kind),
            interval_ms: self.interval_ms.unwrap_or(base.interval_ms),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            rise: self.rise.unwrap_or(base.rise),
            fall: self.fall.unwrap_or(base.fall),
            http_path: self
                .http_path
                .clone()
                .unwrap_or_else(|| base.http_path.clone()),
            http_status: self
                .http_status
                .clone()
                .unwrap_or_else(|| base.http_status.clone()),
            panic_threshold: self.panic_threshold.unwrap_or(base.panic_threshold),
            max_changes_per_minute: self
                .max_changes_per_minute
                .unwrap_or(base.max_changes_per_minute),
            port: self.port.or(base.port),
        }
    }
}

/// One backend's check, every setting resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedCheck {
    /// The settings.
    pub settings: HealthCheck,
    /// Where the check goes.
    pub target: SocketAddr,
}

/// Where the controller listens.
#[derive(Clone, Debug, PartialEq)]
pub struct Api {
    /// The admin API's Unix socket (mode 0600).
    pub socket: PathBuf,
    /// The read-only metrics HTTP address.
    pub metrics: SocketAddr,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            socket: "/run/fulcrum/api.sock".into(),
            metrics: ([127, 0, 0, 1], 9487).into(),
        }
    }
}

/// The group of load-balancer hosts behind one ECMP route: every host of
/// it must hash a flow alike and hold the same tables, so that a flow
/// reaches the same backend whichever host the routers pick. A group
/// therefore needs `flow_hash_seed` set, the same on every host.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Its name, shown in `status` and the metrics.
    pub name: String,
}

/// Announcing VIPs to the routers through BIRD: the controller writes the
/// VIPs this host is ready to serve into `bird_include` (a file the
/// operator's `bird.conf` includes) and asks BIRD on `bird_socket` to
/// read its configuration again.
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    /// The file of static routes the controller writes.
    pub bird_include: PathBuf,
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// Seconds `fulcrum detach` waits between withdrawing the routes and
    /// detaching, so that the routers stop sending first.
    pub drain_s: u64,
}

impl Announce {
    /// Debian's `bird2` control socket.
    pub const DEFAULT_SOCKET: &str = "/run/bird/bird.ctl";
    /// Long enough for a BGP withdrawal to reach the routers' FIBs.
    pub const DEFAULT_DRAIN_S: u64 = 5;
}

/// The imbalance detector's settings: a backend is flagged when, over the
/// last `window_s` seconds, its share of a VIP's new flows stayed at least
/// `factor` times its share of the table (and significantly so) for
/// `for_s` seconds, while the VIP took at least `min_flow_rate` new flows
/// per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Imbalance {
    /// Observed ÷ expected share at or above which a backend is skewed.
    pub factor: f64,
    /// The window over which observed shares are measured, in seconds.
    pub window_s: u64,
    /// How long the skew must last before it is flagged, in seconds.
    pub for_s: u64,
    /// New flows per second a VIP needs before its shares are judged.
    pub min_flow_rate: f64,
}

impl Default for Imbalance {
    fn default() -> Self {
        Self {
            factor: 1.5,
            window_s: 60,
            for_s: 120,
            min_flow_rate: 10.0,
        }
    }
}

/// The outlier detector's settings: each TCP backend's handshake success
/// (handshakes completed per attempt) over each `interval_s` is judged
/// against its peers' in the same VIP, and an outlier is ejected from the
/// table for a time that grows with repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    /// Whether outliers are ejected (per VIP: `eject_outliers`); they are
    /// detected and reported either way.
    pub eject: bool,
    /// The interval each judgement covers, in seconds.
    pub interval_s: u64,
    /// Handshakes a backend must have attempted in an interval to be judged.
    pub min_syns: u64,
    /// Backends of a VIP that must be judged for any of them to be an outlier.
    pub min_backends: u32,
    /// A backend is an outlier when its success is at most this fraction
    /// of the median of its peers'.
    pub success_factor: f64,
    /// Below this median success, the whole VIP is failing (or flooded):
    /// nobody is an outlier.
    pub min_median: f64,
    /// The first ejection's length, in seconds; each repeat adds as much.
    pub base_ejection_s: u64,
    /// The longest ejection, in seconds.
    pub max_ejection_s: u64,
    /// At most this percentage of a VIP's weight is ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            eject: true,
            interval_s: 10,
            min_syns: 100,
            min_backends: 3,
            success_factor: 0.5,
            min_median: 0.5,
            base_ejection_s: 30,
            max_ejection_s: 300,
            max_ejection_percent: 25,
        }
    }
}

/// How an operator's change is watched: for `watch_s` seconds after it
/// goes live, the changed VIPs' signals are compared with what they were
/// before, and a change that made them worse is rolled back.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Seconds each change is watched; 0: only when asked (`--watch`).
    pub watch_s: u64,
    /// Whether a watched change is judged, and rolled back when it made
    /// things worse (per VIP: `rollback`).
    pub rollback: bool,
    /// How far a VIP's handshake success may fall (a fraction: 0.1 is ten
    /// points) before the change counts as worse.
    pub max_success_drop: f64,
    /// Handshake attempts a VIP must see during the watch for its success
    /// to be compared.
    pub min_syns: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            watch_s: 0,
            rollback: true,
            max_success_drop: 0.1,
            min_syns: 50,
        }
    }
}

/// One virtual IP service.
#[derive(Clone, Debug, PartialEq)]
pub struct VipConfig {
    /// Optional label used in output.
    pub name: Option<String>,
    /// The virtual address.
    pub address: IpAddr,
    /// The port; 0 means every port of `protocol`.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// Guard overrides for this VIP.
    pub guards: GuardOverrides,
    /// Health-check overrides for this VIP's backends.
    pub health_check: HealthOverrides,
    /// Its lookup-table algorithm: its own `table`, else the config's.
    pub table: crate::table::algorithm::Algorithm,
    /// How its frames reach its backends: its own `forwarding`, else the
    /// config's.
    pub forwarding: Forwarding,
    /// Whether its outliers are ejected (`eject_outliers`); `None`: as
    /// `[outlier] eject` says.
    pub eject_outliers: Option<bool>,
    /// Seconds over which a backend that joins its table (added, back from
    /// down, drain or ejection) ramps up to its weight; 0: at once.
    pub slow_start_s: u64,
    /// Whether a watched change that made this VIP worse is rolled back
    /// (`rollback`); `None`: as `[rollout] rollback` says.
    pub rollback: Option<bool>,
    /// Which sources it admits (`allow_sources`, `deny_sources`).
    pub sources: SourceRules,
    /// Its caps on new flows and packets (`limits`).
    pub limits: Limits,
    /// How it routes QUIC by connection ID (`[vip.quic]`); `None`: it
    /// does not (a UDP VIP's packets go by the 4-tuple).
    pub quic: Option<QuicConfig>,
    /// The real servers.
    pub backends: Vec<BackendConfig>,
}

/// The server IDs' accepted lengths, in octets (QUIC-LB).
pub const SERVER_ID_LENS: RangeInclusive<u8> = 1..=lb_common::maps::QUIC_SERVER_ID_MAX;
/// The accepted config rotation codepoints (`0b111` marks unroutable CIDs).
pub const QUIC_CONFIG_IDS: RangeInclusive<u8> = 0..=6;
/// Where a server ID may start in a connection ID: after the first octet,
/// leaving room for a 1-octet ID and QUIC-LB's 4-octet nonce in 20.
pub const SERVER_ID_OFFSETS: RangeInclusive<u8> = 1..=15;

/// How a QUIC VIP's servers encode their ID in the connection IDs they
/// issue (`[vip.quic]`): QUIC-LB's plaintext layout, the CID's first octet
/// carrying `config_id` in its top three bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuicConfig {
    /// The config rotation codepoint (0 to 6).
    pub config_id: u8,
    /// Where the server ID starts in the CID, in octets (1: right after
    /// the first octet, as QUIC-LB puts it).
    pub server_id_offset: u8,
    /// The server ID's length in octets (1 to 15).
    pub server_id_len: u8,
}

impl QuicConfig {
    /// The kernel's form.
    pub fn route(&self) -> lb_common::maps::QuicRoute {
        lb_common::maps::QuicRoute {
            config_id: self.config_id,
            offset: self.server_id_offset,
            len: self.server_id_len,
            pad: 0,
        }
    }
}

/// A QUIC server ID (or any octets, such as a connection ID): written
/// as hex in the config and on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub Vec<u8>);

impl FromStr for ServerId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0x").unwrap_or(text);
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not hex octets: hex digits only, like \"0a1b\""
            ));
        }
        if digits.is_empty() || !digits.len().is_multiple_of(2) {
            return Err(format!(
                "{text:?} is not hex octets: an even number of hex digits, like \"0a1b\""
            ));
        }
        // ASCII hex digits only: every pair is two bytes and parses.
        Ok(ServerId(
            digits
                .as_bytes()
                .chunks(2)
                .map(|pair| {
                    let digit = |b: u8| char::from(b).to_digit(16).unwrap_or(0) as u8;
                    digit(pair[0]) << 4 | digit(pair[1])
                })
                .collect(),
        ))
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Accepted rates of a VIP's `limits`, per second.
pub const RATE_LIMITS: RangeInclusive<u32> = 1..=100_000_000;

/// A VIP's caps, enforced in XDP (`[vip.limits]`); unset: no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// New flows a second (SYNs, new UDP flows, connection-table misses).
    pub new_flows_per_s: Option<u32>,
    /// Packets a second, every packet of the VIP.
    pub packets_per_s: Option<u32>,
    /// New flows a second from any one source prefix.
    pub source_new_flows_per_s: Option<u32>,
    /// The prefix length an IPv4 source is counted under.
    pub source_prefix_v4: u8,
    /// The prefix length an IPv6 source is counted under.
    pub source_prefix_v6: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            new_flows_per_s: None,
            packets_per_s: None,
            source_new_flows_per_s: None,
            source_prefix_v4: 24,
            source_prefix_v6: 64,
        }
    }
}

impl Limits {
    /// Whether no cap is set.
    pub fn is_empty(&self) -> bool {
        self.new_flows_per_s.is_none()
            && self.packets_per_s.is_none()
            && self.source_new_flows_per_s.is_none()
    }
}

/// A VIP's source rules: the data plane drops a packet whose source's
/// longest matching prefix is denied, and, when there are allow rules, a
/// packet whose source none of them covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceRules {
    /// Prefixes admitted (`allow_sources`); empty: every source not denied.
    pub allow: Vec<Prefix>,
    /// Prefixes dropped (`deny_sources`).
    pub deny: Vec<Prefix>,
}

impl SourceRules {
    /// Whether there are no rules: every source is admitted.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.allow.len() + self.deny.len()
    }
}

impl Config {
    /// Sets every backend in `down` (its VIP's endpoint and its identity)
    /// to weight 0: the health checker found it dead.
    pub fn take_down(&mut self, down: &[(String, SocketAddr)]) {
        if down.is_empty() {
            return;
        }
        for vip in &mut self.vips {
            let endpoint = vip.endpoint();
            let hit: Vec<bool> = vip
                .backends
                .iter()
                .map(|b| down.contains(&(endpoint.clone(), vip.backend_addr(b))))
                .collect();
            for (backend, hit) in vip.backends.iter_mut().zip(hit) {
                if hit {
                    backend.weight = 0;
                }
            }
        }
    }

    /// Scales the weights of every VIP with a backend in `ramped` (its
    /// VIP's endpoint and identity, and the fraction of its weight it
    /// takes now) so that each ramping backend weighs that fraction of its
    /// weight against the others' whole weights (at least 1 while its
    /// weight is positive).
    pub fn ramp(&mut self, ramped: &[((String, SocketAddr), f64)]) {
        const SCALE: f64 = 100.0;
        for vip in &mut self.vips {
            let endpoint = vip.endpoint();
            let factors: Vec<Option<f64>> = vip
                .backends
                .iter()
                .map(|b| {
                    let addr = vip.backend_addr(b);
                    ramped
                        .iter()
                        .find(|((e, a), _)| *e == endpoint && *a == addr)
                        .map(|(_, factor)| factor.clamp(0.0, 1.0))
                })
                .collect();
            if factors.iter().all(Option::is_none) {
                continue;
            }
            for (backend, factor) in vip.backends.iter_mut().zip(factors) {
                let whole = f64::from(backend.weight) * SCALE;
                backend.weight = match factor {
                    _ if backend.weight == 0 => 0,
                    Some(factor) => (whole * factor).round().max(1.0) as u32,
                    None => whole as u32,
                };
            }
        }
    }

    /// Sets every backend at one of `addresses` that has no MAC in the
    /// config to weight 0: the table holds it out, the guards still judge
    /// the rest.
    pub fn hold_out(&mut self, addresses: &[IpAddr]) {
        for backend in self.vips.iter_mut().flat_map(|v| &mut v.backends) {
            if backend.mac.is_none() && addresses.contains(&backend.address) {
                backend.weight = 0;
            }
        }
    }

    /// The addresses of backends whose MAC must come from the kernel (no
    /// `mac` in the config), each once, with where it comes from: an
    /// address one L2 DSR VIP uses must be on the segment for all.
    pub fn unresolved_addresses(&self) -> Vec<(IpAddr, Reach)> {
        let mut addresses: Vec<(IpAddr, Reach)> = self
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b, v.forwarding.reach())))
            .filter(|(b, _)| b.mac.is_none())
            .map(|(b, reach)| (b.address, reach))
            .collect();
        addresses.sort();
        addresses.dedup_by_key(|(address, _)| *address);
        addresses
    }
}

impl VipConfig {
    /// A backend's identity: its address and port (the VIP's port unless
    /// it names its own).
    pub fn backend_addr(&self, backend: &BackendConfig) -> SocketAddr {
        SocketAddr::new(backend.address, backend.port.unwrap_or(self.port))
    }

    /// The lookup table of `size` slots this VIP's backends get.
    pub fn lookup_table(&self, size: TableSize) -> Result<VipTable, TableError> {
        VipTable::build(
            self.table,
            self.backends
                .iter()
                .map(|b| (self.backend_addr(b), b.weight)),
            size,
        )
    }

    /// The VIP's health-check settings: the config's, with its overrides.
    pub fn health(&self, global: &HealthCheck) -> HealthCheck {
        self.health_check.apply(global)
    }

    /// `backend`'s check: the VIP's settings with the backend's overrides,
    /// aimed at its `health_check.address` (else its address) and at the
    /// first port given of: its `health_check.port`, the VIP's, the global
    /// one, its own port, the VIP's port.
    pub fn check_of(&self, backend: &BackendConfig, global: &HealthCheck) -> ResolvedCheck {
        let settings = backend.health_check.apply(&self.health(global));
        let port = backend
            .health_check
            .port
            .or(self.health_check.port)
            .or(global.port)
            .or(backend.port)
            .unwrap_or(self.port);
        let address = backend.health_check.address.unwrap_or(backend.address);
        ResolvedCheck {
            settings,
            target: SocketAddr::new(address, port),
        }
    }

    /// `name` if given, else `address:port/protocol`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.endpoint(),
        }
    }

    /// `address:port/protocol`.
    pub fn endpoint(&self) -> String {
        format!(
            "{}/{}",
            SocketAddr::new(self.address, self.port),
            self.protocol
        )
    }
}

/// One real server behind a VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// Optional label used in output.
    pub name: Option<String>,
    /// The backend's address on the load balancer's L2 segment.
    pub address: IpAddr,
    /// The backend's port; defaults to the VIP's. Part of its identity.
    pub port: Option<u16>,
    /// Relative share of new flows; 0 drains the backend.
    pub weight: u32,
    /// The backend's MAC; looked up in the neighbour table when absent.
    pub mac: Option<MacAddr>,
    /// Health-check overrides for this backend, and where its check goes.
    pub health_check: HealthOverrides,
    /// Its QUIC server ID (`server_id`); `None`: derived from its identity.
    pub server_id: Option<ServerId>,
}

impl BackendConfig {
    /// `name` if given, else the address.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }
}

/// The transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err("expected \"tcp\" or \"udp\"".into()),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a MAC address like 02:00:00:00:00:01");
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The most bytes a config may hold (1 MiB). Every door checks it before
/// parsing: a file is read no further (`read_file`), and text from the API
/// or an edit is refused by `Config::read`, so a config one door accepts
/// fits through the others (the daemon writes an API change to its file
/// and reads that back on SIGHUP). 1 MiB holds about 10,000 small VIPs,
/// ten times what the data plane takes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading it failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It holds more than `MAX_CONFIG_BYTES`.
    #[error("larger than {MAX_CONFIG_BYTES} bytes (1 MiB), the most a config may hold")]
    TooLarge,
    /// It is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
}

impl ReadError {
    /// The problem a config at `location` has when it cannot be read.
    pub fn problem(&self, location: impl Into<String>) -> Problem {
        let code = match self {
            ReadError::TooLarge => "config-too-large",
            ReadError::Io(_) | ReadError::NotText => "unreadable-file",
        };
        Problem::error(
            code,
            location,
            "",
            "",
            format!("cannot read the config: {self}"),
        )
    }
}

/// The text of the config file at `path`, read no further than
/// `MAX_CONFIG_BYTES` (and one byte to tell a larger file), so that
/// `/dev/zero`, a FIFO that never ends or a huge file costs at most that
/// much memory.
pub fn read_file(path: &Path) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

impl Config {
    /// Reads a config from TOML text: the config as far as it could be read,
    /// and every shape problem found (empty when the text is well formed).
    /// Text beyond `MAX_CONFIG_BYTES` is not parsed.
    pub fn read(text: &str) -> (Option<Self>, Vec<Problem>) {
        if text.len() > MAX_CONFIG_BYTES {
            return (None, vec![ReadError::TooLarge.problem("config")]);
        }
        read::read(text)
    }

    /// Parses a config, failing (one line, every problem) on any shape
    /// problem. Semantic checks are `validate`'s.
    pub fn parse(text: &str) -> Result<Self, Unreadable> {
        match Self::read(text) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(Unreadable(problems)),
        }
    }
}

/// A config text that cannot be read as a config: every problem found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", join_problems(.0))]
pub struct Unreadable(pub Vec<Problem>);

/// Problems as one line, separated by "; ".
pub fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        interface = "eth1"
        [[vip]]
        address = "198.18.0.100"
        port = 80
        protocol = "tcp"
        [[vip.backend]]
        address = "198.18.1.1"
        mac = "02:00:00:00:01:01"
        [[vip.backend]]
        address = "198.18.1.2"
        weight = 2
    "#;

    /// Hex octets (server IDs, `explain --cid`) parse or say why not, and
    /// never panic on any text.
    #[test]
    fn hex_octets_parse_or_say_why() {
        assert_eq!("0a1B".parse::<ServerId>(), Ok(ServerId(vec![0x0a, 0x1b])));
        assert_eq!("0xff00".parse::<ServerId>(), Ok(ServerId(vec![0xff, 0])));
        for bad in [
            "", "0x", "a", "0a1", "aé0", "éé", "+a0b", "0x0x0a", "0a 1b", "zz",
        ] {
            let error = bad.parse::<ServerId>().expect_err(bad);
            assert!(error.contains("is not hex octets"), "{bad}: {error}");
        }
    }

    #[test]
    fn parses_an_example() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.interface.as_deref(), Some("eth1"));
        assert_eq!(config.table_size, 65537);
        assert_eq!(config.guards, Guards::default());
        let vip = &config.vips[0];
        assert_eq!(vip.protocol, Protocol::Tcp);
        assert_eq!(vip.backends[0].weight, 1);
        assert_eq!(vip.backends[0].mac, Some(MacAddr([2, 0, 0, 0, 1, 1])));
        assert_eq!(vip.backends[1].weight, 2);
        assert_eq!(vip.label(), "198.18.0.100:80/tcp");
    }

    #[test]
    fn the_shipped_example_parses() {
        let config = Config::parse(include_str!("../../../examples/fulcrum.toml")).unwrap();
        assert_eq!(config.vips.len(), 2);
        assert_eq!(config.vips[0].backends[2].weight, 2);
        assert_eq!(config.vips[1].backends[0].weight, 1);
    }

    #[test]
    fn every_shape_problem_is_reported_on_one_line() {
        let text = EXAMPLE
            .replace("weight = 2", "wieght = 2")
            .replace("port = 80", "port = \"eighty\"");
        let err = Config::parse(&text).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("unknown key"), "{text}");
        assert!(text.contains("wieght"), "{text}");
        assert!(text.contains("port = \"eighty\""), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn a_config_is_read_up_to_its_size_limit_and_no_further() {
        let dir = std::env::temp_dir().join(format!("fulcrum-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A comment fills the file to the limit: still a config.
        let full = format!("#{}", "x".repeat(MAX_CONFIG_BYTES - 1));
        let at_limit = dir.join("at-limit.toml");
        std::fs::write(&at_limit, &full).unwrap();
        assert_eq!(read_file(&at_limit).unwrap().len(), MAX_CONFIG_BYTES);
        assert!(Config::parse(&full).is_ok());
        let over = dir.join("over.toml");
        std::fs::write(&over, full.clone() + "\n").unwrap();
        assert!(matches!(read_file(&over), Err(ReadError::TooLarge)));
        assert!(matches!(
            read_file(Path::new("/dev/zero")),
            Err(ReadError::TooLarge)
        ));
        let binary = dir.join("binary.toml");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_file(&binary), Err(ReadError::NotText)));
        std::fs::remove_dir_all(&dir).unwrap();
        let (config, problems) = Config::read(&(full + "\n"));
        assert!(config.is_none());
        assert_eq!(problems[0].code, "config-too-large", "{problems:?}");
    }

    #[test]
    fn bad_macs_are_errors() {
        for bad in [
            "02:00:00:00:01",
            "02:00:00:00:01:01:01",
            "zz:00:00:00:01:01",
            "2:0:0:0:1:1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
