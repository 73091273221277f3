//! The frame the header walking reads: bounds-checked access to a header
//! at an offset, and the frame's length. The XDP context is one in the
//! kernel, a byte slice on the host, so the same parsing code runs in the
//! XDP programs and in host tests. Writing into a frame is the kernel's
//! alone (`header_mut`).

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// A header type a frame's bytes can be read as.
///
/// # Safety
///
/// Implementors are plain old data: `#[repr(C)]` integers and byte arrays
/// with no padding, so that any bytes make a valid value.
pub unsafe trait Header {}

// SAFETY: `#[repr(C)]` byte arrays and a `u16`, no padding.
unsafe impl Header for EthHdr {}
// SAFETY: `#[repr(C)]` byte arrays and a `u16`, no padding.
unsafe impl Header for VlanHdr {}
// SAFETY: `#[repr(C)]` bytes and byte arrays.
unsafe impl Header for Ipv4Hdr {}
// SAFETY: `#[repr(C)]` bytes and byte arrays.
unsafe impl Header for Ipv6Hdr {}
// SAFETY: `#[repr(C)]` byte arrays.
unsafe impl Header for UdpHdr {}
// SAFETY: bytes.
unsafe impl<const N: usize> Header for [u8; N] {}

/// A frame whose headers can be read.
pub trait Frame {
    /// The frame's length in bytes.
    fn len(&self) -> usize;

    /// Whether the frame has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `T` at `offset`, if the frame holds all of its bytes.
    fn header<T: Header>(&self, offset: usize) -> Option<&T>;
}

/// A pointer to a `T` at `offset` in the frame, to write through, if the
/// frame is long enough. Reads the frame's bounds afresh, so it stays right
/// after the frame is grown or shrunk.
#[inline(always)]
pub fn header_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

impl Frame for XdpContext {
    /// Reads the frame's end apart from the bounds checks' reads: were it
    /// the same value, LLVM could prove a header within a length checked
    /// against it and drop that header's own bounds check, which the
    /// verifier needs to see.
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: `ctx` points at the program's `xdp_md`, valid while it
        // runs; a volatile read of one of its fields.
        let end = unsafe { core::ptr::read_volatile(&raw const (*self.ctx).data_end) };
        end as usize - self.data()
    }

    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let at = header_mut::<T>(self, offset)?;
        // SAFETY: the frame holds the `T`'s bytes (checked just above, in
        // the form the verifier follows), any bytes are a `T` (`Header`),
        // and the kernel starts a frame's data 2-aligned, as the 16-bit
        // ethertypes need (BPF loads need no alignment anyway). Nothing
        // writes into the frame while the reference lives: writers take
        // `header_mut` pointers once parsing is done.
        Some(unsafe { &*at })
    }
}

impl Frame for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    /// Panics if the header would sit at an address not aligned for `T`
    /// (as the kernel's frames are): build test frames in a `Vec<u8>`.
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let bytes = self.get(offset..offset.checked_add(size_of::<T>())?)?;
        let at = bytes.as_ptr().cast::<T>();
        assert!(at.is_aligned(), "a frame's headers must be aligned");
        // SAFETY: `bytes` holds the `T`'s bytes and lives as long as
        // `self`, `at` is aligned (asserted), and any bytes are a `T`
        // (`Header`).
        Some(unsafe { &*at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_holds_a_header_only_whole() {
        let frame = [7u8; 20];
        let rows: [(&str, usize, Option<[u8; 4]>); 5] = [
            ("at the start", 0, Some([7; 4])),
            ("ending at the last byte", 16, Some([7; 4])),
            ("one byte past the end", 17, None),
            ("starting at the end", 20, None),
            ("an offset that overflows", usize::MAX - 1, None),
        ];
        for (what, offset, expected) in rows {
            assert_eq!(
                frame[..].header::<[u8; 4]>(offset).copied(),
                expected,
                "{what}"
            );
        }
        assert_eq!(Frame::len(&frame[..]), 20);
        assert!(!Frame::is_empty(&frame[..]));
        assert!(Frame::is_empty(&frame[..0]));
    }
}
