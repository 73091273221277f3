//! Every raw `bpf(2)` call `fulcrum` makes, each for something aya 0.14 has
//! no API for: reading and writing many array entries in one call (the
//! counters, the lookup-table swap), and what a pinned XDP link is attached
//! to (aya's `LinkInfo` leaves out the interface, and its `FdLink` does not
//! lend its descriptor). Each command is named as in `enum bpf_cmd` of
//! include/uapi/linux/bpf.h, each `bpf_attr` member it passes is a
//! `#[repr(C)]` struct here, and the tests check both against the kernel
//! headers as aya-obj's bindings hold them. Everything else (loading,
//! pinning, attaching, swapping a program into a link, one map entry at a
//! time) goes through aya.

use std::{
    borrow::Borrow,
    ffi::CString,
    fmt, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{MapData, MapError, MapType},
};

/// The `bpf(2)` commands `fulcrum` makes itself, numbered as in `enum
/// bpf_cmd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `BPF_OBJ_GET`: a new descriptor for a pinned object (Linux 4.4).
    ObjGet = 7,
    /// `BPF_OBJ_GET_INFO_BY_FD`: what the kernel says of an object (Linux
    /// 4.13; links from 5.8).
    ObjGetInfoByFd = 15,
    /// `BPF_MAP_LOOKUP_BATCH`: many entries read in one call (Linux 5.6).
    MapLookupBatch = 24,
    /// `BPF_MAP_UPDATE_BATCH`: many entries written in one call (Linux 5.6).
    MapUpdateBatch = 26,
    /// `BPF_LINK_DETACH`: a link's program detached while the link stays
    /// (Linux 5.9).
    LinkDetach = 34,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::ObjGet => "BPF_OBJ_GET",
            Command::ObjGetInfoByFd => "BPF_OBJ_GET_INFO_BY_FD",
            Command::MapLookupBatch => "BPF_MAP_LOOKUP_BATCH",
            Command::MapUpdateBatch => "BPF_MAP_UPDATE_BATCH",
            Command::LinkDetach => "BPF_LINK_DETACH",
        })
    }
}

/// `BPF_LINK_TYPE_XDP` of `enum bpf_link_type`.
const BPF_LINK_TYPE_XDP: u32 = 6;

/// Why a `bpf(2)` call of this module failed, or could not be made: each
/// names the object, and the command where there was one.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The kernel refused the command.
    #[error("{command} on {object}")]
    Refused {
        /// The command.
        command: Command,
        /// The map, link or path it was given.
        object: String,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The object, or the buffers passed for it, do not fit the command.
    #[error("{command} on {object}: {why}")]
    Unfit {
        /// The command.
        command: Command,
        /// The map, link or path it was given.
        object: String,
        /// What does not fit.
        why: String,
    },
    /// The layout of a map could not be read.
    #[error("reading the layout of {object}")]
    Layout {
        /// The map.
        object: String,
        /// aya's error.
        source: MapError,
    },
    /// Batches are read and written here by index, which only arrays
    /// have.
    #[error("{object} is a map of type {map_type:?}, not an array")]
    NotAnArray {
        /// The map.
        object: String,
        /// Its type.
        map_type: MapType,
    },
    /// The possible CPUs, whose values a per-CPU map holds, could not be
    /// counted.
    #[error("counting the possible CPUs ({what})")]
    Cpus {
        /// What was read.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl From<SysError> for io::Error {
    fn from(error: SysError) -> Self {
        let kind = match &error {
            SysError::Refused { source, .. } | SysError::Cpus { source, .. } => source.kind(),
            SysError::Unfit { .. } | SysError::Layout { .. } | SysError::NotAnArray { .. } => {
                io::ErrorKind::InvalidInput
            }
        };
        io::Error::new(kind, error)
    }
}

type Result<T> = std::result::Result<T, SysError>;

/// The kernel refused `command` on `object`.
fn refused(command: Command, object: String, source: io::Error) -> SysError {
    SysError::Refused {
        command,
        object,
        source,
    }
}

/// Runs `command` with `attr`, the `bpf_attr` member it takes, which the
/// kernel may write back into. Returns what the call returns (a new
/// descriptor for some commands).
///
/// # Safety
///
/// Every address in `attr` must be valid, for the whole call, for what
/// `command` reads or writes there.
unsafe fn bpf<A>(command: Command, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable `bpf_attr` member of the size
    // passed; the caller vouches for the addresses in it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            &raw mut *attr,
            size_of::<A>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// The object member of `union bpf_attr` (`BPF_OBJ_*`).
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// The kernel refuses (EINVAL) an attr whose bytes past its last field
    /// are not zero, and padding is not sure to be: a field is.
    _pad: u32,
}

/// The `info` member of `union bpf_attr` (`BPF_OBJ_GET_INFO_BY_FD`).
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to the end of its XDP member, all the kernel
/// needs to fill in for an XDP link.
#[repr(C)]
#[derive(Default)]
struct XdpLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    /// The union after it is 8-byte aligned.
    _pad: u32,
    ifindex: u32,
}

/// The `link_detach` member of `union bpf_attr`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// The `batch` member of `union bpf_attr` (`BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// An XDP link opened from its pin, for what aya's `PinnedLink` cannot say
/// or do: which interface it is attached to, and detaching it while it
/// stays pinned.
pub struct PinnedXdpLink {
    fd: OwnedFd,
    path: PathBuf,
}

impl PinnedXdpLink {
    /// Opens the link pinned at `path` (`BPF_OBJ_GET`).
    pub fn open(path: &Path) -> Result<Self> {
        let object = || format!("the pin {}", path.display());
        let pathname = CString::new(path.as_os_str().as_bytes()).map_err(|_| SysError::Unfit {
            command: Command::ObjGet,
            object: object(),
            why: "the path contains a NUL byte".into(),
        })?;
        let mut attr = ObjAttr {
            pathname: pathname.as_ptr() as u64,
            ..ObjAttr::default()
        };
        // SAFETY: `pathname` is a NUL-terminated string that outlives the
        // call, which only reads it.
        let fd = unsafe { bpf(Command::ObjGet, &mut attr) }
            .map_err(|e| refused(Command::ObjGet, object(), e))?;
        // SAFETY: the kernel just made this descriptor, for us alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn object(&self) -> String {
        format!("the link pinned at {}", self.path.display())
    }

    /// The index of the interface the link is attached to
    /// (`BPF_OBJ_GET_INFO_BY_FD`): `None` once it lost it (the interface
    /// was deleted, or the link detached). Fails unless it is an XDP link.
    pub fn ifindex(&self) -> Result<Option<u32>> {
        let mut info = XdpLinkInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: size_of::<XdpLinkInfo>() as u32,
            info: &raw mut info as u64,
        };
        // SAFETY: `info` is `info_len` writable bytes that outlive the call.
        unsafe { bpf(Command::ObjGetInfoByFd, &mut attr) }
            .map_err(|e| refused(Command::ObjGetInfoByFd, self.object(), e))?;
        if info.link_type != BPF_LINK_TYPE_XDP {
            return Err(SysError::Unfit {
                command: Command::ObjGetInfoByFd,
                object: self.object(),
                why: format!("a link of type {}, not XDP", info.link_type),
            });
        }
        Ok((info.ifindex != 0).then_some(info.ifindex))
    }

    /// Detaches the link's program from its interface, as `bpftool link
    /// detach` does (`BPF_LINK_DETACH`): the link and its pin stay, with
    /// no interface.
    pub fn detach(&self) -> Result<()> {
        let mut attr = LinkDetachAttr {
            link_fd: self.fd.as_raw_fd() as u32,
        };
        // SAFETY: the attr holds no address.
        unsafe { bpf(Command::LinkDetach, &mut attr) }
            .map_err(|e| refused(Command::LinkDetach, self.object(), e))?;
        Ok(())
    }
}

/// An array map (an array, a per-CPU array, an array of maps) read or
/// written many entries per call, with its layout read once so that every
/// call's buffers are checked against it. aya 0.14 reads and writes one
/// entry per call.
pub struct BatchMap<T> {
    map: T,
    name: &'static str,
    /// The bytes of one entry's value as batches lay them out: for a
    /// per-CPU map, every possible CPU's, each rounded up to 8 bytes.
    entry_size: usize,
}

impl<T: Borrow<MapData>> BatchMap<T> {
    /// The array `map`, called `name` in errors.
    pub fn new(map: T, name: &'static str) -> Result<Self> {
        let object = || format!("map {name}");
        let layout = |source| SysError::Layout {
            object: object(),
            source,
        };
        let info = map.borrow().info().map_err(layout)?;
        let per_cpu = match info.map_type().map_err(layout)? {
            MapType::Array | MapType::ArrayOfMaps => false,
            MapType::PerCpuArray => true,
            // A hash map's batch cursor is a bucket, not a key.
            map_type => {
                return Err(SysError::NotAnArray {
                    object: object(),
                    map_type,
                });
            }
        };
        let value_size = info.value_size() as usize;
        let entry_size = if per_cpu {
            let cpus = aya::util::nr_cpus().map_err(|(what, source)| SysError::Cpus {
                what: what.into(),
                source,
            })?;
            value_size.next_multiple_of(8) * cpus
        } else {
            value_size
        };
        Ok(Self {
            map,
            name,
            entry_size,
        })
    }

    fn fd(&self) -> u32 {
        self.map.borrow().fd().as_fd().as_raw_fd() as u32
    }

    fn object(&self) -> String {
        format!("map {}", self.name)
    }

    /// The entry count of a call with `keys` keys and `value_bytes` bytes
    /// of values: there must be one entry's value per key.
    fn count(&self, command: Command, keys: usize, value_bytes: usize) -> Result<u32> {
        keys.checked_mul(self.entry_size)
            .filter(|&wanted| wanted == value_bytes)
            .and_then(|_| u32::try_from(keys).ok())
            .ok_or_else(|| SysError::Unfit {
                command,
                object: self.object(),
                why: format!(
                    "{keys} keys need {} bytes of values ({} each), not {value_bytes}",
                    keys.saturating_mul(self.entry_size),
                    self.entry_size
                ),
            })
    }

    /// `BPF_MAP_LOOKUP_BATCH` from index 0: fills `keys` and `values`
    /// (one entry's value per key), in as few calls as the kernel allows.
    /// Returns how many entries were read: fewer than `keys.len()` when the
    /// array ends first.
    pub fn lookup<V: Pod>(&self, keys: &mut [u32], values: &mut [V]) -> Result<usize> {
        let command = Command::MapLookupBatch;
        let count = self.count(command, keys.len(), size_of_val(values))?;
        let values = values.as_mut_ptr().cast::<u8>();
        let mut done = 0u32;
        // The kernel starts after the key in `in_batch` (from the start
        // without one) and leaves the last key it read in `out_batch`.
        let mut previous = 0u32;
        while done < count {
            let mut last = 0u32;
            let mut attr = BatchAttr {
                in_batch: if done == 0 {
                    0
                } else {
                    &raw const previous as u64
                },
                out_batch: &raw mut last as u64,
                keys: keys[done as usize..].as_mut_ptr() as u64,
                values: values.wrapping_add(done as usize * self.entry_size) as u64,
                count: count - done,
                map_fd: self.fd(),
                ..BatchAttr::default()
            };
            // SAFETY: from entry `done` on, `keys` and `values` hold
            // `count - done` keys and entry values (`count` checked them
            // against the map's layout); `previous` and `last` hold a key
            // each. All outlive the call.
            let result = unsafe { bpf(command, &mut attr) };
            done += attr.count;
            previous = last;
            match result {
                Ok(_) if attr.count > 0 => {}
                Ok(_) => break,
                // The array ended.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(refused(command, self.object(), e)),
            }
        }
        Ok(done as usize)
    }

    /// `BPF_MAP_UPDATE_BATCH`: writes `values` (one entry's value per
    /// key) at `keys`, all in one call. For an array of maps that is one
    /// RCU grace period for all of them, where single updates wait one
    /// each.
    pub fn update<V: Pod>(&self, keys: &[u32], values: &[V]) -> Result<()> {
        let command = Command::MapUpdateBatch;
        let count = self.count(command, keys.len(), size_of_val(values))?;
        if count == 0 {
            return Ok(());
        }
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count,
            map_fd: self.fd(),
            ..BatchAttr::default()
        };
        // SAFETY: the kernel reads `count` keys and entry values, which
        // `keys` and `values` hold (`count` checked them against the map's
        // layout) for the whole call.
        unsafe { bpf(command, &mut attr) }.map_err(|e| refused(command, self.object(), e))?;
        if attr.count != count {
            return Err(SysError::Unfit {
                command,
                object: self.object(),
                why: format!("the kernel updated {} of {count} entries", attr.count),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use aya_obj::generated as uapi;

    use super::*;

    #[test]
    fn commands_have_the_kernels_numbers() {
        use uapi::bpf_cmd;
        for (ours, kernel) in [
            (Command::ObjGet, bpf_cmd::BPF_OBJ_GET),
            (Command::ObjGetInfoByFd, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD),
            (Command::MapLookupBatch, bpf_cmd::BPF_MAP_LOOKUP_BATCH),
            (Command::MapUpdateBatch, bpf_cmd::BPF_MAP_UPDATE_BATCH),
            (Command::LinkDetach, bpf_cmd::BPF_LINK_DETACH),
        ] {
            assert_eq!(ours as u32, kernel as u32, "{ours}");
            assert_eq!(ours.to_string(), format!("{kernel:?}"));
        }
        assert_eq!(
            BPF_LINK_TYPE_XDP,
            uapi::bpf_link_type::BPF_LINK_TYPE_XDP as u32
        );
    }

    #[test]
    fn attrs_have_the_kernels_layout() {
        type Obj = uapi::bpf_attr__bindgen_ty_5;
        assert_eq!(size_of::<ObjAttr>(), size_of::<Obj>());
        assert_eq!(offset_of!(ObjAttr, pathname), offset_of!(Obj, pathname));
        assert_eq!(offset_of!(ObjAttr, bpf_fd), offset_of!(Obj, bpf_fd));
        assert_eq!(offset_of!(ObjAttr, file_flags), offset_of!(Obj, file_flags));
        assert_eq!(offset_of!(ObjAttr, path_fd), offset_of!(Obj, path_fd));
        // No padding, whose bytes could be anything: every byte a field's.
        assert_eq!(offset_of!(ObjAttr, _pad) + 4, size_of::<ObjAttr>());

        type Info = uapi::bpf_attr__bindgen_ty_9;
        assert_eq!(size_of::<InfoAttr>(), size_of::<Info>());
        assert_eq!(offset_of!(InfoAttr, bpf_fd), offset_of!(Info, bpf_fd));
        assert_eq!(offset_of!(InfoAttr, info_len), offset_of!(Info, info_len));
        assert_eq!(offset_of!(InfoAttr, info), offset_of!(Info, info));

        type Detach = uapi::bpf_attr__bindgen_ty_16;
        assert_eq!(size_of::<LinkDetachAttr>(), size_of::<Detach>());
        assert_eq!(
            offset_of!(LinkDetachAttr, link_fd),
            offset_of!(Detach, link_fd)
        );

        type Batch = uapi::bpf_attr__bindgen_ty_3;
        assert_eq!(size_of::<BatchAttr>(), size_of::<Batch>());
        assert_eq!(offset_of!(BatchAttr, in_batch), offset_of!(Batch, in_batch));
        assert_eq!(
            offset_of!(BatchAttr, out_batch),
            offset_of!(Batch, out_batch)
        );
        assert_eq!(offset_of!(BatchAttr, keys), offset_of!(Batch, keys));
        assert_eq!(offset_of!(BatchAttr, values), offset_of!(Batch, values));
        assert_eq!(offset_of!(BatchAttr, count), offset_of!(Batch, count));
        assert_eq!(offset_of!(BatchAttr, map_fd), offset_of!(Batch, map_fd));
        assert_eq!(
            offset_of!(BatchAttr, elem_flags),
            offset_of!(Batch, elem_flags)
        );
        assert_eq!(offset_of!(BatchAttr, flags), offset_of!(Batch, flags));
    }

    #[test]
    fn link_info_is_a_prefix_of_the_kernels() {
        type Info = uapi::bpf_link_info;
        type Xdp = uapi::bpf_link_info__bindgen_ty_1__bindgen_ty_6;
        assert_eq!(offset_of!(XdpLinkInfo, link_type), offset_of!(Info, type_));
        assert_eq!(offset_of!(XdpLinkInfo, id), offset_of!(Info, id));
        assert_eq!(offset_of!(XdpLinkInfo, prog_id), offset_of!(Info, prog_id));
        assert_eq!(
            offset_of!(XdpLinkInfo, ifindex),
            offset_of!(Info, __bindgen_anon_1) + offset_of!(Xdp, ifindex)
        );
        assert!(size_of::<XdpLinkInfo>() <= size_of::<Info>());
    }
}
