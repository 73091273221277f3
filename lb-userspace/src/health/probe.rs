//! One check on the wire: a TCP connect, or a TCP connect and an HTTP GET
//! read up to its status line. The engine (`super`) times and bounds it;
//! what an answer means (the status line, the expected codes) is decided by
//! pure functions here, tested without sockets.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::config::{CheckKind, ResolvedCheck};

/// The most bytes read for a status line: a longer one is malformed.
const MAX_STATUS_LINE: u64 = 1024;

/// The most bytes of a bad answer quoted in a failure's reason.
const MAX_QUOTED: usize = 64;

/// Runs `check` once: `Ok` when the backend is healthy, else why not.
/// Unbounded in time: the caller bounds it.
pub(super) async fn probe(check: &ResolvedCheck) -> Result<(), String> {
    match check.settings.kind {
        CheckKind::None => Ok(()),
        CheckKind::Tcp => connect(check.target).await.map(drop),
        CheckKind::Http => {
            let request = request(&check.settings.http_path, check.target)?;
            let mut stream = connect(check.target).await?;
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending the HTTP request: {}", describe(&e)))?;
            let mut answer = Vec::new();
            BufReader::new(stream.take(MAX_STATUS_LINE))
                .read_until(b'\n', &mut answer)
                .await
                .map_err(|e| format!("reading the HTTP status line: {}", describe(&e)))?;
            verdict(status_code(&answer)?, &check.settings.http_status)
        }
    }
}

async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(target).await.map_err(|e| describe(&e))
}

/// The GET request for `path` on `target`. A path that could not sit in a
/// request line (whitespace, control characters) fails the check rather
/// than inject headers.
pub(super) fn request(path: &str, target: SocketAddr) -> Result<String, String> {
    if path.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "http_path {path:?} cannot go in an HTTP request line"
        ));
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: fulcrum-health\r\nConnection: close\r\n\r\n"
    ))
}

/// The status code of `answer`, the bytes read up to and including the
/// first `\n` (or up to the end of the stream or `MAX_STATUS_LINE`).
/// A status line is `HTTP/d.d ddd` followed by the end of the line or a
/// space and a reason phrase.
pub(super) fn status_code(answer: &[u8]) -> Result<u16, String> {
    let Some(line) = answer.strip_suffix(b"\n") else {
        return Err(if answer.is_empty() {
            "connection closed before an HTTP status line".into()
        } else if answer.len() as u64 >= MAX_STATUS_LINE {
            format!("HTTP status line longer than {MAX_STATUS_LINE} bytes")
        } else {
            format!(
                "connection closed inside the HTTP status line {}",
                quote(answer)
            )
        });
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            major,
            b'.',
            minor,
            b' ',
            code @ ..,
        ] if major.is_ascii_digit() && minor.is_ascii_digit() => match code {
            [a, b, c, rest @ ..]
                if [a, b, c].iter().all(|d| d.is_ascii_digit())
                    && matches!(rest.first(), None | Some(b' ')) =>
            {
                Ok([a, b, c]
                    .iter()
                    .fold(0, |n, d| n * 10 + u16::from(**d - b'0')))
            }
            _ => Err(format!("malformed HTTP status code in {}", quote(line))),
        },
        _ => Err(format!("malformed HTTP status line {}", quote(line))),
    }
}

/// Healthy when `code` is in one of the inclusive `ranges`.
pub(super) fn verdict(code: u16, ranges: &[(u16, u16)]) -> Result<(), String> {
    if ranges
        .iter()
        .any(|&(low, high)| (low..=high).contains(&code))
    {
        Ok(())
    } else {
        Err(format!("HTTP {code}"))
    }
}

/// `bytes` quoted and escaped, cut after `MAX_QUOTED` bytes.
fn quote(bytes: &[u8]) -> String {
    match bytes.get(..MAX_QUOTED) {
        Some(head) if head.len() < bytes.len() => format!("\"{}\"...", head.escape_ascii()),
        _ => format!("\"{}\"", bytes.escape_ascii()),
    }
}

/// An I/O error as a reason: "connection refused", not "Connection
/// refused (os error 111)".
pub(super) fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_their_code() {
        let cases: &[(&[u8], u16)] = &[
            (b"HTTP/1.1 200 OK\r\n", 200),
            (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
            (b"HTTP/1.1 204\r\n", 204),
            (b"HTTP/1.1 301 Moved Permanently\n", 301),
            (b"HTTP/1.1 404 \r\n", 404),
        ];
        for (answer, code) in cases {
            assert_eq!(status_code(answer), Ok(*code), "{}", answer.escape_ascii());
        }
    }

    #[test]
    fn malformed_answers_fail_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "connection closed before an HTTP status line"),
            (
                b"HTTP/1.1 200",
                "connection closed inside the HTTP status line \"HTTP/1.1 200\"",
            ),
            (
                b"SSH-2.0-OpenSSH_9.2\r\n",
                "malformed HTTP status line \"SSH-2.0-OpenSSH_9.2\"",
            ),
            (b"\r\n", "malformed HTTP status line \"\""),
            (
                b"HTTP/2 200\r\n",
                "malformed HTTP status line \"HTTP/2 200\"",
            ),
            (
                b"HTTP/1.1 20 OK\r\n",
                "malformed HTTP status code in \"HTTP/1.1 20 OK\"",
            ),
            (
                b"HTTP/1.1 2000 OK\r\n",
                "malformed HTTP status code in \"HTTP/1.1 2000 OK\"",
            ),
            (
                b"HTTP/1.1 abc OK\r\n",
                "malformed HTTP status code in \"HTTP/1.1 abc OK\"",
            ),
            (
                b"HTTP/1.1 200OK\r\n",
                "malformed HTTP status code in \"HTTP/1.1 200OK\"",
            ),
            (
                b"\x00\xff\x16\x03\n",
                "malformed HTTP status line \"\\x00\\xff\\x16\\x03\"",
            ),
        ];
        for (answer, reason) in cases {
            assert_eq!(
                status_code(answer),
                Err(reason.to_string()),
                "{}",
                answer.escape_ascii()
            );
        }
    }

    #[test]
    fn a_status_line_at_the_read_limit_is_too_long_and_quotes_are_cut() {
        let answer = vec![b'A'; MAX_STATUS_LINE as usize];
        assert_eq!(
            status_code(&answer),
            Err("HTTP status line longer than 1024 bytes".into())
        );
        let line = [b"HTTP/1.1 x".as_slice(), &[b'y'; 100], b"\n"].concat();
        let reason = status_code(&line).err().unwrap_or_default();
        assert_eq!(
            reason,
            format!(
                "malformed HTTP status code in \"HTTP/1.1 x{}\"...",
                "y".repeat(MAX_QUOTED - 10)
            )
        );
    }

    #[test]
    fn codes_count_healthy_only_inside_a_range() {
        let ranges = [(200, 299), (418, 418)];
        for code in [200, 250, 299, 418] {
            assert_eq!(verdict(code, &ranges), Ok(()), "{code}");
        }
        for (code, reason) in [
            (199, "HTTP 199"),
            (300, "HTTP 300"),
            (417, "HTTP 417"),
            (503, "HTTP 503"),
        ] {
            assert_eq!(verdict(code, &ranges), Err(reason.into()));
        }
        assert_eq!(verdict(200, &[]), Err("HTTP 200".into()));
    }

    #[test]
    fn the_request_names_the_path_and_the_target() {
        assert_eq!(
            request("/healthz", "10.0.0.2:8080".parse().unwrap()),
            Ok("GET /healthz HTTP/1.1\r\nHost: 10.0.0.2:8080\r\n\
                User-Agent: fulcrum-health\r\nConnection: close\r\n\r\n"
                .into())
        );
        assert_eq!(
            request("/", "[fd00::2]:80".parse().unwrap()),
            Ok("GET / HTTP/1.1\r\nHost: [fd00::2]:80\r\n\
                User-Agent: fulcrum-health\r\nConnection: close\r\n\r\n"
                .into())
        );
        for path in ["", "/a b", "/x\r\nX-Evil: 1"] {
            assert!(
                request(path, "10.0.0.2:80".parse().unwrap()).is_err(),
                "{path:?}"
            );
        }
    }

    #[test]
    fn io_errors_read_as_reasons() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(describe(&refused), "connection refused");
        let unreachable = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(describe(&unreachable), "no route to host");
        let custom = io::Error::other("Broken things");
        assert_eq!(describe(&custom), "broken things");
        let empty = io::Error::other("");
        assert_eq!(describe(&empty), "other error");
    }
}
