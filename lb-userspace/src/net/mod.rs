//! What `fulcrum` learns from the network it serves: interfaces (index,
//! MAC, MTU, addresses) here, backend MACs in `neighbours`. Both ask the
//! kernel over rtnetlink, in this thread's network namespace
//! (`/sys/class/net` shows the namespace sysfs was mounted in, which may be
//! another). Interfaces are asked with one blocking request on a socket of
//! its own: their callers (start-up, the neighbour tick, a scrape) are
//! synchronous, and one request needs no runtime.

use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkMessage},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use crate::config::MacAddr;

pub mod neighbours;

/// Why the kernel could not say what was asked of an interface. Each
/// message names the interface; the kernel's error, if any, is its source.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// The name cannot be an interface's: empty, too long or with a NUL.
    #[error("not an interface name: {0:?}")]
    NotAName(String),
    /// No interface has the name in this network namespace.
    #[error("unknown interface {0:?}")]
    Unknown(String),
    /// The kernel could not be asked about the interface.
    #[error("asking the kernel about {interface}")]
    Ask {
        /// The interface.
        interface: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered without describing the interface.
    #[error("the kernel did not describe interface {0:?}")]
    Undescribed(String),
    /// The kernel's description of the interface has no MTU.
    #[error("the kernel gave no MTU for {0}")]
    NoMtu(String),
    /// The interfaces' addresses could not be listed.
    #[error("listing the interfaces' addresses")]
    Addresses(#[source] std::io::Error),
}

/// Sends one rtnetlink request with `flags` (`NLM_F_REQUEST`, plus
/// `NLM_F_DUMP` for a dump) and returns the answers, through the end of a
/// dump.
fn ask(request: RouteNetlinkMessage, flags: u16) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = NetlinkMessage::from(request);
    message.header.flags = flags;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut answers = Vec::new();
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(std::io::Error::other)?;
            let length = (answer.header.length as usize).clamp(1, rest.len());
            rest = &rest[length..];
            let more = answer.header.flags & NLM_F_MULTIPART != 0;
            match answer.payload {
                NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(error.to_io());
                }
                NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(answers),
                _ => {}
            }
            if !more {
                return Ok(answers);
            }
        }
    }
}

/// What the kernel says of `interface` (`RTM_GETLINK` by name).
fn link(interface: &str) -> Result<LinkMessage, InterfaceError> {
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ || interface.contains('\0') {
        return Err(InterfaceError::NotAName(interface.to_string()));
    }
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::IfName(interface.to_string()));
    let answers = match ask(RouteNetlinkMessage::GetLink(request), NLM_F_REQUEST) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            return Err(InterfaceError::Unknown(interface.to_string()));
        }
        answers => answers.map_err(|source| InterfaceError::Ask {
            interface: interface.to_string(),
            source,
        })?,
    };
    answers
        .into_iter()
        .find_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .ok_or_else(|| InterfaceError::Undescribed(interface.to_string()))
}

/// How an XDP program is attached to an interface, as the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (native XDP).
    Native,
    /// In the generic path, after the kernel made an skb: works on any
    /// interface, and costs what the skb costs.
    Generic,
    /// Offloaded to the NIC.
    Offloaded,
    /// Programs in more than one of those places.
    Several,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Offloaded => "offloaded",
            XdpMode::Several => "several",
        })
    }
}

/// How an XDP program is attached to `interface` (`None`: none is).
pub fn xdp_mode(interface: &str) -> Result<Option<XdpMode>, InterfaceError> {
    xdp_of(interface).map(|(_, mode)| mode)
}

/// The index of `interface` and how an XDP program is attached to it,
/// from one question to the kernel.
pub fn xdp_of(interface: &str) -> Result<(u32, Option<XdpMode>), InterfaceError> {
    use rtnetlink::packet_route::link::{LinkXdp, XdpAttached};
    let link = link(interface)?;
    let mode = link
        .attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Xdp(xdp) => xdp.into_iter().find_map(|nla| match nla {
                LinkXdp::Attached(attached) => Some(attached),
                _ => None,
            }),
            _ => None,
        })
        .and_then(|attached| match attached {
            XdpAttached::Driver => Some(XdpMode::Native),
            XdpAttached::SocketBuffer => Some(XdpMode::Generic),
            XdpAttached::Hardware => Some(XdpMode::Offloaded),
            XdpAttached::Multiple => Some(XdpMode::Several),
            _ => None,
        });
    Ok((link.header.index, mode))
}

/// Fails with a clear message if `interface` does not exist.
pub fn require_interface(interface: &str) -> Result<(), InterfaceError> {
    ifindex(interface).map(drop)
}

/// The index of `interface` in this network namespace.
pub fn ifindex(interface: &str) -> Result<u32, InterfaceError> {
    Ok(link(interface)?.header.index)
}

/// The MAC address of `interface` (zero if it has none).
pub fn interface_mac(interface: &str) -> Result<MacAddr, InterfaceError> {
    let mut mac = [0u8; 6];
    for attribute in link(interface)?.attributes {
        if let LinkAttribute::Address(address) = attribute {
            for (dst, src) in mac.iter_mut().zip(address) {
                *dst = src;
            }
        }
    }
    Ok(MacAddr(mac))
}

/// The MTU of `interface`: the largest IP packet it sends.
pub fn interface_mtu(interface: &str) -> Result<u16, InterfaceError> {
    link(interface)?
        .attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(u16::try_from(mtu).unwrap_or(u16::MAX)),
            _ => None,
        })
        .ok_or_else(|| InterfaceError::NoMtu(interface.to_string()))
}

/// The addresses of `interface` that tunnelled packets may be sent to:
/// every IPv4 address, and every IPv6 address but link-local ones.
pub fn interface_addresses(interface: &str) -> Result<Vec<std::net::IpAddr>, InterfaceError> {
    use std::net::IpAddr;
    let index = ifindex(interface)?;
    let answers = ask(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .map_err(InterfaceError::Addresses)?;
    let mut found = Vec::new();
    for answer in answers {
        let RouteNetlinkMessage::NewAddress(entry) = answer else {
            continue;
        };
        if entry.header.index != index {
            continue;
        }
        // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer's on a
        // point-to-point link, and the address itself where IFA_LOCAL is
        // absent (IPv6). An IPv4 address labelled as an alias (`eth0:1`)
        // belongs to that name, as getifaddrs(3) and ifconfig have it.
        let (mut local, mut address, mut label) = (None, None, None);
        for attribute in entry.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(ip),
                AddressAttribute::Address(ip) => address = Some(ip),
                AddressAttribute::Label(name) => label = Some(name),
                _ => {}
            }
        }
        if label.is_some_and(|label| label != interface) {
            continue;
        }
        match local.or(address) {
            Some(IpAddr::V6(v6)) if v6.is_unicast_link_local() => {}
            Some(ip) => found.push(ip),
            None => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every interface sysfs shows that this namespace has too: index,
    /// MAC and MTU as sysfs gives them.
    #[test]
    fn interfaces_match_sysfs() {
        let read = |name: &str, what: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{name}/{what}"))
                .map(|text| text.trim().to_string())
        };
        for entry in std::fs::read_dir("/sys/class/net").expect("/sys/class/net") {
            let name = entry.expect("an entry").file_name();
            let name = name.to_str().expect("a UTF-8 name");
            let Ok(index) = ifindex(name) else {
                continue; // sysfs of another namespace
            };
            assert_eq!(index.to_string(), read(name, "ifindex").unwrap(), "{name}");
            let mtu: u32 = read(name, "mtu").unwrap().parse().unwrap();
            let expected = u16::try_from(mtu).unwrap_or(u16::MAX);
            assert_eq!(interface_mtu(name).unwrap(), expected, "{name}");
            if let Ok(address) = read(name, "address")
                && address.len() == 17
            {
                let mac = interface_mac(name).unwrap().0;
                let shown = mac.map(|b| format!("{b:02x}")).join(":");
                assert_eq!(shown, address, "{name}");
            }
        }
    }

    /// Every interface's IPv6 addresses but link-local ones, as
    /// /proc/net/if_inet6 (this process's namespace) lists them.
    #[test]
    fn ipv6_addresses_match_proc() {
        use std::{collections::BTreeMap, net::Ipv6Addr};
        let listing = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let mut listed: BTreeMap<&str, Vec<std::net::IpAddr>> = BTreeMap::new();
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = Ipv6Addr::from(u128::from_str_radix(fields[0], 16).unwrap());
            let addresses = listed.entry(fields[5]).or_default();
            if !address.is_unicast_link_local() {
                addresses.push(address.into());
            }
        }
        for (name, mut expected) in listed {
            let mut found: Vec<_> = interface_addresses(name)
                .unwrap()
                .into_iter()
                .filter(std::net::IpAddr::is_ipv6)
                .collect();
            found.sort();
            expected.sort();
            assert_eq!(found, expected, "{name}");
        }
    }

    #[test]
    fn a_missing_interface_is_named() {
        for lookup in [
            |name| ifindex(name).map(drop),
            |name| interface_mac(name).map(drop),
            |name| interface_mtu(name).map(drop),
            |name| interface_addresses(name).map(drop),
        ] {
            let error = lookup("fulcrum-none0").unwrap_err();
            assert_eq!(error.to_string(), "unknown interface \"fulcrum-none0\"");
        }
        let error = ifindex("").unwrap_err();
        assert_eq!(error.to_string(), "not an interface name: \"\"");
        assert!(ifindex("a-name-too-long-for-linux").is_err());
    }
}
