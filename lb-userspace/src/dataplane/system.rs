//! What loading, attaching and pinning BPF needs from the host: the
//! privileges to do it, and bpffs mounted at `/sys/fs/bpf`.

use std::ffi::CString;

use anyhow::{Context as _, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails unless this process may load and attach XDP programs.
pub fn require_bpf_privileges() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    // CAP_SYS_ADMIN too: reading a lookup table back goes through
    // BPF_MAP_GET_FD_BY_ID, which the kernel allows only with it.
    if !(has(CAP_NET_ADMIN) && has(CAP_BPF) && has(CAP_SYS_ADMIN)) {
        bail!(
            "missing privileges: loading, attaching and verifying XDP needs root \
             (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)"
        );
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at `/sys/fs/bpf` unless it is already there. Returns
/// whether it mounted it.
pub fn ensure_bpffs() -> anyhow::Result<bool> {
    let path = CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs only writes into the struct we pass.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut stats) } == 0
        && stats.f_type as i64 == BPF_FS_MAGIC
    {
        return Ok(false);
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("mounting bpffs at {BPFFS}"));
    }
    Ok(true)
}
