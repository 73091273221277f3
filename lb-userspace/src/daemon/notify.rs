//! systemd's readiness protocol (`Type=notify`): the daemon says it is
//! ready on the datagram socket `$NOTIFY_SOCKET` only once the first
//! config is verified in the kernel and the program attached, and says
//! when it stops. Without the variable (not started by systemd) nothing
//! is sent.

use std::os::unix::{
    ffi::OsStrExt as _,
    net::{SocketAddr, UnixDatagram},
};

/// Tells systemd `state`: newline-separated assignments such as
/// `READY=1`, `STOPPING=1` or `STATUS=…`. A failure to tell is noted,
/// never fatal.
pub fn tell(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let address = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)
    })();
    if let Err(e) = sent {
        crate::note!(
            "telling systemd {state:?} on {}: {e}",
            path.to_string_lossy()
        );
    }
}
