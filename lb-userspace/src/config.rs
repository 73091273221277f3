//! The desired-state file: its TOML shape and parsing. Unknown keys are
//! errors, so a typo cannot silently drop a setting. Semantic checks beyond
//! the shape (duplicates, families, guards) belong to validation.

use std::{fmt, net::IpAddr, path::Path, str::FromStr};

use anyhow::Context as _;
use lb_common::maps::{PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Deserializer};

use crate::lookup_table::DEFAULT_SIZE;

/// The whole config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The interface to attach to (overridable on the command line).
    pub interface: Option<String>,
    /// Lookup-table size M, one of the allowed primes.
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// The virtual services.
    #[serde(default, rename = "vip")]
    pub vips: Vec<VipConfig>,
}

fn default_table_size() -> u32 {
    DEFAULT_SIZE.get()
}

/// One virtual IP service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Optional label used in output.
    pub name: Option<String>,
    /// The virtual address.
    pub address: IpAddr,
    /// The port; 0 means every port of `protocol`.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// The real servers.
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

impl VipConfig {
    /// `name` if given, else `address:port/protocol`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!(
                "{}/{}",
                std::net::SocketAddr::new(self.address, self.port),
                self.protocol
            ),
        }
    }
}

/// One real server behind a VIP.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Optional label used in output.
    pub name: Option<String>,
    /// The backend's address on the load balancer's L2 segment.
    pub address: IpAddr,
    /// The backend's port; defaults to the VIP's. Part of its identity.
    pub port: Option<u16>,
    /// Relative share of new flows; 0 drains the backend.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The backend's MAC; looked up in the neighbour table when absent.
    pub mac: Option<MacAddr>,
}

fn default_weight() -> u32 {
    1
}

impl BackendConfig {
    /// `name` if given, else the address.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }
}

/// The transport protocol of a VIP.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address like 02:00:00:00:00:01"));
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Parses a config from TOML text. Errors are one line: position and
    /// reason.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|err| {
            let reason = err.message().trim().replace('\n', "; ");
            match err.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    anyhow::anyhow!("line {line}, column {column}: {reason}")
                }
                None => anyhow::anyhow!("{reason}"),
            }
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        interface = "eth1"
        [[vip]]
        address = "198.18.0.100"
        port = 80
        protocol = "tcp"
        [[vip.backend]]
        address = "198.18.1.1"
        mac = "02:00:00:00:01:01"
        [[vip.backend]]
        address = "198.18.1.2"
        weight = 2
    "#;

    #[test]
    fn parses_an_example() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.interface.as_deref(), Some("eth1"));
        assert_eq!(config.table_size, 65537);
        let vip = &config.vips[0];
        assert_eq!(vip.protocol, Protocol::Tcp);
        assert_eq!(vip.backends[0].weight, 1);
        assert_eq!(vip.backends[0].mac, Some(MacAddr([2, 0, 0, 0, 1, 1])));
        assert_eq!(vip.backends[1].weight, 2);
        assert_eq!(vip.label(), "198.18.0.100:80/tcp");
    }

    #[test]
    fn the_shipped_example_parses() {
        let config = Config::parse(include_str!("../../examples/fulcrum.toml")).unwrap();
        assert_eq!(config.vips.len(), 2);
        assert_eq!(config.vips[0].backends[2].weight, 2);
        assert_eq!(config.vips[1].backends[0].weight, 1);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse(&EXAMPLE.replace("weight = 2", "wieght = 2")).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `wieght`"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_macs_are_errors() {
        for bad in [
            "02:00:00:00:01",
            "02:00:00:00:01:01:01",
            "zz:00:00:00:01:01",
            "2:0:0:0:1:1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
