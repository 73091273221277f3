//! Backend MACs from the kernel's neighbour table, read over netlink: one
//! dump answers for every backend at once. Backends the table does not
//! know yet are probed all together (an empty UDP datagram each, which
//! makes the kernel resolve them), and the table is read again until every
//! one is known or the time is up. What stays unknown is the caller's to
//! handle (the gate holds such backends out of the tables).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};

use crate::config::MacAddr;

/// How long a start-up or an apply waits for unknown backends.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Every usable entry of the neighbour table on interface `ifindex`.
pub fn table(ifindex: u32) -> anyhow::Result<HashMap<IpAddr, MacAddr>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a netlink runtime")?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        let mut dump = handle.neighbours().get().execute();
        let mut found = HashMap::new();
        while let Some(entry) = dump
            .try_next()
            .await
            .context("reading the neighbour table")?
        {
            let usable = !matches!(
                entry.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            );
            if entry.header.ifindex != ifindex || !usable {
                continue;
            }
            let mut address = None;
            let mut mac = None;
            for attribute in &entry.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        address = Some(IpAddr::V4(*v4));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        address = Some(IpAddr::V6(*v6));
                    }
                    NeighbourAttribute::LinkLocalAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
                    }
                    _ => {}
                }
            }
            if let (Some(address), Some(mac)) = (address, mac) {
                found.insert(address, mac);
            }
        }
        anyhow::Ok(found)
    })
}

/// Makes the kernel resolve `address`: one empty datagram to the discard
/// port (a send error, say no route, shows up later as "not resolved").
fn probe(address: IpAddr) {
    let bind: SocketAddr = match address {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], SocketAddr::new(address, 9));
    }
}

/// What the gate resolves MACs with: `resolve` on `interface`, with
/// `RESOLVE_TIMEOUT`.
pub fn resolver(
    interface: &str,
) -> impl Fn(&[IpAddr]) -> anyhow::Result<HashMap<IpAddr, MacAddr>> + use<> {
    let interface = interface.to_string();
    move |wanted| resolve(wanted, super::ifindex(&interface)?, RESOLVE_TIMEOUT)
}

/// The MACs of `wanted` on interface `ifindex`, resolved all at once
/// within `timeout`. Addresses missing from the answer could not be
/// resolved.
pub fn resolve(
    wanted: &[IpAddr],
    ifindex: u32,
    timeout: Duration,
) -> anyhow::Result<HashMap<IpAddr, MacAddr>> {
    let mut known = table(ifindex)?;
    let missing: Vec<IpAddr> = wanted
        .iter()
        .copied()
        .filter(|a| !known.contains_key(a))
        .collect();
    if !missing.is_empty() {
        missing.iter().copied().for_each(probe);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && missing.iter().any(|a| !known.contains_key(a)) {
            std::thread::sleep(Duration::from_millis(20));
            known = table(ifindex)?;
        }
    }
    let wanted: HashSet<&IpAddr> = wanted.iter().collect();
    known.retain(|address, _| wanted.contains(address));
    Ok(known)
}
