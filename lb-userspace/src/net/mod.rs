//! What `fulcrum` learns from the network it serves: interfaces and their
//! MACs here, backend MACs in `neighbours`.

use std::ffi::CString;

use anyhow::{Context as _, bail};

use crate::config::MacAddr;

pub mod neighbours;

/// Fails with a clear message if `interface` does not exist.
pub fn require_interface(interface: &str) -> anyhow::Result<()> {
    ifindex(interface).map(drop)
}

/// The index of `interface` in this network namespace.
pub fn ifindex(interface: &str) -> anyhow::Result<u32> {
    let name = CString::new(interface).context("interface name contains NUL")?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("unknown interface {interface:?}"),
        index => Ok(index),
    }
}

/// Asks the kernel about `interface` with one `SIOCGIF*` ioctl in this
/// process's network namespace (`/sys/class/net` shows the namespace sysfs
/// was mounted in, which may be another).
fn ask_interface(interface: &str, request: libc::Ioctl, what: &str) -> anyhow::Result<libc::ifreq> {
    let name = interface.as_bytes();
    anyhow::ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ,
        "not an interface name: {interface:?}"
    );
    // SAFETY: an all-zero ifreq is valid.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifreq.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening a socket to ask for the {what} of {interface}"));
    }
    // SAFETY: `socket` is ours; `ifreq` is a valid ifreq with a NUL-terminated name.
    let result = unsafe { libc::ioctl(socket, request, &mut ifreq) };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(socket) };
    if result < 0 {
        return Err(error).with_context(|| format!("{what} of {interface}"));
    }
    Ok(ifreq)
}

/// The MAC address of `interface`.
pub fn interface_mac(interface: &str) -> anyhow::Result<MacAddr> {
    let ifreq = ask_interface(interface, libc::SIOCGIFHWADDR, "MAC")?;
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member.
    let data = unsafe { ifreq.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(&data) {
        *dst = src as u8;
    }
    Ok(MacAddr(mac))
}

/// The addresses of `interface` that tunnelled packets may be sent to:
/// every IPv4 address, and every IPv6 address but link-local ones.
pub fn interface_addresses(interface: &str) -> anyhow::Result<Vec<std::net::IpAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut first: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `first` with a list we free below.
    if unsafe { libc::getifaddrs(&mut first) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing the interfaces' addresses");
    }
    let mut found = Vec::new();
    let mut entry = first;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned, freed only below.
        let node = unsafe { &*entry };
        entry = node.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) };
        if name.to_bytes() != interface.as_bytes() || node.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let address = unsafe {
            match i32::from((*node.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*(node.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let v6 = &*(node.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        match address {
            Some(IpAddr::V6(v6)) if v6.is_unicast_link_local() => {}
            Some(address) => found.push(address),
            None => {}
        }
    }
    // SAFETY: the list getifaddrs allocated, no longer used.
    unsafe { libc::freeifaddrs(first) };
    Ok(found)
}

/// The MTU of `interface`: the largest IP packet it sends.
pub fn interface_mtu(interface: &str) -> anyhow::Result<u16> {
    let ifreq = ask_interface(interface, libc::SIOCGIFMTU, "MTU")?;
    // SAFETY: SIOCGIFMTU filled the MTU member.
    let mtu = unsafe { ifreq.ifr_ifru.ifru_mtu };
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}
