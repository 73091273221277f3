//! BIRD, driven through its own interfaces: the include file of static
//! routes the controller writes (protocols `fulcrum4` and `fulcrum6`) and
//! the control socket `birdc` speaks, over which it asks BIRD to read its
//! configuration again.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::durable::{self, DurableError};

/// Why BIRD was not told, or did not take, what it was told. Each message
/// names what was being done; the underlying error, if any, is its
/// source.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The interface's name cannot be written into BIRD's config.
    #[error("interface name {0:?} cannot be written into a BIRD config")]
    Interface(String),
    /// The include file could not be written.
    #[error(transparent)]
    Include(DurableError),
    /// BIRD's control socket could not be connected to.
    #[error("connecting to BIRD's control socket {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The error.
        #[source]
        error: io::Error,
    },
    /// The connection failed: setting its timeouts, or sending the command.
    #[error(transparent)]
    Socket(io::Error),
    /// BIRD's greeting could not be read.
    #[error("reading BIRD's greeting")]
    Greeting(#[source] io::Error),
    /// BIRD greeted with another code than 0001.
    #[error("BIRD greeted with code {0:04}, not 0001")]
    Greeted(u16),
    /// BIRD's answer to a command could not be read.
    #[error("reading BIRD's answer to {command:?}")]
    Answer {
        /// The command.
        command: String,
        /// The error.
        #[source]
        error: io::Error,
    },
    /// BIRD refused a command (a code of 8000 and up), in its own words.
    #[error("BIRD answered {command:?} with {code:04}: {}", lines.join("; "))]
    Refused {
        /// The command.
        command: String,
        /// BIRD's code.
        code: u16,
        /// BIRD's answer.
        lines: Vec<String>,
    },
}

impl BirdError {
    /// Whether it says that no BIRD listens on the socket: then BIRD
    /// announces nothing now, and reads the include file when it starts.
    /// Any I/O error on the way that finds nothing there, or nothing
    /// accepting, says so (the include file's missing directory too).
    pub fn not_running(&self) -> bool {
        let error = match self {
            BirdError::Include(DurableError::Io { source: error, .. })
            | BirdError::Connect { error, .. }
            | BirdError::Socket(error)
            | BirdError::Greeting(error)
            | BirdError::Answer { error, .. } => error,
            BirdError::Interface(_)
            | BirdError::Include(DurableError::NoFile(_))
            | BirdError::Greeted(_)
            | BirdError::Refused { .. } => return false,
        };
        matches!(
            error.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        )
    }
}

/// Mode of the include file: BIRD may run as its own user.
const INCLUDE_MODE: u32 = 0o644;

/// How long BIRD may take to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The include file announcing `routes` as host routes through `interface`.
/// `check link` makes BIRD itself withdraw them when the interface loses
/// its link, with or without a controller running.
pub fn render(routes: &[IpAddr], interface: &str) -> Result<String, BirdError> {
    if interface.contains(['"', '\\']) || interface.is_empty() {
        return Err(BirdError::Interface(interface.to_string()));
    }
    let mut text = format!(
        "# Written by fulcrum: the VIPs this host is ready to serve on {interface}.\n\
         # Do not edit; export protocols fulcrum4 and fulcrum6 to BGP from bird.conf.\n"
    );
    for (name, channel, v6) in [("fulcrum4", "ipv4", false), ("fulcrum6", "ipv6", true)] {
        text.push_str(&format!(
            "protocol static {name} {{\n\t{channel};\n\tcheck link on;\n"
        ));
        for route in routes.iter().filter(|r| r.is_ipv6() == v6) {
            let length = if v6 { 128 } else { 32 };
            text.push_str(&format!("\troute {route}/{length} via \"{interface}\";\n"));
        }
        text.push_str("}\n");
    }
    Ok(text)
}

/// The routes an include file written by `render` announces: what a
/// previous daemon left BIRD with. A file that is missing or unreadable
/// announces nothing.
pub fn rendered_routes(include: &Path) -> Vec<IpAddr> {
    let text = std::fs::read_to_string(include).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("route "))
        .filter_map(|route| route.split('/').next()?.parse().ok())
        .collect()
}

/// One line of BIRD's answer: its code (`None` on a continuation line)
/// and its text.
fn parse_line(line: &str) -> (Option<u16>, bool, &str) {
    let code = line.get(..4).and_then(|c| c.parse().ok());
    match (code, line.as_bytes().get(4)) {
        (Some(code), Some(b' ')) => (Some(code), true, &line[5..]),
        (Some(code), Some(b'-')) => (Some(code), false, &line[5..]),
        (Some(code), None) => (Some(code), true, ""),
        _ => (None, false, line.trim_start()),
    }
}

/// Sends `command` to the BIRD listening on `socket` and returns its
/// answer's lines; an error code (8000 and up) is an error with BIRD's
/// own words.
pub fn command(socket: &Path, command: &str) -> Result<Vec<String>, BirdError> {
    let stream = UnixStream::connect(socket).map_err(|error| BirdError::Connect {
        socket: socket.to_path_buf(),
        error,
    })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(BirdError::Socket)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(BirdError::Socket)?);
    let mut answer = || -> io::Result<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        let mut last = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "BIRD closed its control socket mid-answer",
                ));
            }
            let (code, last_line, text) = parse_line(line.trim_end_matches('\n'));
            last = code.unwrap_or(last);
            lines.push(text.to_string());
            if last_line {
                return Ok((last, lines));
            }
        }
    };
    let (greeting, _) = answer().map_err(BirdError::Greeting)?;
    if greeting != 1 {
        return Err(BirdError::Greeted(greeting));
    }
    (&stream)
        .write_all(format!("{command}\n").as_bytes())
        .map_err(BirdError::Socket)?;
    let (code, lines) = answer().map_err(|error| BirdError::Answer {
        command: command.to_string(),
        error,
    })?;
    if code >= 8000 {
        return Err(BirdError::Refused {
            command: command.to_string(),
            code,
            lines,
        });
    }
    Ok(lines)
}

/// Writes the include file announcing `routes` via `interface`, then asks
/// the BIRD on `socket` to read its configuration (and so the file) again.
pub fn announce(
    include: &Path,
    socket: &Path,
    routes: &[IpAddr],
    interface: &str,
) -> Result<(), BirdError> {
    let text = render(routes, interface)?;
    durable::write(include, text.as_bytes(), INCLUDE_MODE).map_err(BirdError::Include)?;
    command(socket, "configure").map(drop)
}

/// BIRD's BGP sessions: how many are configured and how many are
/// established (`show protocols`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sessions {
    /// BGP protocols configured.
    pub configured: usize,
    /// Those whose session is established.
    pub established: usize,
}

impl Sessions {
    /// Whether BIRD has BGP peers and reaches none of them: whatever it
    /// announces now reaches no router.
    pub fn cut_off(&self) -> bool {
        self.configured > 0 && self.established == 0
    }
}

/// The BGP sessions of the BIRD listening on `socket`.
pub fn sessions(socket: &Path) -> Result<Sessions, BirdError> {
    Ok(count_sessions(&command(socket, "show protocols")?))
}

/// Counts the BGP rows of `show protocols`' lines: `Name Proto Table State
/// Since Info`, where an established session's info says `Established`.
fn count_sessions(lines: &[String]) -> Sessions {
    let bgp: Vec<Vec<&str>> = lines
        .iter()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.get(1) == Some(&"BGP"))
        .collect();
    Sessions {
        configured: bgp.len(),
        established: bgp
            .iter()
            .filter(|words| words.contains(&"Established"))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_go_to_their_familys_protocol() {
        let routes: Vec<IpAddr> = vec![
            "198.18.100.1".parse().unwrap(),
            "2001:2::80".parse().unwrap(),
        ];
        let text = render(&routes, "eth1").unwrap();
        let four = text.find("protocol static fulcrum4").unwrap();
        let six = text.find("protocol static fulcrum6").unwrap();
        let v4 = text.find("route 198.18.100.1/32 via \"eth1\";").unwrap();
        let v6 = text.find("route 2001:2::80/128 via \"eth1\";").unwrap();
        assert!(four < v4 && v4 < six && six < v6, "{text}");
        assert_eq!(text.matches("check link on;").count(), 2);
        assert!(render(&routes, "a\"b").is_err());
        // Nothing ready: both protocols stay, empty.
        let none = render(&[], "eth1").unwrap();
        assert_eq!(none.matches("protocol static").count(), 2);
        assert!(!none.contains("route"));
    }

    #[test]
    fn the_routes_of_a_written_include_are_read_back() {
        let routes: Vec<IpAddr> = vec![
            "198.18.100.1".parse().unwrap(),
            "2001:2::80".parse().unwrap(),
        ];
        let dir = std::env::temp_dir().join(format!("fulcrum-include-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let include = dir.join("fulcrum.conf");
        std::fs::write(&include, render(&routes, "eth1").unwrap()).unwrap();
        assert_eq!(rendered_routes(&include), routes);
        assert!(rendered_routes(&dir.join("missing.conf")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_bird_is_told_apart_from_a_refusal() {
        let dir = std::env::temp_dir().join(format!("fulcrum-bird-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let include = dir.join("include.conf");
        let missing = announce(&include, &dir.join("no-such.ctl"), &[], "eth1").unwrap_err();
        assert!(missing.not_running(), "{missing}");
        assert_eq!(
            std::fs::read_to_string(&include).unwrap(),
            render(&[], "eth1").unwrap()
        );
        let refused = BirdError::Refused {
            command: "configure".into(),
            code: 8002,
            lines: vec!["syntax error".into()],
        };
        assert_eq!(
            refused.to_string(),
            "BIRD answered \"configure\" with 8002: syntax error"
        );
        assert!(!refused.not_running());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bgp_sessions_are_counted_from_show_protocols() {
        let answer: Vec<String> = [
            "Name       Proto      Table      State  Since         Info",
            "device1    Device     ---        up     07:10:02.113  ",
            "fulcrum4   Static     master4    up     07:10:02.113  ",
            "router_ipv4 BGP        ---        up     07:10:05.201  Established   ",
            "router_ipv6 BGP        ---        start  07:12:40.007  Active        Socket: Connection refused",
            "",
        ]
        .map(String::from)
        .to_vec();
        let sessions = count_sessions(&answer);
        assert_eq!(
            sessions,
            Sessions {
                configured: 2,
                established: 1
            }
        );
        assert!(!sessions.cut_off());
        let down: Vec<String> = answer
            .iter()
            .map(|l| l.replace("Established", "Connect"))
            .collect();
        assert!(count_sessions(&down).cut_off());
        // No BGP at all: nothing to be cut off from.
        assert!(!count_sessions(&answer[..3]).cut_off());
    }

    #[test]
    fn answers_are_read_as_bird_writes_them() {
        assert_eq!(
            parse_line("0003 Reconfigured"),
            (Some(3), true, "Reconfigured")
        );
        assert_eq!(
            parse_line("0002-Reading configuration from /etc/bird/bird.conf"),
            (
                Some(2),
                false,
                "Reading configuration from /etc/bird/bird.conf"
            )
        );
        assert_eq!(
            parse_line(" fulcrum4   Static"),
            (None, false, "fulcrum4   Static")
        );
        assert_eq!(parse_line("0000"), (Some(0), true, ""));
        assert_eq!(
            parse_line("8002 /etc/bird.conf:3:1 syntax error"),
            (Some(8002), true, "/etc/bird.conf:3:1 syntax error")
        );
    }
}
