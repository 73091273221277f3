//! An mmap view of a `BPF_F_MMAPABLE` array: how lookup tables are written
//! and read back, and how the connection table's way words are counted,
//! without one syscall (or one copy) per value.

use std::{io, marker::PhantomData, os::fd::BorrowedFd};

use rustix::mm::{MapFlags, ProtFlags};

/// An mmap view of a `BPF_F_MMAPABLE` array of `T`: the kernel lays the
/// values out back to back, each rounded up to 8 bytes.
pub(super) struct MappedArray<T> {
    base: *mut u8,
    len: usize,
    entries: u32,
    value: PhantomData<T>,
}

// SAFETY: the view owns its mapping; every access is a volatile read or
// write of one whole value or field through `&self` (reads) or `&mut self`
// (writes), so sharing it between threads is no different from the kernel
// and other processes sharing the map.
unsafe impl<T: Copy> Send for MappedArray<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Copy> Sync for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    const STRIDE: usize = size_of::<T>().next_multiple_of(8);

    /// Maps the `entries` values of the array behind `fd`.
    pub(super) fn map(fd: BorrowedFd<'_>, entries: u32, writable: bool) -> io::Result<Self> {
        let page = rustix::param::page_size();
        let len = (entries as usize * Self::STRIDE).div_ceil(page) * page;
        let protection = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh shared mapping of the map's fd, placed by the
        // kernel, which checks that the length fits the map.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Ok(Self {
            base: base.cast(),
            len,
            entries,
            value: PhantomData,
        })
    }

    /// Values in the array.
    pub(super) fn len(&self) -> u32 {
        self.entries
    }

    /// The address of value `index`.
    pub(super) fn value(&self, index: u32) -> *mut T {
        assert!(
            index < self.entries,
            "index {index} beyond {}",
            self.entries
        );
        // SAFETY: in bounds (checked above); the mapping is page aligned
        // and the stride keeps every value 8-byte aligned.
        unsafe { self.base.add(index as usize * Self::STRIDE).cast() }
    }

    pub(super) fn get(&self, index: u32) -> T {
        // SAFETY: a valid, aligned value of the live mapping.
        unsafe { self.value(index).read_volatile() }
    }

    pub(super) fn set(&mut self, index: u32, value: T) {
        // SAFETY: as in `get`; `map` was asked for a writable mapping.
        unsafe { self.value(index).write_volatile(value) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, which nothing
        // refers to any more.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
    }
}
