//! The state to install: a config turned into what the kernel maps hold,
//! with VIP ids, backend slot ids and each VIP's built lookup table. Pure;
//! also answers "which backend gets this flow" exactly as the kernel would.

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    flow_hash::{FlowSeed, flow_hash, table_slot},
    maps::{
        BACKEND_ACTIVE, Backend, FAMILY_IPV4, FAMILY_IPV6, FlowKey, MAX_VIPS, PROTO_TCP, PROTO_UDP,
        VIP_SLOT_ADMIT, VIP_SLOT_QUIC, VipKey, VipSlot,
    },
};

use crate::{
    config::{
        BackendConfig, Config, Encapsulation, Forwarding, IdleTimeouts, Limits, MacAddr,
        QuicConfig, ServerId, SourceRules,
    },
    table::TableSize,
    table::{TableError, VipTable},
};

/// What `mac_of` answers for a backend whose MAC it does not know.
#[derive(Debug, thiserror::Error)]
#[error("{why} for {address}")]
pub struct UnknownMac {
    /// The backend's address.
    pub address: IpAddr,
    /// Why its MAC is unknown (`no recorded MAC`).
    pub why: &'static str,
}

/// Why a config could not be turned into the state to install. Each
/// message names the VIP and backend; the underlying error is its source.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config's table size is not one a table can have.
    #[error(transparent)]
    TableSize(#[from] TableError),
    /// More VIPs than the data plane holds.
    #[error("more than {MAX_VIPS} VIPs")]
    TooManyVips,
    /// More backends than the data plane was loaded for.
    #[error("more than max_backends = {0} backends")]
    TooManyBackends(u32),
    /// A backend's MAC is not known.
    #[error("VIP {vip}, backend {backend}")]
    Mac {
        /// The VIP's label.
        vip: String,
        /// The backend's label.
        backend: String,
        /// Why its MAC is unknown.
        #[source]
        source: UnknownMac,
    },
    /// A VIP's lookup table could not be built.
    #[error("VIP {vip}")]
    Table {
        /// The VIP's label.
        vip: String,
        /// Why.
        #[source]
        source: TableError,
    },
}

/// Everything `fulcrum` writes into the maps.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredState {
    /// Lookup-table size shared by all VIPs.
    pub table_size: TableSize,
    /// When idle flows expire (written into the config map on commit).
    pub idle: IdleTimeouts,
    /// Outer headers of encapsulated frames (written into the config map
    /// on commit).
    pub encap: Encapsulation,
    /// The VIPs, in config order.
    pub vips: Vec<VipState>,
}

/// One VIP as installed.
#[derive(Clone, Debug, PartialEq)]
pub struct VipState {
    /// Label for output.
    pub label: String,
    /// The VIP map key.
    pub key: VipKey,
    /// Index of its lookup table and counters.
    pub vip_id: u32,
    /// Its backends, in config order (the table's positions index them).
    pub backends: Vec<BackendState>,
    /// Its lookup table: the one validation built and the plan judged.
    pub table: VipTable,
    /// How its frames reach its backends.
    pub forwarding: Forwarding,
    /// Which sources it admits.
    pub sources: SourceRules,
    /// Its caps on new flows and packets.
    pub limits: Limits,
    /// How it routes QUIC by connection ID, if it does.
    pub quic: Option<QuicConfig>,
}

impl VipState {
    /// Whether the data plane checks its packets (source rules or limits).
    pub fn admits(&self) -> bool {
        !self.sources.is_empty() || !self.limits.is_empty()
    }
}

/// One backend as installed.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendState {
    /// Label for output.
    pub label: String,
    /// Its slot in the backend array (never 0).
    pub backend_id: u32,
    /// Address and port (its identity).
    pub addr: SocketAddr,
    /// Configured weight.
    pub weight: u32,
    /// Destination MAC: the backend's (L2 DSR) or the next hop's towards
    /// it (encapsulation).
    pub mac: MacAddr,
    /// Found dead by the health checker: out of the table, and its slot
    /// inactive, so its flows are hashed again into the table.
    pub down: bool,
    /// Its QUIC server ID, when its VIP routes QUIC by connection ID.
    pub server_id: Option<ServerId>,
}

impl BackendState {
    /// Held out of its table for want of a MAC (weight 0, the all-zero
    /// MAC): nothing may be sent to it, not even by its QUIC server ID.
    pub fn held_out(&self) -> bool {
        self.mac.0 == [0; 6]
    }

    /// Its slot in the backend array, serving `vip`, with `flags` and
    /// `generation`.
    pub fn slot(&self, vip: &VipState, active: bool, generation: u32) -> Backend {
        let (addr, family) = ip_bytes(self.addr.ip());
        Backend {
            mac: self.mac.0,
            flags: if active { BACKEND_ACTIVE } else { 0 },
            vip_id: vip.vip_id,
            generation,
            forward: vip.forwarding.kernel(),
            family,
            pad: [0; 2],
            addr,
        }
    }
}

/// The address a key's bytes and family tag hold.
pub fn ip_from(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

/// The map key of a VIP.
pub fn vip_key(addr: IpAddr, port: u16, proto: u8) -> VipKey {
    let (bytes, family) = ip_bytes(addr);
    VipKey {
        addr: bytes,
        port,
        proto,
        family,
    }
}

/// An address as the kernel keys hold it: 16 bytes (IPv4 in the first four)
/// and a family tag.
pub fn ip_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// The connection-table key of a flow.
pub fn flow_key(src: SocketAddr, dst: SocketAddr, proto: u8) -> FlowKey {
    let (src_addr, family) = ip_bytes(src.ip());
    let (dst_addr, _) = ip_bytes(dst.ip());
    FlowKey {
        src_addr,
        dst_addr,
        src_port: src.port(),
        dst_port: dst.port(),
        proto,
        family,
        pad: [0; 2],
    }
}

/// Hands out ids: the ones `previous` used for the same thing first, then
/// the lowest id used neither before nor now. Keeping ids stable is what
/// keeps established flows on their backend across applies: connection-table
/// entries name backends by id.
struct IdAllocator {
    taken: std::collections::BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl IdAllocator {
    fn new(first: u32, limit: u32, previous: impl IntoIterator<Item = u32>) -> Self {
        Self {
            taken: previous.into_iter().collect(),
            next: first,
            limit,
        }
    }

    fn fresh(&mut self) -> Option<u32> {
        while self.taken.contains(&self.next) {
            self.next += 1;
        }
        (self.next < self.limit).then(|| {
            self.taken.insert(self.next);
            self.next
        })
    }
}

impl DesiredState {
    /// Builds the state for `config` from nothing installed; `mac_of`
    /// supplies each backend's MAC.
    pub fn build(
        config: &Config,
        mac_of: impl FnMut(&BackendConfig) -> Result<MacAddr, UnknownMac>,
    ) -> Result<Self, BuildError> {
        Self::build_from(config, None, mac_of)
    }

    /// Builds the state for `config` to replace `previous`: VIPs and
    /// backends that stay keep their ids, new ones get ids nobody used.
    pub fn build_from(
        config: &Config,
        previous: Option<&DesiredState>,
        mac_of: impl FnMut(&BackendConfig) -> Result<MacAddr, UnknownMac>,
    ) -> Result<Self, BuildError> {
        Self::build_with(config, &[], previous, mac_of)
    }

    /// Like `build_from`, with the tables validation already built for
    /// `config` (one per VIP, in config order; a missing one is built), so
    /// each table of an apply is built once.
    pub fn build_with(
        config: &Config,
        tables: &[Option<VipTable>],
        previous: Option<&DesiredState>,
        mut mac_of: impl FnMut(&BackendConfig) -> Result<MacAddr, UnknownMac>,
    ) -> Result<Self, BuildError> {
        let table_size = TableSize::new(config.table_size)?;
        let old_vips = previous.map_or(&[][..], |p| &p.vips[..]);
        let mut vip_ids = IdAllocator::new(0, MAX_VIPS, old_vips.iter().map(|v| v.vip_id));
        let mut backend_ids = IdAllocator::new(
            1,
            config.max_backends.saturating_add(1),
            old_vips
                .iter()
                .flat_map(|v| v.backends.iter().map(|b| b.backend_id)),
        );
        let mut vips = Vec::with_capacity(config.vips.len());
        for vip in &config.vips {
            let label = vip.label();
            let key = vip_key(vip.address, vip.port, vip.protocol.number());
            let old = old_vips.iter().find(|v| v.key == key);
            let vip_id = match old {
                Some(old) => old.vip_id,
                None => vip_ids.fresh().ok_or(BuildError::TooManyVips)?,
            };
            let mut backends = Vec::with_capacity(vip.backends.len());
            let mut server_ids = crate::policy::quic::server_ids(vip).map(Vec::into_iter);
            for backend in &vip.backends {
                let addr = vip.backend_addr(backend);
                let kept = old.and_then(|o| o.backends.iter().find(|b| b.addr == addr));
                let backend_id = match kept {
                    Some(kept) => kept.backend_id,
                    None => backend_ids
                        .fresh()
                        .ok_or(BuildError::TooManyBackends(config.max_backends))?,
                };
                let mac = mac_of(backend).map_err(|source| BuildError::Mac {
                    vip: label.clone(),
                    backend: backend.label(),
                    source,
                })?;
                backends.push(BackendState {
                    label: backend.label(),
                    backend_id,
                    addr,
                    weight: backend.weight,
                    mac,
                    down: false,
                    server_id: server_ids.as_mut().and_then(Iterator::next),
                });
            }
            let table = match tables.get(vips.len()).and_then(Option::as_ref) {
                Some(built) => built.clone(),
                None => vip
                    .lookup_table(table_size)
                    .map_err(|source| BuildError::Table {
                        vip: label.clone(),
                        source,
                    })?,
            };
            vips.push(VipState {
                label,
                key,
                vip_id,
                backends,
                table,
                forwarding: vip.forwarding,
                sources: vip.sources.clone(),
                limits: vip.limits,
                quic: vip.quic,
            });
        }
        Ok(Self {
            table_size,
            idle: config.idle,
            encap: config.encapsulation.clone(),
            vips,
        })
    }

    /// Marks the backends in `down` (VIP endpoint, backend identity) dead.
    pub fn mark_down(&mut self, down: &[(String, SocketAddr)]) {
        for vip in &mut self.vips {
            let endpoint = vip.endpoint();
            for backend in &mut vip.backends {
                backend.down = down
                    .iter()
                    .any(|(e, a)| *e == endpoint && *a == backend.addr);
            }
        }
    }

    /// The backends marked dead: VIP endpoint and identity.
    pub fn down_backends(&self) -> Vec<(String, SocketAddr)> {
        self.vips
            .iter()
            .flat_map(|v| {
                let endpoint = v.endpoint();
                v.backends
                    .iter()
                    .filter(|b| b.down)
                    .map(move |b| (endpoint.clone(), b.addr))
            })
            .collect()
    }

    /// Every backend id in use.
    pub fn backend_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.backend_id))
    }

    /// The VIP a flow's destination matches, exact port first, then port 0.
    pub fn vip_for(&self, flow: &FlowKey) -> Option<&VipState> {
        let exact = VipKey {
            addr: flow.dst_addr,
            port: flow.dst_port,
            proto: flow.proto,
            family: flow.family,
        };
        let any_port = VipKey { port: 0, ..exact };
        self.vips
            .iter()
            .find(|v| v.key == exact)
            .or_else(|| self.vips.iter().find(|v| v.key == any_port))
    }

    /// The backend the lookup table gives a new flow under the data
    /// plane's `seed` (what the kernel does on a SYN or a connection-table
    /// miss).
    pub fn backend_for(&self, flow: &FlowKey, seed: &FlowSeed) -> Option<&BackendState> {
        let vip = self.vip_for(flow)?;
        let slot = table_slot(flow_hash(flow, seed), vip.table.table.len() as u32)?;
        let position = vip.table.table[(slot - lb_common::maps::TABLE_HEADER_SLOTS) as usize];
        vip.backends.get(position as usize)
    }
}

impl VipState {
    /// Its slot of the VIP index, naming its table in `bank`.
    pub fn slot(&self, bank: u32) -> VipSlot {
        let admit = if self.admits() { VIP_SLOT_ADMIT } else { 0 };
        let quic = if self.quic.is_some() {
            VIP_SLOT_QUIC
        } else {
            0
        };
        VipSlot {
            key: self.key,
            vip_id: self.vip_id,
            flags: admit | quic,
            table_id: super::table_id(bank, self.vip_id),
            table_size: self.table.table.len() as u32,
        }
    }

    /// `address:port/protocol`, as the config's `VipConfig::endpoint`.
    pub fn endpoint(&self) -> String {
        let protocol = match self.key.proto {
            PROTO_TCP => "tcp".to_string(),
            PROTO_UDP => "udp".to_string(),
            other => other.to_string(),
        };
        format!(
            "{}/{protocol}",
            SocketAddr::new(ip_from(&self.key.addr, self.key.family), self.key.port)
        )
    }

    /// Backend `index`'s (config order) share of the table, 0.0..=1.0.
    pub fn expected_share(&self, index: usize) -> f64 {
        self.table.share(index)
    }

    /// The table as the kernel holds it: slot -> backend slot id.
    pub fn kernel_table(&self) -> Vec<u32> {
        self.table
            .table
            .iter()
            .map(|&position| self.backends[position as usize].backend_id)
            .collect()
    }
}

/// A state for unit tests elsewhere: VIP `web` (198.18.100.1:80/tcp,
/// backends `b1` and `b2`), `dns` (198.18.100.1:53/udp, `b1` again) and
/// `web6` (2001:2::100:80/tcp).
#[cfg(test)]
pub fn sample_state() -> DesiredState {
    let config = Config::parse(
        r#"
        table_size = 4093
        vip = [
          { name = "web", address = "198.18.100.1", port = 80, protocol = "tcp", backend = [{ name = "b1", address = "198.18.1.1" }, { name = "b2", address = "198.18.1.2" }] },
          { name = "dns", address = "198.18.100.1", port = 53, protocol = "udp", backend = [{ name = "b1", address = "198.18.1.1" }] },
          { name = "web6", address = "2001:2::100", port = 80, protocol = "tcp", backend = [{ address = "2001:2::1" }] },
        ]
        "#,
    )
    .expect("the sample config parses");
    DesiredState::build(&config, |_| Ok(MacAddr([2, 0, 0, 0, 0, 1]))).expect("it builds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config() -> Config {
        Config::parse(
            r#"
            table_size = 4093
            [[vip]]
            address = "198.18.0.100"
            port = 80
            protocol = "tcp"
            [[vip.backend]]
            address = "198.18.1.1"
            [[vip.backend]]
            address = "198.18.1.2"
            weight = 3
            [[vip]]
            address = "2001:2::100"
            port = 0
            protocol = "udp"
            [[vip.backend]]
            address = "2001:2::1"
            "#,
        )
        .unwrap()
    }

    fn state() -> DesiredState {
        DesiredState::build(&config(), |_| Ok(MacAddr([2, 0, 0, 0, 0, 1]))).unwrap()
    }

    #[test]
    fn ids_are_dense_and_backend_ids_start_at_one() {
        let state = state();
        assert_eq!(state.vips[0].vip_id, 0);
        assert_eq!(state.vips[1].vip_id, 1);
        let ids: Vec<u32> = state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.backend_id))
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(state.vips[0].table.slots[1], 3070, "3/4 of 4093");
    }

    #[test]
    fn flows_find_exact_then_any_port_vips() {
        let state = state();
        let to_80 = flow_key(
            "198.18.2.1:40000".parse().unwrap(),
            "198.18.0.100:80".parse().unwrap(),
            6,
        );
        assert_eq!(state.vip_for(&to_80).unwrap().vip_id, 0);
        let to_81 = flow_key(
            "198.18.2.1:40000".parse().unwrap(),
            "198.18.0.100:81".parse().unwrap(),
            6,
        );
        assert!(state.vip_for(&to_81).is_none());
        let any = flow_key(
            "[2001:2::9]:5000".parse().unwrap(),
            "[2001:2::100]:5353".parse().unwrap(),
            17,
        );
        assert_eq!(
            state
                .backend_for(&any, &FlowSeed::default())
                .unwrap()
                .backend_id,
            3
        );
    }

    #[test]
    fn ids_stay_with_their_vip_and_backend_across_builds() {
        let first = state();
        let mut changed = config();
        changed.vips[0].backends.remove(0);
        changed.vips[0].backends.push(BackendConfig {
            name: None,
            address: "198.18.1.9".parse().unwrap(),
            port: None,
            weight: 1,
            mac: None,
            health_check: Default::default(),
            server_id: None,
        });
        changed.vips.swap(0, 1);
        let next =
            DesiredState::build_from(&changed, Some(&first), |_| Ok(MacAddr([2, 0, 0, 0, 0, 1])))
                .unwrap();
        let web = next
            .vips
            .iter()
            .find(|v| v.key == first.vips[0].key)
            .unwrap();
        assert_eq!(web.vip_id, first.vips[0].vip_id, "VIP keeps its id");
        assert_eq!(web.backends[0].backend_id, 2, "198.18.1.2 keeps id 2");
        assert_eq!(
            web.backends[1].backend_id, 4,
            "the new backend gets an unused id"
        );
        let dns = next
            .vips
            .iter()
            .find(|v| v.key == first.vips[1].key)
            .unwrap();
        assert_eq!(dns.vip_id, first.vips[1].vip_id);
        assert_eq!(dns.backends[0].backend_id, 3);
    }

    #[test]
    fn missing_macs_name_the_backend() {
        let err = DesiredState::build(&config(), |b| {
            if b.address.to_string() == "198.18.1.2" {
                return Err(UnknownMac {
                    address: b.address,
                    why: "not in the neighbour table",
                });
            }
            Ok(MacAddr([2, 0, 0, 0, 0, 1]))
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("backend 198.18.1.2"), "{text}");
    }
}
