//! Frames with forged sources, written raw (an `AF_PACKET` socket) onto a
//! lab host's interface: the flood no real client's stack would send, as
//! an attacker with a spoofed prefix sends it.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use crate::netns::Netns;

/// Sends each of `frames` out of `interface` in `host`, as fast as the
/// socket takes them; returns how many went out.
pub fn send_raw(host: &Netns, interface: &str, frames: &[Vec<u8>]) -> anyhow::Result<usize> {
    host.enter(|| {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(index != 0, "no interface {interface}");
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        anyhow::ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sent = 0;
        for frame in frames {
            // SAFETY: zeroed sockaddr_ll is valid; the fields set below.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = index as i32;
            address.sll_halen = 6;
            address.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: the buffer and address outlive the call; lengths match.
            let written = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const address).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if written < 0 {
                let error = std::io::Error::last_os_error();
                // A full queue: the frame is lost, as on a real wire.
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.raw_os_error() == Some(libc::ENOBUFS)
                {
                    continue;
                }
                return Err(error).context("sending a raw frame");
            }
            sent += 1;
        }
        Ok(sent)
    })
}
