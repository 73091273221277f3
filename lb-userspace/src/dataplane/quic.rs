//! The QUIC VIPs' routing as the kernel holds it, bank by bank: where
//! each VIP's servers put their ID (`QUIC_ROUTES`, by table id) and the
//! IDs (`QUIC_SERVERS`, each key naming the VIP's table id), so an apply
//! writes the bank not in use and the commit makes it live with the
//! tables. Only what differs from what the bank held is written.

use std::collections::HashMap;

use aya::maps::{Array, HashMap as BpfHashMap};
use lb_common::maps::{MAX_VIPS, QUIC_WINDOW, QuicRoute, QuicServerKey, TABLE_BANKS, names};

use super::{Dataplane, Result, map_err, state::DesiredState, table_id};
use crate::config::ServerId;

/// Both banks' server IDs as the kernel holds them: key to backend id.
#[derive(Clone, Debug, Default)]
pub struct QuicServers {
    banks: [HashMap<QuicServerKey, u32>; TABLE_BANKS as usize],
}

/// `id` in VIP list `list` as the map keys it (zero-padded).
fn server_key(list: u32, id: &ServerId) -> QuicServerKey {
    let mut padded = [0u8; QUIC_WINDOW];
    let len = id.0.len().min(QUIC_WINDOW);
    padded[..len].copy_from_slice(&id.0[..len]);
    QuicServerKey { list, id: padded }
}

/// What `bank` must hold for `state`: every backend's ID but those held
/// out of the table for want of a MAC (whose slot would send to none).
fn wanted(bank: u32, state: &DesiredState) -> HashMap<QuicServerKey, u32> {
    state
        .vips
        .iter()
        .filter(|v| v.quic.is_some())
        .flat_map(|v| {
            let list = table_id(bank, v.vip_id);
            v.backends
                .iter()
                .filter(|b| !b.held_out())
                .filter_map(move |b| {
                    b.server_id
                        .as_ref()
                        .map(|id| (server_key(list, id), b.backend_id))
                })
        })
        .collect()
}

impl Dataplane {
    /// Both banks' server IDs as the kernel holds them: read once (an
    /// adopted instance's as a fresh one's).
    fn quic_servers(&mut self) -> Result<QuicServers> {
        if let Some(held) = self.quic_servers.take() {
            return Ok(held);
        }
        let map: BpfHashMap<_, QuicServerKey, u32> =
            BpfHashMap::try_from(self.map(names::QUIC_SERVERS)?)
                .map_err(map_err(names::QUIC_SERVERS))?;
        let mut held = QuicServers::default();
        for entry in map.iter() {
            let (key, backend_id) = entry.map_err(map_err(names::QUIC_SERVERS))?;
            if let Some(bank) = held.banks.get_mut((key.list / MAX_VIPS) as usize) {
                bank.insert(key, backend_id);
            }
        }
        Ok(held)
    }

    /// Writes `state`'s server IDs into `bank` (not in use): removes what
    /// it held that `state` does not have, adds or changes the rest. After
    /// a failed write the bank is read afresh next time.
    pub(super) fn stage_quic(&mut self, bank: u32, state: &DesiredState) -> Result<()> {
        let mut held = self.quic_servers()?;
        let wanted = wanted(bank, state);
        let mine = &mut held.banks[bank as usize];
        let mut map: BpfHashMap<_, QuicServerKey, u32> =
            BpfHashMap::try_from(self.map_mut(names::QUIC_SERVERS)?)
                .map_err(map_err(names::QUIC_SERVERS))?;
        let gone: Vec<QuicServerKey> = mine
            .keys()
            .filter(|key| !wanted.contains_key(key))
            .copied()
            .collect();
        for key in gone {
            map.remove(&key).map_err(map_err(names::QUIC_SERVERS))?;
            mine.remove(&key);
        }
        for (key, backend_id) in wanted {
            if mine.get(&key) != Some(&backend_id) {
                map.insert(key, backend_id, 0)
                    .map_err(map_err(names::QUIC_SERVERS))?;
                mine.insert(key, backend_id);
            }
        }
        self.quic_servers = Some(held);
        let mut routes: Array<_, QuicRoute> = Array::try_from(self.map_mut(names::QUIC_ROUTES)?)
            .map_err(map_err(names::QUIC_ROUTES))?;
        for vip in &state.vips {
            if let Some(quic) = &vip.quic {
                routes
                    .set(table_id(bank, vip.vip_id), quic.route(), 0)
                    .map_err(map_err(names::QUIC_ROUTES))?;
            }
        }
        Ok(())
    }
}
