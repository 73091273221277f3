//! What `fulcrum` learns from the network it serves: interfaces and their
//! MACs, and backend MACs from the neighbour table.

use std::{
    ffi::CString,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::config::MacAddr;

/// Fails with a clear message if `interface` does not exist.
pub fn require_interface(interface: &str) -> anyhow::Result<()> {
    let name = CString::new(interface).context("interface name contains NUL")?;
    // SAFETY: valid C string.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        bail!("unknown interface {interface:?}");
    }
    Ok(())
}

/// The MAC address of `interface`, asked of the kernel with
/// `SIOCGIFHWADDR` in this process's network namespace (`/sys/class/net`
/// shows the namespace sysfs was mounted in, which may be another).
pub fn interface_mac(interface: &str) -> anyhow::Result<MacAddr> {
    let name = interface.as_bytes();
    anyhow::ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ,
        "not an interface name: {interface:?}"
    );
    // SAFETY: an all-zero ifreq is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in request.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a socket for SIOCGIFHWADDR");
    }
    // SAFETY: `socket` is ours; `request` is a valid ifreq with a NUL-terminated name.
    let result = unsafe { libc::ioctl(socket, libc::SIOCGIFHWADDR, &mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(socket) };
    if result < 0 {
        return Err(error).with_context(|| format!("MAC of {interface}"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(&data) {
        *dst = src as u8;
    }
    Ok(MacAddr(mac))
}

#[derive(Deserialize)]
struct Neighbour {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn lookup_neighbour(addr: IpAddr, interface: &str) -> anyhow::Result<Option<MacAddr>> {
    let output = Command::new("ip")
        .args([
            "-j",
            "neigh",
            "show",
            "to",
            &addr.to_string(),
            "dev",
            interface,
        ])
        .output()
        .context("running `ip neigh` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!(
            "`ip neigh show to {addr} dev {interface}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let entries: Vec<Neighbour> = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        serde_json::from_slice(&output.stdout).context("parsing `ip -j neigh` output")?
    };
    for entry in entries {
        let unusable = entry
            .state
            .iter()
            .any(|s| s == "INCOMPLETE" || s == "FAILED");
        if let (Some(mac), false) = (entry.lladdr, unusable) {
            return mac
                .parse()
                .map(Some)
                .map_err(|e: String| anyhow::anyhow!(e));
        }
    }
    Ok(None)
}

/// The MAC of on-link backend `addr` from the neighbour table. If it is not
/// known yet, one empty UDP datagram to the backend's discard port makes the
/// kernel resolve it (ARP or neighbour discovery); we wait up to `timeout`.
pub fn resolve_mac(addr: IpAddr, interface: &str, timeout: Duration) -> anyhow::Result<MacAddr> {
    if let Some(mac) = lookup_neighbour(addr, interface)? {
        return Ok(mac);
    }
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).context("opening a UDP socket to resolve a MAC")?;
    // A send error (no route) shows up below as "not resolved".
    let _ = socket.send_to(&[], SocketAddr::new(addr, 9));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup_neighbour(addr, interface)? {
            return Ok(mac);
        }
    }
    bail!(
        "no MAC for {addr} on {interface} after {timeout:?}: is the backend on this L2 \
         segment and up? (or set `mac` in the config)"
    )
}
