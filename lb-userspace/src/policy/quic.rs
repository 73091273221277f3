//! QUIC routing by connection ID on the controller's side: each backend's
//! server ID (its own `server_id`, else derived from its identity alone,
//! so every host of a group and every restart derives the same), the
//! checks on a QUIC VIP (UDP only, a server ID's place inside a CID, IDs
//! of the configured length, none twice), and what a connection ID says
//! to a VIP, as the data plane reads it.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::maps::{MAX_QUIC_SERVERS, QUIC_CID_MAX, QUIC_WINDOW, QuicOutcome, QuicRoute};

use crate::{
    config::{
        Config, Protocol, QUIC_CONFIG_IDS, QuicConfig, SERVER_ID_LENS, SERVER_ID_OFFSETS, ServerId,
        VipConfig, span,
    },
    dataplane::state::{BackendState, VipState},
    problem::Problem,
    splitmix::SplitMix64,
};

/// The shortest nonce QUIC-LB asks servers to put after the server ID.
const NONCE_MIN: u8 = 4;

/// The server ID derived for a backend at `addr`, `len` octets: a
/// splitmix64 sequence seeded by its address and port.
pub fn derived(addr: SocketAddr, len: u8) -> ServerId {
    let mut bytes = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    // "QUIC-LB" in ASCII: IDs owe nothing to other uses of splitmix.
    let seed = bytes.iter().fold(0x0051_5549_432d_4c42_u64, |state, &b| {
        SplitMix64(state ^ u64::from(b)).next_u64()
    });
    let mut rng = SplitMix64(seed);
    let mut id = Vec::with_capacity(usize::from(len));
    while id.len() < usize::from(len) {
        id.extend(rng.next_u64().to_be_bytes());
    }
    id.truncate(usize::from(len));
    ServerId(id)
}

/// Each backend's server ID, in config order, when `vip` routes QUIC: its
/// own, else the derived one.
pub fn server_ids(vip: &VipConfig) -> Option<Vec<ServerId>> {
    let quic = vip.quic?;
    Some(
        vip.backends
            .iter()
            .map(|b| {
                b.server_id
                    .clone()
                    .unwrap_or_else(|| derived(vip.backend_addr(b), quic.server_id_len))
            })
            .collect(),
    )
}

/// The checks on `vip`'s QUIC routing and server IDs.
pub fn check(vip: &VipConfig, location: &str, problems: &mut Vec<Problem>) {
    let Some(quic) = vip.quic else {
        if let Some(backend) = vip.backends.iter().find(|b| b.server_id.is_some()) {
            problems.push(Problem::error(
                "server-id",
                format!("{location} backend {}", backend.label()),
                "server_id",
                backend
                    .server_id
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                "only a VIP with a [vip.quic] table routes by server ID",
            ));
        }
        return;
    };
    if vip.protocol != Protocol::Udp {
        problems.push(Problem::error(
            "quic-udp",
            location,
            "quic",
            vip.protocol.to_string(),
            "QUIC runs over UDP: only a UDP VIP can route it by connection ID",
        ));
    }
    if vip.port == 0 {
        problems.push(Problem::error(
            "quic-port",
            location,
            "port",
            "0",
            "a QUIC VIP names its port: the data plane finds QUIC VIPs by address and port",
        ));
    }
    for (key, value, range, what) in [
        (
            "config_id",
            quic.config_id,
            QUIC_CONFIG_IDS,
            "codepoint 7 marks an unroutable CID",
        ),
        (
            "server_id_len",
            quic.server_id_len,
            SERVER_ID_LENS,
            "octets",
        ),
        (
            "server_id_offset",
            quic.server_id_offset,
            SERVER_ID_OFFSETS,
            "octets: the first octet holds the config codepoint",
        ),
    ] {
        if !range.contains(&value) {
            problems.push(Problem::error(
                "quic-layout",
                format!("{location} quic"),
                key,
                value.to_string(),
                format!("must be {} ({what})", span(&range)),
            ));
        }
    }
    let end = u16::from(quic.server_id_offset) + u16::from(quic.server_id_len);
    if end + u16::from(NONCE_MIN) > u16::from(QUIC_CID_MAX) {
        problems.push(Problem::error(
            "quic-layout",
            format!("{location} quic"),
            "server_id_offset",
            quic.server_id_offset.to_string(),
            format!(
                "a server ID of {} octets at offset {} leaves no room in the longest \
                 connection ID ({QUIC_CID_MAX} octets) for the {NONCE_MIN}-octet nonce \
                 QUIC-LB asks after it",
                quic.server_id_len, quic.server_id_offset
            ),
        ));
    }
    for backend in &vip.backends {
        if let Some(id) = &backend.server_id
            && id.0.len() != usize::from(quic.server_id_len)
        {
            problems.push(Problem::error(
                "server-id",
                format!("{location} backend {}", backend.label()),
                "server_id",
                id.to_string(),
                format!(
                    "{} octets, but the VIP's server_id_len is {}",
                    id.0.len(),
                    quic.server_id_len
                ),
            ));
        }
    }
    let ids = server_ids(vip).unwrap_or_default();
    let mut first: HashMap<&ServerId, usize> = HashMap::new();
    for (index, id) in ids.iter().enumerate() {
        let Some(&earlier) = first.get(id) else {
            first.insert(id, index);
            continue;
        };
        let (a, b) = (&vip.backends[earlier], &vip.backends[index]);
        let how = |own: bool| if own { "its server_id" } else { "derived" };
        problems.push(Problem::error(
            "server-id-twin",
            format!("{location} backend {}", b.label()),
            "server_id",
            id.to_string(),
            format!(
                "backend {} has the same server ID ({}; here {}): one server's connections \
                 would reach the other. Set server_id on one of them",
                a.label(),
                how(a.server_id.is_some()),
                how(b.server_id.is_some()),
            ),
        ));
    }
}

/// More server IDs over all QUIC VIPs than the data plane holds.
pub fn check_total(config: &Config, problems: &mut Vec<Problem>) {
    let total: usize = config
        .vips
        .iter()
        .filter(|v| v.quic.is_some())
        .map(|v| v.backends.len())
        .sum();
    if total > MAX_QUIC_SERVERS as usize {
        problems.push(Problem::error(
            "quic-servers",
            "config",
            "server_id",
            total.to_string(),
            format!(
                "more backends of QUIC VIPs than the data plane holds server IDs for \
                 ({MAX_QUIC_SERVERS})"
            ),
        ));
    }
}

/// What a short-header packet whose destination connection ID is `cid`
/// says to a VIP routing by `quic`: the server ID it names, or the outcome
/// that sends it by the 4-tuple instead (as the data plane decides, which
/// also needs the packet to hold `QUIC_WINDOW` bytes from the ID on:
/// every real one does).
pub fn server_id_in(quic: &QuicConfig, cid: &[u8]) -> Result<ServerId, QuicOutcome> {
    let route: QuicRoute = quic.route();
    let first = *cid.first().ok_or(QuicOutcome::Truncated)?;
    if let Some(outcome) = route.judge(first) {
        return Err(outcome);
    }
    let start = usize::from(quic.server_id_offset);
    let end = start + usize::from(quic.server_id_len);
    if end > cid.len() {
        return Err(QuicOutcome::Truncated);
    }
    let mut window = [0u8; QUIC_WINDOW];
    let tail = &cid[start..];
    let taken = tail.len().min(QUIC_WINDOW);
    window[..taken].copy_from_slice(&tail[..taken]);
    let id = route.server_id(&window);
    Ok(ServerId(id[..usize::from(quic.server_id_len)].to_vec()))
}

/// Where a QUIC connection ID sends a packet of a VIP, as `explain`
/// says it.
#[derive(Debug)]
pub enum CidRoute<'s> {
    /// To this backend, by its server ID; why.
    Server(&'s BackendState, String),
    /// By the 4-tuple: why the CID does not decide (the start of the
    /// explanation; empty without a CID).
    Fallback(String),
}

/// Where a short-header packet whose destination connection ID is `cid`
/// (hex; `None`: no CID given) goes at `vip`, as the data plane decides:
/// its server's backend while that is in the table, else the 4-tuple's,
/// with the outcome the VIP's QUIC counters count. An error for a CID
/// that is not hex octets or is longer than QUIC allows.
pub fn route_cid<'s>(vip: &'s VipState, cid: Option<&str>) -> Result<CidRoute<'s>, String> {
    let Some(text) = cid else {
        return Ok(CidRoute::Fallback(String::new()));
    };
    let cid = text.parse::<ServerId>().map_err(|e| format!("cid: {e}"))?.0;
    if cid.len() > usize::from(QUIC_CID_MAX) {
        return Err(format!(
            "cid: a QUIC connection ID has at most {QUIC_CID_MAX} octets; {text:?} has {}",
            cid.len()
        ));
    }
    let Some(quic) = vip.quic else {
        return Ok(CidRoute::Fallback(
            "the VIP does not route by connection ID (it has no [vip.quic]), so ".into(),
        ));
    };
    let why = match server_id_in(&quic, &cid) {
        Ok(id) => match vip
            .backends
            .iter()
            .find(|b| b.server_id.as_ref() == Some(&id))
        {
            Some(backend) if !backend.down && !backend.held_out() => {
                let start = quic.server_id_offset;
                return Ok(CidRoute::Server(
                    backend,
                    format!(
                        "a QUIC short header: octets {start} to {} of its connection ID hold \
                         server ID {id}, this backend's",
                        start + quic.server_id_len - 1
                    ),
                ));
            }
            Some(backend) if backend.held_out() => format!(
                "server ID {id} is {}'s, which is held out of the table for want of a MAC \
                 (unknown_server)",
                backend.label
            ),
            Some(backend) => format!(
                "server ID {id} is {}'s, which is out of the table (server_down)",
                backend.label
            ),
            None => format!("server ID {id} names no backend of the VIP (unknown_server)"),
        },
        Err(QuicOutcome::OtherConfig) => format!(
            "its first octet carries config codepoint {}, not the VIP's {} (other_config)",
            cid[0] >> 5,
            quic.config_id
        ),
        Err(QuicOutcome::Unroutable) => {
            "its first octet carries codepoint 7, which marks it unroutable (unroutable)".into()
        }
        // `server_id_in`'s only other outcome.
        Err(_) => format!(
            "it ends before the server ID does, at octet {} (truncated)",
            u16::from(quic.server_id_offset) + u16::from(quic.server_id_len) - 1
        ),
    };
    Ok(CidRoute::Fallback(format!("{why}, so by the 4-tuple: ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::validate;

    fn quic_vip(extra: &str, backends: &str) -> String {
        format!(
            "[[vip]]\nname = \"q\"\naddress = \"198.18.100.1\"\nport = 443\nprotocol = \"udp\"\n\
             health_check = {{ kind = \"none\" }}\n{extra}\n{backends}"
        )
    }

    const THREE: &str = "[[vip.backend]]\naddress = \"198.18.0.11\"\n\
                         [[vip.backend]]\naddress = \"198.18.0.12\"\n\
                         [[vip.backend]]\naddress = \"198.18.0.13\"\n";

    fn codes(text: &str) -> Vec<String> {
        validate(text)
            .problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.code.to_string())
            .collect()
    }

    #[test]
    fn derived_ids_depend_on_the_identity_alone() {
        let a: SocketAddr = "198.18.0.11:443".parse().unwrap();
        let b: SocketAddr = "198.18.0.12:443".parse().unwrap();
        assert_eq!(derived(a, 2), derived(a, 2), "the same everywhere");
        assert_ne!(derived(a, 4), derived(b, 4));
        assert_eq!(derived(a, 15).0.len(), 15);
        assert_eq!(
            derived(a, 15).0[..2],
            derived(a, 2).0[..],
            "a longer ID extends"
        );
        let port: SocketAddr = "198.18.0.11:8443".parse().unwrap();
        assert_ne!(derived(a, 4), derived(port, 4), "the port is part of it");
    }

    #[test]
    fn a_quic_vip_is_udp_with_ids_that_fit_and_differ() {
        let ok = quic_vip("quic = { server_id_len = 2 }", THREE);
        assert_eq!(codes(&ok), Vec::<String>::new());
        let config = Config::parse(&ok).unwrap();
        let ids = server_ids(&config.vips[0]).unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|id| id.0.len() == 2));
        let rows = [
            (
                "a TCP VIP",
                ok.replace("\"udp\"", "\"tcp\""),
                vec!["quic-udp"],
            ),
            (
                "an ID past the longest CID",
                quic_vip("quic = { server_id_len = 15, server_id_offset = 6 }", THREE),
                vec!["quic-layout"],
            ),
            (
                "an ID of another length",
                quic_vip(
                    "quic = { server_id_len = 2 }",
                    &THREE.replace(
                        "\"198.18.0.12\"\n",
                        "\"198.18.0.12\"\nserver_id = \"0a0b0c\"\n",
                    ),
                ),
                vec!["server-id"],
            ),
            (
                "two backends with one ID",
                quic_vip(
                    "quic = { server_id_len = 2 }",
                    &THREE
                        .replace(
                            "\"198.18.0.12\"\n",
                            "\"198.18.0.12\"\nserver_id = \"0a0b\"\n",
                        )
                        .replace(
                            "\"198.18.0.13\"\n",
                            "\"198.18.0.13\"\nserver_id = \"0a0b\"\n",
                        ),
                ),
                vec!["server-id-twin"],
            ),
            (
                "a server ID without [vip.quic]",
                quic_vip(
                    "",
                    &THREE.replace(
                        "\"198.18.0.12\"\n",
                        "\"198.18.0.12\"\nserver_id = \"0a0b\"\n",
                    ),
                ),
                vec!["server-id"],
            ),
            (
                "no server_id_len",
                quic_vip("quic = { config_id = 1 }", THREE),
                vec!["missing-key"],
            ),
            (
                "the unroutable codepoint",
                quic_vip("quic = { server_id_len = 2, config_id = 7 }", THREE),
                vec!["quic-layout"],
            ),
            (
                "no room for the nonce",
                quic_vip("quic = { server_id_len = 15, server_id_offset = 2 }", THREE),
                vec!["quic-layout"],
            ),
            (
                "any port",
                ok.replace("port = 443", "port = 0"),
                vec!["quic-port"],
            ),
            (
                "an empty ID",
                quic_vip("quic = { server_id_len = 0 }", THREE),
                vec!["quic-layout"],
            ),
            (
                "an ID over the first octet",
                quic_vip("quic = { server_id_len = 2, server_id_offset = 0 }", THREE),
                vec!["quic-layout"],
            ),
        ];
        for (what, text, want) in rows {
            let got = codes(&text);
            for code in &want {
                assert!(got.contains(&code.to_string()), "{what}: {got:?}");
            }
        }
        // A 1-octet ID collides among enough backends: refused, not routed
        // to the wrong server.
        let many: String = (1..=40)
            .map(|i| format!("[[vip.backend]]\naddress = \"198.18.0.{i}\"\n"))
            .collect();
        let crowded = codes(&quic_vip("quic = { server_id_len = 1 }", &many));
        assert!(
            crowded.contains(&"server-id-twin".to_string()),
            "{crowded:?}"
        );
    }

    #[test]
    fn a_cid_names_its_server_or_says_why_not() {
        let quic = QuicConfig {
            config_id: 0,
            server_id_offset: 1,
            server_id_len: 3,
        };
        // QUIC-LB's test vector: config 0, server ID c4605e.
        let cid = [0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f];
        assert_eq!(
            server_id_in(&quic, &cid),
            Ok(ServerId(vec![0xc4, 0x60, 0x5e]))
        );
        assert_eq!(
            server_id_in(&quic, &[0xe7, 1, 2, 3, 4]),
            Err(QuicOutcome::Unroutable)
        );
        assert_eq!(
            server_id_in(&quic, &[0x27, 1, 2, 3, 4]),
            Err(QuicOutcome::OtherConfig)
        );
        assert_eq!(server_id_in(&quic, &[0x07, 1]), Err(QuicOutcome::Truncated));
        assert_eq!(server_id_in(&quic, &[]), Err(QuicOutcome::Truncated));
    }

    /// `explain --cid`: the server's backend while it is in the table,
    /// else the 4-tuple, saying which outcome the counters count.
    #[test]
    fn explain_follows_the_server_id_as_the_data_plane_does() {
        let text = quic_vip(
            "quic = { server_id_len = 2, config_id = 1 }",
            &THREE.replace(
                "\"198.18.0.12\"\n",
                "\"198.18.0.12\"\nname = \"b2\"\nserver_id = \"0a0b\"\n",
            ),
        );
        let config = Config::parse(&text).unwrap();
        let mut state = crate::dataplane::state::DesiredState::build_from(&config, None, |_| {
            Ok(crate::config::MacAddr([2, 0, 0, 0, 0, 1]))
        })
        .unwrap();
        let vip = &state.vips[0];
        let fallback = |cid: &str| match route_cid(vip, Some(cid)) {
            Ok(CidRoute::Fallback(why)) => why,
            other => panic!("{cid}: {other:?}"),
        };
        match route_cid(vip, Some("200a0b9f3c")) {
            Ok(CidRoute::Server(backend, why)) => {
                assert_eq!(backend.label, "b2");
                assert!(
                    why.contains("octets 1 to 2") && why.contains("0a0b"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(fallback("200a0c9f3c").contains("(unknown_server)"));
        assert!(fallback("000a0b9f3c").contains("codepoint 0, not the VIP's 1"));
        assert!(fallback("e00a0b9f3c").contains("(unroutable)"));
        assert!(fallback("200a").contains("(truncated)"));
        assert!(matches!(route_cid(vip, None), Ok(CidRoute::Fallback(why)) if why.is_empty()));
        for bad in ["20zz", "200", &"00".repeat(21)] {
            assert!(route_cid(vip, Some(bad)).is_err(), "{bad}");
        }
        state.vips[0].backends[1].mac = crate::config::MacAddr([0; 6]);
        match route_cid(&state.vips[0], Some("200a0b9f3c")) {
            Ok(CidRoute::Fallback(why)) => assert!(why.contains("want of a MAC"), "{why}"),
            other => panic!("{other:?}"),
        }
        state.vips[0].backends[1].mac = crate::config::MacAddr([2, 0, 0, 0, 0, 1]);
        state.vips[0].backends[1].down = true;
        let vip = &state.vips[0];
        match route_cid(vip, Some("200a0b9f3c")) {
            Ok(CidRoute::Fallback(why)) => assert!(why.contains("(server_down)"), "{why}"),
            other => panic!("{other:?}"),
        }
        state.vips[0].quic = None;
        match route_cid(&state.vips[0], Some("200a0b9f3c")) {
            Ok(CidRoute::Fallback(why)) => assert!(why.contains("no [vip.quic]"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
