//! `fulcrum trace` end to end: the daemon streams the data plane's
//! decisions for one VIP while real connections run, each event names the
//! backend the client saw and `fulcrum explain` predicts, and the session
//! ends (tracing off) when the client stops reading. With `--pcap`, the
//! packets themselves as they left, MACs rewritten towards the backend,
//! readable by tcpdump and a pcapng parser, each with its decision as its
//! comment, and streamed packet by packet through a pipe.

use std::{
    collections::HashMap,
    io::BufRead as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_tests::{
    lab::{BackendSpec, Lab, TCP_PORT, VIP4},
    scratch::Scratch,
    traffic::Session,
};
use pcap_file::{
    DataLink,
    pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption},
};
use serde_json::Value;

/// Events asked for.
const COUNT: usize = 20;

/// Packets `--pcap` is asked for.
const CAPTURED: usize = 12;

/// `--pcap`'s snap length unless told.
const SNAP_LEN: usize = 128;

#[test]
fn a_trace_of_one_vip_shows_what_the_clients_saw() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let web4 = SocketAddr::new(VIP4.into(), TCP_PORT);
    let (events, sessions) = std::thread::scope(|scope| {
        let trace = scope.spawn(|| {
            lab.cli(&[
                "trace",
                "--vip",
                "web4",
                "--count",
                &COUNT.to_string(),
                "--format",
                "json",
            ])
        });
        // The traffic starts once the session is open.
        await_log(&lab, "trace: session 1 on");
        // UDP to another VIP meanwhile: not traced.
        let _ = lb_tests::traffic::udp_flows(
            lab.client(),
            SocketAddr::new(VIP4.into(), lb_tests::lab::UDP_PORT),
            20,
            30000,
        );
        let sessions = connect(&lab, web4, COUNT);
        let (code, stdout, stderr) = trace.join().expect("trace thread").expect("fulcrum trace");
        assert_eq!(code, 0, "fulcrum trace: {stderr}");
        (stdout, sessions)
    });
    let events: Vec<Value> = events
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), COUNT, "{events:#?}");
    for event in &events {
        assert_eq!(event["vip"], "web4", "{event}");
        assert_eq!(event["action"], "tx", "{event}");
        let source = event["source"].as_str().expect("a source");
        let seen = sessions
            .get(&source.parse::<SocketAddr>().expect("an address"))
            .unwrap_or_else(|| panic!("no client connection from {source}: {event}"));
        assert_eq!(event["backend"].as_str(), Some(seen.as_str()), "{event}");
        let (code, explained, stderr) = lab
            .cli(&[
                "explain",
                "tcp",
                source,
                &web4.to_string(),
                "--format",
                "json",
            ])
            .expect("fulcrum explain");
        assert_eq!(code, 0, "{stderr}");
        let explained: Value = serde_json::from_str(&explained).expect("explain's JSON");
        assert_eq!(
            explained["backend"], event["backend"],
            "{event} vs {explained}"
        );
        let via = event["via"].as_str().expect("via");
        assert!(via == "table" || via == "connection-table", "{event}");
    }
    // The client went: the daemon closes the session and turns tracing off.
    await_log(&lab, "trace: session 1 off");

    // A client killed mid-stream (as a crash would): the same, within the
    // second the daemon takes to notice.
    let mut client = Command::new(lb_tests::lab::fulcrum_binary().expect("fulcrum"))
        .args(["trace", "--socket"])
        .arg(lab.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fulcrum trace starts");
    await_log(&lab, "trace: session 2 on");
    client.kill().expect("kill the client we started");
    client.wait().expect("reaped");
    await_log(&lab, "trace: session 2 off");
}

#[test]
fn a_trace_to_pcapng_holds_each_packet_as_it_left_with_its_decision() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let web4 = SocketAddr::new(VIP4.into(), TCP_PORT);
    let scratch = Scratch::new("trace-pcap");
    let file = scratch.0.join("trace.pcapng");
    let file = file.to_str().expect("a UTF-8 path");
    let started = SystemTime::now();
    let sessions = std::thread::scope(|scope| {
        let trace = scope.spawn(|| {
            let count = CAPTURED.to_string();
            lab.cli(&["trace", "--vip", "web4", "--count", &count, "--pcap", file])
        });
        await_log(&lab, "trace: session 1 on");
        let sessions = connect(&lab, web4, CAPTURED);
        let (code, stdout, stderr) = trace.join().expect("trace thread").expect("fulcrum trace");
        assert_eq!(code, 0, "fulcrum trace: {stderr}");
        // With a file, the text trace still goes to stdout.
        assert_eq!(stdout.lines().count(), CAPTURED, "{stdout}");
        sessions
    });
    let ended = SystemTime::now();
    let lb_mac = lab.lb().mac("eth0").expect("the load balancer's MAC");
    let backend_macs: HashMap<String, String> = (0..3)
        .map(|i| {
            let mac = lab.backend_host(i).0.mac("eth0").expect("a backend's MAC");
            (format!("b{}", i + 1), mac)
        })
        .collect();
    let backend_of = |source: SocketAddr| -> &String {
        sessions
            .get(&source)
            .unwrap_or_else(|| panic!("no client connection from {source}"))
    };

    // tcpdump reads it: the clients' packets to the VIP, sent by the load
    // balancer to the backend each client's answer came from.
    let output = Command::new("tcpdump")
        .args(["-r", file, "-nn", "-e"])
        .output()
        .expect("tcpdump starts (`cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), CAPTURED, "{text}");
    for line in lines {
        let (macs, rest) = line
            .split_once(", ethertype IPv4")
            .unwrap_or_else(|| panic!("not an IPv4 frame: {line}"));
        let [_, source_mac, ">", destination_mac] = macs.split(' ').collect::<Vec<_>>()[..] else {
            panic!("no MACs in {line}");
        };
        let (source, destination) = rest
            .split(": ")
            .nth(1)
            .and_then(|flow| flow.split_once(" > "))
            .unwrap_or_else(|| panic!("no flow in {line}"));
        assert_eq!(destination, "198.18.100.1.80", "{line}");
        let (address, port) = source.rsplit_once('.').expect("ADDRESS.PORT");
        let source = SocketAddr::new(
            address.parse().expect("an address"),
            port.parse().expect("a port"),
        );
        let backend = backend_of(source);
        assert_eq!(source_mac, lb_mac, "rewritten by the load balancer: {line}");
        assert_eq!(
            destination_mac, backend_macs[backend],
            "towards {backend}, which answered: {line}"
        );
    }

    // A pcapng parser reads it: Ethernet at the snap length, each packet
    // on the wall clock, cut at the snap length, its comment the decision
    // for the backend that answered.
    let reader = std::fs::File::open(file).expect("the capture");
    let mut reader = PcapNgReader::new(reader).expect("a pcapng section");
    let mut packets = 0;
    while let Some(block) = reader.next_block() {
        let Block::EnhancedPacket(packet) = block.expect("a block") else {
            continue;
        };
        packets += 1;
        let bytes = &packet.data;
        assert_eq!(bytes.len(), SNAP_LEN.min(packet.original_len as usize));
        assert_eq!(&bytes[12..14], &[0x08, 0x00], "IPv4");
        let source = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(bytes[26], bytes[27], bytes[28], bytes[29])),
            u16::from_be_bytes([bytes[34], bytes[35]]),
        );
        let backend = backend_of(source);
        let comments: Vec<&str> = packet
            .options
            .iter()
            .filter_map(|option| match option {
                EnhancedPacketOption::Comment(text) => Some(text.as_ref()),
                _ => None,
            })
            .collect();
        let [comment] = comments[..] else {
            panic!("{} comments on the packet from {source}", comments.len());
        };
        let decision = format!("tcp {source} -> {web4}: tx tx; VIP web4 -> {backend} (");
        assert!(comment.starts_with(&decision), "{comment} vs {decision}");
        assert!(
            comment.ends_with("by its connection-table entry") || comment.contains("by table slot"),
            "{comment}"
        );
        let when = UNIX_EPOCH + packet.timestamp;
        let slack = Duration::from_secs(1);
        assert!(
            started - slack <= when && when <= ended + slack,
            "{when:?} outside the trace's {started:?} to {ended:?}"
        );
    }
    let interfaces = reader.interfaces();
    assert_eq!(interfaces.len(), 1, "{interfaces:?}");
    assert_eq!(
        (interfaces[0].linktype, interfaces[0].snaplen as usize),
        (DataLink::ETHERNET, SNAP_LEN)
    );
    assert_eq!(packets, CAPTURED);

    // `--pcap -` into a pipe: tcpdump sees each packet while the trace
    // still runs, and the client's end ends the session.
    let mut trace = Command::new(lb_tests::lab::fulcrum_binary().expect("fulcrum"))
        .args(["trace", "--vip", "web4", "--pcap", "-", "--socket"])
        .arg(lab.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fulcrum trace starts");
    let mut tcpdump = Command::new("tcpdump")
        .args(["-l", "-nn", "-r", "-"])
        .stdin(trace.stdout.take().expect("the trace's stdout"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump starts");
    let (lines, read) = mpsc::channel();
    let tcpdump_out = tcpdump.stdout.take().expect("tcpdump's stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(tcpdump_out).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    await_log(&lab, "trace: session 2 on");
    let mut session = Session::open(lab.client(), web4).expect("a connection");
    session.ask().expect("an answer");
    let source = session.source().expect("source");
    let flow = format!("{}.{} > 198.18.100.1.80:", source.ip(), source.port());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = read
            .recv_timeout(left)
            .unwrap_or_else(|e| {
                panic!("tcpdump printed no packet of {flow} while the trace ran: {e}")
            })
            .expect("a line");
        if line.contains(&flow) {
            break;
        }
    }
    trace.kill().expect("kill the trace we started");
    trace.wait().expect("reaped");
    let status = tcpdump.wait().expect("tcpdump ends with its input");
    assert!(status.success(), "tcpdump: {status}");
    await_log(&lab, "trace: session 2 off");
}

/// Opens `count` connections to `vip`, each answered once; returns which
/// backend answered each client address.
fn connect(lab: &Lab, vip: SocketAddr, count: usize) -> HashMap<SocketAddr, String> {
    let mut sessions = HashMap::new();
    for _ in 0..count {
        let mut session = Session::open(lab.client(), vip).expect("a connection");
        session.ask().expect("an answer");
        let source = session.source().expect("source");
        sessions.insert(source, session.backend.clone());
    }
    sessions
}

/// Waits up to 5 s for a line of the daemon's log containing `text`.
fn await_log(lab: &Lab, text: &str) {
    if let Err(e) = lab.await_log(text, Duration::from_secs(5)) {
        panic!("{e:#}");
    }
}
