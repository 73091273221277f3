//! The QUIC harness on its own, without the load balancer: a server in one
//! namespace that holds a VIP on `lo` (as a lab backend does) and clients
//! in another, joined by a veth pair. Each client keeps its server while it
//! moves its connection to new local ports, the server issues CIDs that
//! carry its server ID, and it sees the clients at their new ports.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, ensure};
use lb_tests::{
    fixture::require_root,
    lab::{VIP4, VIP6},
    netns::Netns,
    quic::{CidScheme, QuicClient, QuicServer, ServerIdCids},
};

const QUIC_PORT: u16 = 443;
const CLIENTS: usize = 4;
const REBINDS: usize = 10;

/// Two namespaces joined by a veth pair: the server at `.1`, the client at
/// `.2` of 198.18.200.0/24 and 2001:2:0:200::/64, the VIPs on the server's
/// `lo` and routed to it from the client.
fn wire(server: &Netns, client: &Netns) -> anyhow::Result<()> {
    server.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        client.name(),
    ])?;
    for (ns, host) in [(server, 1), (client, 2)] {
        ns.ip(&[
            "addr",
            "add",
            &format!("198.18.200.{host}/24"),
            "dev",
            "eth0",
        ])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("2001:2:0:200::{host}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
    }
    server.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
    server.ip(&["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
    client.ip(&["route", "add", &format!("{VIP4}/32"), "via", "198.18.200.1"])?;
    client.ip(&[
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        "2001:2:0:200::1",
    ])
}

/// What one client saw: every local address it sent from, and how many
/// RETIRE_CONNECTION_ID frames it sent (one a switch to a fresh CID, more
/// if any was retransmitted).
struct Moves {
    addrs: Vec<SocketAddr>,
    retired: u64,
}

/// Connects, asks, then rebinds `rebinds` times asking after each; every
/// answer must be `name` and every rebind move to another port.
fn wander(
    client: &Netns,
    vip: SocketAddr,
    server: &QuicServer,
    name: &str,
    rebinds: usize,
) -> anyhow::Result<Moves> {
    let mut quic = QuicClient::connect(client, vip, &[server.cert().clone()])?;
    let mut addrs = vec![quic.local_addr()?];
    ensure!(quic.ask()? == name, "the first answer is not {name}'s");
    for round in 1..=rebinds {
        let addr = quic.rebind()?;
        let before = addrs.last().copied();
        ensure!(
            before.map(|b| b.port()) != Some(addr.port()),
            "rebind {round} kept the port of {before:?}"
        );
        addrs.push(addr);
        let answer = quic
            .ask()
            .with_context(|| format!("after rebind {round}"))?;
        ensure!(answer == name, "after rebind {round}, {answer} answered");
    }
    Ok(Moves {
        addrs,
        retired: quic.retired_cids(),
    })
}

/// `CLIENTS` clients wander at once; the server must have answered each
/// from every port it used, and issued only CIDs of its scheme.
fn clients_keep_their_server(
    server_ns: &Netns,
    client_ns: &Netns,
    vip: SocketAddr,
    cids: CidScheme,
) -> anyhow::Result<()> {
    let name = format!("quic-{}", if vip.is_ipv4() { "v4" } else { "v6" });
    let server = QuicServer::start(server_ns, vip, &name, cids.clone())?;
    let moves = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..CLIENTS)
            .map(|_| scope.spawn(|| wander(client_ns, vip, &server, &name, REBINDS)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a client thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;

    let client_ip: IpAddr = if vip.is_ipv4() {
        "198.18.200.2".parse()?
    } else {
        "2001:2:0:200::2".parse()?
    };
    let answered: BTreeSet<SocketAddr> = server.answered_from().into_iter().collect();
    for (index, moved) in moves.iter().enumerate() {
        for addr in &moved.addrs {
            let seen = SocketAddr::new(client_ip, addr.port());
            ensure!(
                answered.contains(&seen),
                "client {index}: the server never answered {seen}; it answered {answered:?}"
            );
        }
        ensure!(
            moved.retired >= REBINDS as u64,
            "client {index} retired {} server CIDs in {REBINDS} rebinds",
            moved.retired
        );
    }

    let issued = server.issued_cids();
    // The handshake's CID and at least one replacement for each retired.
    ensure!(
        issued.len() >= CLIENTS * (1 + REBINDS),
        "{} CIDs issued to {CLIENTS} clients that rebound {REBINDS} times each",
        issued.len()
    );
    if let CidScheme::ServerId(layout) = &cids {
        for cid in &issued {
            ensure!(
                layout.carries(cid),
                "issued CID {cid:02x?} does not carry server ID {:02x?}",
                layout.server_id()
            );
        }
    }
    let distinct: BTreeSet<_> = issued.iter().collect();
    ensure!(distinct.len() == issued.len(), "a CID was issued twice");
    eprintln!(
        "{vip} ({cids:?}): {CLIENTS} clients, {} answers, {} CIDs issued, retired per client {:?}",
        server.answered_from().len(),
        issued.len(),
        moves.iter().map(|m| m.retired).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn quic_clients_keep_their_server_across_rebinds() {
    require_root();
    let id = format!("fq{}", std::process::id());
    let run = || -> anyhow::Result<()> {
        let server_ns = Netns::create(&format!("{id}-srv"))?;
        let client_ns = Netns::create(&format!("{id}-cli"))?;
        wire(&server_ns, &client_ns)?;
        let layout = ServerIdCids::new(0, &[0xc4, 0x60, 0x5e], 8)?;
        for vip in [
            SocketAddr::new(VIP4.into(), QUIC_PORT),
            SocketAddr::new(VIP6.into(), QUIC_PORT),
        ] {
            clients_keep_their_server(
                &server_ns,
                &client_ns,
                vip,
                CidScheme::ServerId(layout.clone()),
            )?;
        }
        // The control case's server: random CIDs, as an unmodified one.
        clients_keep_their_server(
            &server_ns,
            &client_ns,
            SocketAddr::new(VIP4.into(), QUIC_PORT),
            CidScheme::Random(8),
        )
    };
    if let Err(err) = run() {
        panic!("{err:#}");
    }
}
