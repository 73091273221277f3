//! QUIC routing by connection ID end to end: a real QUIC stack (quinn)
//! through the real `fulcrum run` in the switched lab (L2 direct server
//! return), in both families. Every backend runs a quinn server on each
//! of four UDP VIPs added to the lab's config by an apply: `quic4` and
//! `quic6` route QUIC by server ID (`[vip.quic]`, each backend's
//! `server_id` configured, its server issuing CIDs that carry it);
//! `plain4` and `plain6` are the same service without QUIC routing, its
//! servers issuing random CIDs (the control). Clients connect until every
//! backend holds some, ask who serves them, then each moves its
//! connection to a new local port again and again, asking after every
//! move. On a QUIC VIP every connection survives every move on the server
//! that answered first, which hears it at each new port, and the kernel
//! counts its short headers as routed by server ID (as `fulcrum status`
//! reports, with each backend's server ID). On a control VIP
//! the 4-tuple hash sends a moved connection to a server that does not
//! know it (two times in three per move, with three backends), so
//! connections are lost.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::{
    lab::{BackendSpec, Lab, TCP_PORT, VIP4, VIP6},
    netns::Netns,
    quic::{CidScheme, QuicClient, QuicServer, ServerIdCids},
    scratch::Scratch,
    status::{backend, status, vip, wait_for},
};
use lb_userspace::config::ServerId;

/// The QUIC VIPs' port.
const QUIC_PORT: u16 = 443;
/// The control VIPs' port: the same service, routed by the 4-tuple.
const CONTROL_PORT: u16 = 4443;
/// Moves to a new local port per connection.
const REBINDS: usize = 10;
/// Connections per VIP at least...
const MIN_CLIENTS: usize = 8;
/// ...and until every backend holds this many of them...
const PER_BACKEND: usize = 2;
/// ...giving up after this many (three equal backends miss that with a
/// chance under 1e-5).
const MAX_CLIENTS: usize = 40;
/// Octets of a server ID, as `[vip.quic] server_id_len` says.
const SERVER_ID_LEN: usize = 2;
/// Octets of every CID the servers issue.
const CID_LEN: usize = 8;
/// Checks every 300 ms, up after 2 passes; down only after 5 failures,
/// so that one slow check cannot take a backend (and its ID) away mid-test.
const CHECKS: &str = "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 5\n";

/// One of the VIPs the test adds.
struct Service {
    name: &'static str,
    vip: SocketAddr,
    /// Whether it routes QUIC by server ID (else: the control).
    quic: bool,
}

const SERVICES: [Service; 4] = [
    Service {
        name: "quic4",
        vip: SocketAddr::new(IpAddr::V4(VIP4), QUIC_PORT),
        quic: true,
    },
    Service {
        name: "quic6",
        vip: SocketAddr::new(IpAddr::V6(VIP6), QUIC_PORT),
        quic: true,
    },
    Service {
        name: "plain4",
        vip: SocketAddr::new(IpAddr::V4(VIP4), CONTROL_PORT),
        quic: false,
    },
    Service {
        name: "plain6",
        vip: SocketAddr::new(IpAddr::V6(VIP6), CONTROL_PORT),
        quic: false,
    },
];

/// Backend `index`'s server ID: `51 0i` (i from 1).
fn server_id(index: usize) -> [u8; SERVER_ID_LEN] {
    [0x51, u8::try_from(index + 1).expect("a few backends")]
}

/// Backend `index`'s server ID as the config and `status` spell it.
fn server_id_text(index: usize) -> String {
    ServerId(server_id(index).to_vec()).to_string()
}

/// `service` as the config declares it, over every backend of the lab in
/// the VIP's family, checked at the TCP port the lab's backends serve.
fn vip_config(lab: &Lab, service: &Service) -> String {
    let mut text = format!(
        "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"udp\"\n",
        service.name,
        service.vip.ip(),
        service.vip.port()
    );
    if service.quic {
        text += &format!("quic = {{ server_id_len = {SERVER_ID_LEN} }}\n");
    }
    text += &format!("[vip.health_check]\nkind = \"tcp\"\nport = {TCP_PORT}\n");
    for (index, spec) in lab.backends.iter().enumerate() {
        let (_, v4, v6) = lab.backend_host(index);
        let address: IpAddr = if service.vip.is_ipv4() {
            v4.into()
        } else {
            v6.into()
        };
        text += &format!(
            "[[vip.backend]]\nname = \"{}\"\naddress = \"{address}\"\n",
            spec.name
        );
        if service.quic {
            text += &format!("server_id = \"{}\"\n", server_id_text(index));
        }
    }
    text
}

/// Adds every service's VIP to the lab with `fulcrum apply`, and waits
/// until each has all its backends up.
fn add_services(lab: &Lab) {
    let scratch = Scratch::new("quic-lab");
    let mut text = std::fs::read_to_string(lab.config_path()).expect("the lab's config");
    for service in &SERVICES {
        text += &vip_config(lab, service);
    }
    let file = scratch.0.join("fulcrum.toml");
    std::fs::write(&file, &text).expect("the config with the QUIC VIPs");
    let (code, stdout, stderr) = lab
        .cli(&["apply", file.to_str().expect("a UTF-8 path")])
        .expect("fulcrum apply runs");
    assert_eq!(code, 0, "apply of:\n{text}\n{stdout}{stderr}");
    wait_for(lab, Duration::from_secs(10), |s| {
        SERVICES.iter().all(|service| {
            lab.backends
                .iter()
                .all(|b| backend(s, service.name, &b.name)["health"] == "up")
        })
    });
}

/// One quinn server per backend on `service`'s VIP, answering with the
/// backend's name: CIDs that carry its server ID on a QUIC VIP, random
/// ones on a control VIP. In backend order.
fn start_servers(lab: &Lab, service: &Service) -> anyhow::Result<Vec<QuicServer>> {
    lab.backends
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let cids = if service.quic {
                CidScheme::ServerId(ServerIdCids::new(0, &server_id(index), CID_LEN)?)
            } else {
                CidScheme::Random(CID_LEN)
            };
            let (host, _, _) = lab.backend_host(index);
            QuicServer::start(host, service.vip, &spec.name, cids)
        })
        .collect()
}

/// A connection and the server that answered its first request.
struct Opened<'ns> {
    quic: QuicClient<'ns>,
    server: String,
}

/// Connects to `vip` and asks, until there are `MIN_CLIENTS` connections
/// and every one of `names` serves `PER_BACKEND` of them.
fn connect_spread<'ns>(
    client: &'ns Netns,
    vip: SocketAddr,
    servers: &[QuicServer],
    names: &[String],
) -> anyhow::Result<Vec<Opened<'ns>>> {
    let trusted: Vec<_> = servers.iter().map(|s| s.cert().clone()).collect();
    let mut opened: Vec<Opened<'ns>> = Vec::new();
    let served =
        |opened: &[Opened<'_>], name: &String| opened.iter().filter(|o| o.server == *name).count();
    while opened.len() < MIN_CLIENTS || names.iter().any(|n| served(&opened, n) < PER_BACKEND) {
        if opened.len() == MAX_CLIENTS {
            let spread: Vec<_> = names.iter().map(|n| (n, served(&opened, n))).collect();
            bail!(
                "{MAX_CLIENTS} connections to {vip} did not reach every backend {PER_BACKEND} times: {spread:?}"
            );
        }
        let mut quic = QuicClient::connect(client, vip, &trusted)?;
        let server = quic.ask().context("the first request")?;
        ensure!(names.contains(&server), "{server} is not a backend");
        opened.push(Opened { quic, server });
    }
    Ok(opened)
}

/// How a connection's moves ended.
#[derive(Debug)]
enum Fate {
    /// Every request after every move was answered by its first server.
    Kept,
    /// The request after move `rebind` went unanswered.
    Lost { rebind: usize, error: String },
    /// The request after move `rebind` was answered by another server.
    Moved { rebind: usize, to: String },
}

impl Fate {
    /// The move after which the connection broke, if it did.
    fn broke_at(&self) -> Option<usize> {
        match self {
            Self::Kept => None,
            Self::Lost { rebind, .. } | Self::Moved { rebind, .. } => Some(*rebind),
        }
    }
}

/// One connection's moves: every local address it sent from, and how it
/// ended.
struct Journey {
    server: String,
    addrs: Vec<SocketAddr>,
    retired: u64,
    fate: Fate,
}

/// Moves the connection to a new local port `REBINDS` times, asking after
/// each move; stops at the first request its server does not answer.
fn wander(mut opened: Opened<'_>) -> anyhow::Result<Journey> {
    let mut addrs = vec![opened.quic.local_addr()?];
    let mut fate = Fate::Kept;
    for rebind in 1..=REBINDS {
        let addr = opened.quic.rebind()?;
        ensure!(
            addrs.iter().all(|a| a.port() != addr.port()),
            "rebind {rebind} reused a port: {addr} after {addrs:?}"
        );
        addrs.push(addr);
        match opened.quic.ask() {
            Ok(name) if name == opened.server => {}
            Ok(to) => {
                fate = Fate::Moved { rebind, to };
                break;
            }
            Err(error) => {
                fate = Fate::Lost {
                    rebind,
                    error: format!("{error:#}"),
                };
                break;
            }
        }
    }
    Ok(Journey {
        server: opened.server,
        addrs,
        retired: opened.quic.retired_cids(),
        fate,
    })
}

/// Opens connections to `service` and moves each of them, all at once;
/// returns every journey.
fn move_all(lab: &Lab, service: &Service, servers: &[QuicServer]) -> Vec<Journey> {
    let names: Vec<String> = lab.backends.iter().map(|b| b.name.clone()).collect();
    let opened = connect_spread(lab.client(), service.vip, servers, &names)
        .unwrap_or_else(|e| panic!("{}: {e:#}", service.name));
    let started = Instant::now();
    let journeys = std::thread::scope(|scope| {
        let runs: Vec<_> = opened
            .into_iter()
            .map(|opened| scope.spawn(move || wander(opened)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a client's thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .unwrap_or_else(|e| panic!("{}: {e:#}", service.name));
    let mut spread = BTreeMap::new();
    for journey in &journeys {
        *spread.entry(journey.server.as_str()).or_insert(0) += 1;
    }
    eprintln!(
        "{} ({}): {} connections, first served by {spread:?}, moved in {:?}",
        service.name,
        service.vip,
        journeys.len(),
        started.elapsed()
    );
    journeys
}

/// On a QUIC VIP: every connection kept its server through every move;
/// that server answered it at every port it moved to; it switched to a
/// fresh CID at every move; and every CID the servers issued carries the
/// issuer's server ID.
fn assert_all_kept(lab: &Lab, service: &Service, servers: &[QuicServer], journeys: &[Journey]) {
    let client_ip: IpAddr = if service.vip.is_ipv4() {
        lab.client_addrs().0.into()
    } else {
        lab.client_addrs().1.into()
    };
    let lost: Vec<_> = journeys
        .iter()
        .enumerate()
        .filter(|(_, j)| j.fate.broke_at().is_some())
        .map(|(index, j)| format!("connection {index} on {}: {:?}", j.server, j.fate))
        .collect();
    assert!(
        lost.is_empty(),
        "{}: {} of {} connections did not survive {REBINDS} moves:\n{}",
        service.name,
        lost.len(),
        journeys.len(),
        lost.join("\n")
    );
    for (index, journey) in journeys.iter().enumerate() {
        let at = lab
            .backends
            .iter()
            .position(|b| b.name == journey.server)
            .expect("a backend's name");
        let answered = servers[at].answered_from();
        for addr in &journey.addrs {
            let seen = SocketAddr::new(client_ip, addr.port());
            assert!(
                answered.contains(&seen),
                "{}: connection {index}'s server {} never answered it at {seen}",
                service.name,
                journey.server
            );
        }
        assert!(
            journey.retired >= REBINDS as u64,
            "{}: connection {index} moved to {} fresh CIDs in {REBINDS} moves",
            service.name,
            journey.retired
        );
    }
    for (index, server) in servers.iter().enumerate() {
        let layout = ServerIdCids::new(0, &server_id(index), CID_LEN).expect("a layout");
        let issued = server.issued_cids();
        assert!(
            issued.iter().all(|cid| layout.carries(cid)),
            "{}: {} issued a CID without its server ID: {issued:02x?}",
            service.name,
            lab.backends[index].name
        );
    }
    eprintln!(
        "{}: {} of {} connections survived {REBINDS} moves each on their server",
        service.name,
        journeys.len(),
        journeys.len()
    );
}

/// On a control VIP: at least half of the connections broke. Each move
/// keeps the backend with a chance of 1 in 3 (three equal backends), so
/// one survives ten moves with a chance of about 2e-5, and nearly all
/// break; half is a bound that cannot flake.
fn assert_most_broke(service: &Service, journeys: &[Journey]) {
    let broke: Vec<_> = journeys
        .iter()
        .filter(|j| j.fate.broke_at().is_some())
        .collect();
    let at_move: Vec<usize> = broke.iter().filter_map(|j| j.fate.broke_at()).collect();
    let moved_to: Vec<&str> = broke
        .iter()
        .filter_map(|j| match &j.fate {
            Fate::Moved { to, .. } => Some(to.as_str()),
            _ => None,
        })
        .collect();
    eprintln!(
        "{} (control): {} of {} connections broke (at moves {at_move:?}; answered by another server: {moved_to:?}), {} survived",
        service.name,
        broke.len(),
        journeys.len(),
        journeys.len() - broke.len()
    );
    if let Some(Fate::Lost { error, .. }) = broke.first().map(|j| &j.fate) {
        eprintln!(
            "{} (control): a lost connection's error: {error}",
            service.name
        );
    }
    assert!(
        broke.len() * 2 >= journeys.len(),
        "{}: only {} of {} connections broke without QUIC routing; the control does not control",
        service.name,
        broke.len(),
        journeys.len()
    );
}

/// A VIP's QUIC packets by outcome, as `fulcrum status` reports them
/// (`None`: the VIP does not route QUIC); each backend's server ID is
/// checked on the way, for a QUIC VIP.
fn quic_outcomes(lab: &Lab, service: &Service) -> Option<BTreeMap<String, u64>> {
    let status = status(lab);
    let quic = &vip(&status, service.name)["quic"];
    if quic.is_null() {
        return None;
    }
    for index in 0..3 {
        let name = format!("b{}", index + 1);
        assert_eq!(
            backend(&status, service.name, &name)["server_id"],
            server_id_text(index),
            "{}: {name}'s server ID in status",
            service.name
        );
    }
    let packets = quic["packets"].as_object().expect("packets by outcome");
    Some(
        packets
            .iter()
            .map(|(outcome, n)| (outcome.clone(), n.as_u64().expect("a count")))
            .collect(),
    )
}

/// The outcomes that moved from `before` to `after`.
fn outcome_deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(outcome, n)| {
            (
                outcome.clone(),
                n - before.get(outcome).copied().unwrap_or(0),
            )
        })
        .filter(|&(_, moved)| moved > 0)
        .collect()
}

#[test]
fn quic_connections_survive_migration_only_on_a_quic_vip() {
    let lab = Lab::start_with(&BackendSpec::equal(3), CHECKS).expect("lab starts");
    add_services(&lab);
    for service in &SERVICES {
        let servers = start_servers(&lab, service)
            .unwrap_or_else(|e| panic!("{}'s servers: {e:#}", service.name));
        let before = quic_outcomes(&lab, service);
        let journeys = move_all(&lab, service, &servers);
        let after = quic_outcomes(&lab, service);
        assert_eq!(
            after.is_some(),
            service.quic,
            "{}: status reports QUIC routing exactly on a QUIC VIP",
            service.name
        );
        let counted = outcome_deltas(&before.unwrap_or_default(), &after.unwrap_or_default());
        eprintln!("{}: the kernel's QUIC outcomes {counted:?}", service.name);
        if service.quic {
            assert_all_kept(&lab, service, &servers, &journeys);
            // At least the request after every move went by server ID.
            let routed = counted.get("routed").copied().unwrap_or_default();
            assert!(
                routed >= (journeys.len() * REBINDS) as u64,
                "{}: only {routed} short headers routed by server ID for {} connections moved {REBINDS} times",
                service.name,
                journeys.len()
            );
        } else {
            assert!(
                counted.is_empty(),
                "{}: a VIP without QUIC routing counted QUIC outcomes {counted:?}",
                service.name
            );
            assert_most_broke(service, &journeys);
        }
    }
    lab.stop_fulcrum().expect("fulcrum stops");
}
