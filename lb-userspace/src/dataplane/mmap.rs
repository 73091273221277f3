//! An mmap view of a `BPF_F_MMAPABLE` array of `u32`: how lookup tables are
//! written and read back without one syscall per slot.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

use super::{DataplaneError, Result};

/// An mmap view of a `BPF_F_MMAPABLE` array of `u32`: the kernel lays the
/// values out 8 bytes apart (it rounds element sizes up to 8).
pub(super) struct MappedU32Array {
    base: *mut u8,
    len: usize,
    entries: u32,
}

const MMAP_ELEMENT_SIZE: usize = 8;

impl MappedU32Array {
    pub(super) fn map(map: &MapData, entries: u32, writable: bool) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * MMAP_ELEMENT_SIZE).div_ceil(page) * page;
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // that the length fits the map.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self {
            base: base.cast(),
            len,
            entries,
        })
    }

    /// The address of element `index`.
    fn element(&self, index: u32) -> *mut u32 {
        assert!(
            index < self.entries,
            "index {index} beyond {}",
            self.entries
        );
        // SAFETY: in bounds (checked above); the mapping is 8-byte aligned.
        unsafe { self.base.add(index as usize * MMAP_ELEMENT_SIZE).cast() }
    }

    pub(super) fn get(&self, index: u32) -> u32 {
        // SAFETY: a valid, aligned element of the live mapping.
        unsafe { self.element(index).read_volatile() }
    }

    pub(super) fn set(&mut self, index: u32, value: u32) {
        // SAFETY: as in `get`; `map` was asked for a writable mapping.
        unsafe { self.element(index).write_volatile(value) }
    }
}

impl Drop for MappedU32Array {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
