//! Raw HTTP/1.1 requests to the daemon's API socket, for tests that send
//! what no CLI verb would (malformed bodies, unknown paths) or read an
//! endpoint no verb prints whole.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

/// How long the daemon may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request on `socket`; returns the HTTP status and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: fulcrum\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) before reading a large body to its end.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    // A reset after the answer (the unread rest of a large body) is fine.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP head in {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            crate::scrape::dechunk(body)?
        } else {
            body.to_string()
        },
    ))
}
