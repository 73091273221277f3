//! The MACs backends' frames go to, from the kernel's neighbour table, read
//! over netlink: one dump answers for every backend at once. An L2 DSR
//! backend's is its own (it must be on the segment); an encapsulated
//! backend's is its next hop's, found with a route lookup (`ip route get`)
//! that must leave through the attached interface. Backends the table does
//! not know yet are probed all together (an empty UDP datagram each, which
//! makes the kernel resolve the next hop), and the table is read again
//! until every one is known or the time is up. What stays unknown is the
//! caller's to handle (the gate holds such backends out of the tables).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::{ErrorMessage, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    },
};

use crate::config::{MacAddr, Reach};

/// How long a start-up or an apply waits for unknown backends.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the kernel's neighbour or route table could not be read. Each
/// message names what was asked; the underlying error, if any, is its
/// source.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// No netlink socket could be opened.
    #[error("opening a netlink socket")]
    Open(#[source] std::io::Error),
    /// The neighbour table could not be read.
    #[error("reading the neighbour table")]
    Table(#[source] rtnetlink::Error),
    /// A route lookup could not be sent.
    #[error("asking for a route")]
    Ask(#[source] rtnetlink::Error),
    /// The kernel has no route to the destination.
    #[error("no route to {destination}: {error:?}")]
    NoRoute {
        /// The destination looked up.
        destination: IpAddr,
        /// The kernel's answer.
        error: ErrorMessage,
    },
    /// The kernel ended its answer to a route lookup without a route.
    #[error("no answer to a route lookup for {0}")]
    NoAnswer(IpAddr),
}

/// Every usable entry of the neighbour table on interface `ifindex`.
async fn table(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<HashMap<IpAddr, MacAddr>, NeighbourError> {
    let mut dump = handle.neighbours().get().execute();
    let mut found = HashMap::new();
    while let Some(entry) = dump.try_next().await.map_err(NeighbourError::Table)? {
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
    Ok(found)
}

/// What the routing table says of `destination` (`ip route get`: a
/// lookup, not a dump): its route's type, the next hop (the destination
/// itself when on-link) and the interface it leaves by.
async fn route(
    handle: &rtnetlink::Handle,
    destination: IpAddr,
) -> Result<(RouteType, IpAddr, Option<u32>), NeighbourError> {
    let mut message = RouteMessage::default();
    (
        message.header.address_family,
        message.header.destination_prefix_length,
    ) = match destination {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    message
        .attributes
        .push(RouteAttribute::Destination(destination.into()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
    request.header.flags = NLM_F_REQUEST;
    let mut answers = handle
        .clone()
        .request(request)
        .map_err(NeighbourError::Ask)?;
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                let mut interface = None;
                let mut gateway = None;
                for attribute in route.attributes {
                    match attribute {
                        RouteAttribute::Oif(index) => interface = Some(index),
                        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => {
                            gateway = Some(IpAddr::V4(v4));
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(v6))
                        | RouteAttribute::Via(RouteVia::Inet6(v6)) => {
                            gateway = Some(IpAddr::V6(v6));
                        }
                        _ => {}
                    }
                }
                return Ok((route.header.kind, gateway.unwrap_or(destination), interface));
            }
            NetlinkPayload::Error(error) => {
                return Err(NeighbourError::NoRoute { destination, error });
            }
            _ => {}
        }
    }
    Err(NeighbourError::NoAnswer(destination))
}

/// One rtnetlink socket for as long as its owner lives, in the network
/// namespace of the thread that opened it. Its connection is driven by a
/// tokio runtime; the synchronous callers (the controller, the gate) wait
/// for the answers, which must not happen on one of that runtime's own
/// threads.
pub struct Netlink {
    handle: rtnetlink::Handle,
    runtime: tokio::runtime::Handle,
}

impl Netlink {
    /// Opens the socket, its connection driven by `runtime`.
    pub fn open(runtime: &tokio::runtime::Handle) -> Result<Self, NeighbourError> {
        let _inside = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NeighbourError::Open)?;
        runtime.spawn(connection);
        Ok(Self {
            handle,
            runtime: runtime.clone(),
        })
    }

    /// Whether packets to `address` would be delivered to this host (a
    /// local route: an address of its own, or a `local` route for a
    /// prefix).
    pub fn is_local(&self, address: IpAddr) -> bool {
        self.runtime.block_on(async {
            matches!(
                route(&self.handle, address).await,
                Ok((RouteType::Local, ..))
            )
        })
    }

    /// The MACs the backends in `wanted` are reached at through interface
    /// `ifindex`, as the kernel knows them now. Missing from the answer:
    /// not known (yet), or, for a routed backend, routed through another
    /// interface.
    pub fn lookup(
        &self,
        wanted: &[(IpAddr, Reach)],
        ifindex: u32,
    ) -> Result<HashMap<IpAddr, MacAddr>, NeighbourError> {
        self.runtime.block_on(lookup(&self.handle, wanted, ifindex))
    }

    /// The MACs of `wanted` on interface `ifindex`, resolved all at once
    /// within `timeout`: the unknown ones are probed, and the table read
    /// again until they are known or the time is up. Addresses missing
    /// from the answer could not be resolved.
    pub fn resolve(
        &self,
        wanted: &[(IpAddr, Reach)],
        ifindex: u32,
        timeout: Duration,
    ) -> Result<HashMap<IpAddr, MacAddr>, NeighbourError> {
        self.runtime.block_on(async {
            let mut known = lookup(&self.handle, wanted, ifindex).await?;
            let missing: Vec<IpAddr> = wanted
                .iter()
                .map(|&(address, _)| address)
                .filter(|a| !known.contains_key(a))
                .collect();
            if !missing.is_empty() {
                missing.iter().copied().for_each(probe);
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline && missing.iter().any(|a| !known.contains_key(a)) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    known = lookup(&self.handle, wanted, ifindex).await?;
                }
            }
            Ok(known)
        })
    }
}

/// What `Netlink::lookup` answers: the neighbour table read once, and a
/// route asked for each routed backend.
async fn lookup(
    handle: &rtnetlink::Handle,
    wanted: &[(IpAddr, Reach)],
    ifindex: u32,
) -> Result<HashMap<IpAddr, MacAddr>, NeighbourError> {
    let known = table(handle, ifindex).await?;
    let mut found = HashMap::new();
    for &(address, reach) in wanted {
        let hop = match reach {
            Reach::Segment => Some(address),
            Reach::Routed => route(handle, address)
                .await
                .ok()
                .filter(|&(_, _, interface)| interface == Some(ifindex))
                .map(|(_, hop, _)| hop),
        };
        if let Some(mac) = hop.and_then(|hop| known.get(&hop)) {
            found.insert(address, *mac);
        }
    }
    Ok(found)
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
