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
