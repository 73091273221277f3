//! Encapsulation as a table of frames, run through the real XDP program
//! with BPF_PROG_TEST_RUN: IP in IP (4in4, 6in6, 6in4, 4in6) and GUE, with
//! IPv4 options and VLAN tags; the too-big answers; ICMP errors quoting a
//! VIP's flow, sent to the flow's backend. Each case names the exact output
//! bytes, built here independently of the data plane's code (outer
//! checksums are summed over the whole packet, the UDP one included).

use lb_common::{
    flow_hash::{flow_hash, mix64},
    maps::{FlowKey, Reason, TRACE_SNAP_MAX},
};
use lb_tests::{
    fixture::{
        ENCAP_CONFIG, Fixture, TEST_SEED, capture_problems, run_problems, test_run, xdp_action,
        xdp_program,
    },
    packet::{Frame, LB_MAC, ROUTER_MAC, internet_checksum, tcp_flags::*},
};
use lb_userspace::{config::Forwarding, dataplane::state::ip_bytes};

/// The MTU the config gives.
const MTU: usize = 1500;

/// What must happen to a case's frame.
enum Expect {
    /// Encapsulated to the backend the table gives the flow (for an ICMP
    /// error, the flow it quotes), out with `XDP_TX`.
    Encapsulated,
    /// For an L2 DSR VIP: the MACs rewritten (an ICMP error's flow).
    Rewritten,
    /// Answered with a too-big error advertising this MTU.
    TooBig(u16),
    /// `XDP_PASS` or `XDP_DROP` under this reason, untouched.
    Verdict(u32, Reason),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    /// The flow the frame belongs to, as the VIP received it.
    flow: FlowKey,
    expect: Expect,
}

fn case(name: &'static str, frame: Frame, expect: Expect) -> Case {
    Case {
        name,
        input: frame.bytes(),
        flow: frame.flow(),
        expect,
    }
}

/// An ICMP (`icmp6`: ICMPv6) error of `kind`/`code` from a router at
/// `router` to the VIP, quoting the start of `quoted` (a packet the VIP
/// sent), with a correct checksum.
fn icmp_error(router: &str, quoted: &Frame, kind: u8, code: u8, mtu: u32) -> Case {
    let key = quoted.flow();
    let vip = lb_userspace::dataplane::state::ip_from(&key.src_addr, key.family);
    icmp_error_to(router, vip, quoted, kind, code, mtu)
}

/// The same error, sent to `to` (the VIP, or this host's own address).
fn icmp_error_to(
    router: &str,
    to: std::net::IpAddr,
    quoted: &Frame,
    kind: u8,
    code: u8,
    mtu: u32,
) -> Case {
    let quoted_bytes = quoted.bytes();
    let start = 14;
    let quote = &quoted_bytes[start..(start + 60).min(quoted_bytes.len())];
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&mtu.to_be_bytes());
    message.extend_from_slice(quote);
    let key = quoted.flow();
    let v6 = key.family == lb_common::maps::FAMILY_IPV6;
    let sum = if v6 {
        let mut pseudo = router
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        pseudo.extend_from_slice(&ip_bytes(to).0);
        pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        internet_checksum(&[&pseudo, &message])
    } else {
        internet_checksum(&[&message])
    };
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    let (proto, src, dst) = if v6 {
        (58, format!("[{router}]:0"), format!("[{to}]:0"))
    } else {
        (1, format!("{router}:0"), format!("{to}:0"))
    };
    let frame = Frame::other(&src, &dst, proto, &message);
    // The flow, as the VIP received it: the quote reversed.
    let flow = FlowKey {
        src_addr: key.dst_addr,
        dst_addr: key.src_addr,
        src_port: key.dst_port,
        dst_port: key.src_port,
        ..key
    };
    Case {
        name: "",
        input: frame.bytes(),
        flow,
        expect: Expect::Encapsulated,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let big = vec![0x5a; MTU - 40];
    let mut cases = vec![
        case(
            "4in4: TCP SYN",
            Frame::tcp("198.18.2.1:40000", "198.18.0.110:80", SYN),
            Encapsulated,
        ),
        case(
            "4in4: TCP data with a payload",
            Frame::tcp("198.18.2.1:40001", "198.18.0.110:80", ACK | PSH).payload(b"GET /"),
            Encapsulated,
        ),
        case(
            "4in4: IPv4 options travel inside",
            Frame::tcp("198.18.2.1:40002", "198.18.0.110:80", SYN)
                .ipv4_options(&[0x94, 0x04, 0, 0]),
            Encapsulated,
        ),
        case(
            "4in4: a VLAN tag stays on the outer frame",
            Frame::tcp("198.18.2.1:40003", "198.18.0.110:80", SYN).vlan(0x8100, 42),
            Encapsulated,
        ),
        case(
            "6in6: TCP SYN",
            Frame::tcp("[2001:2::2:1]:40000", "[2001:2::110]:80", SYN),
            Encapsulated,
        ),
        case(
            "6in4: IPv6 VIP, IPv4 backends",
            Frame::tcp("[2001:2::2:1]:40000", "[2001:2::111]:80", SYN).payload(b"x"),
            Encapsulated,
        ),
        case(
            "4in6: IPv4 VIP, IPv6 backends",
            Frame::tcp("198.18.2.1:40000", "198.18.0.111:80", SYN),
            Encapsulated,
        ),
        case(
            "GUE in IPv4: UDP",
            Frame::udp("198.18.2.1:5000", "198.18.0.112:53").payload(b"query"),
            Encapsulated,
        ),
        case(
            "GUE in IPv6: TCP, UDP checksum from the inner one",
            Frame::tcp("[2001:2::2:1]:40000", "[2001:2::112]:80", ACK).payload(b"odd"),
            Encapsulated,
        ),
        case(
            "GUE in IPv6: IPv4 UDP inside",
            Frame::udp("198.18.2.1:5000", "198.18.0.112:54").payload(b"four"),
            Encapsulated,
        ),
        case(
            "GUE in IPv6: IPv4 UDP without a checksum inside",
            Frame::udp("198.18.2.1:5001", "198.18.0.112:54").payload(b"four"),
            Encapsulated,
        ),
        case(
            "4in4: too big with DF: fragmentation needed, MTU 1480",
            Frame::tcp("198.18.2.1:40010", "198.18.0.110:80", ACK)
                .ipv4_frag(0x4000)
                .payload(&big),
            TooBig(1480),
        ),
        case(
            "4in6: too big with DF: fragmentation needed, MTU 1460",
            Frame::tcp("198.18.2.1:40011", "198.18.0.111:80", ACK)
                .ipv4_frag(0x4000)
                .payload(&big),
            TooBig(1460),
        ),
        case(
            "4in4: too big without DF: dropped",
            Frame::tcp("198.18.2.1:40012", "198.18.0.110:80", ACK).payload(&big),
            Verdict(xdp_action::DROP, Reason::DropTooBig),
        ),
        case(
            "6in6: too big: packet too big, MTU 1460",
            Frame::tcp("[2001:2::2:1]:40013", "[2001:2::110]:80", ACK).payload(&big[40..]),
            TooBig(1460),
        ),
        case(
            "4in4: one byte under the MTU once encapsulated",
            Frame::tcp("198.18.2.1:40014", "198.18.0.110:80", ACK)
                .ipv4_frag(0x4000)
                .payload(&big[..MTU - 60]),
            Encapsulated,
        ),
        case(
            "ICMP echo to a VIP passes",
            Frame::other(
                "198.18.2.1:0",
                "198.18.0.110:0",
                1,
                &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
            ),
            Verdict(xdp_action::PASS, Reason::PassOtherProtocol),
        ),
    ];
    // A frame whose IP length claims more than it holds.
    let mut short = case(
        "4in4: IP length beyond the frame: dropped",
        Frame::tcp("198.18.2.1:40020", "198.18.0.110:80", ACK).payload(b"0123456789"),
        Verdict(xdp_action::DROP, Reason::DropTruncated),
    );
    short.input.truncate(short.input.len() - 4);
    cases.push(short);
    let from_vip = |vip: &str, client: &str| Frame::tcp(vip, client, ACK).payload(b"reply");
    for (name, mut error, expect) in [
        (
            "ICMP fragmentation needed about a 4in4 flow goes to its backend",
            icmp_error(
                "198.18.9.1",
                &from_vip("198.18.0.110:80", "198.18.2.1:40000"),
                3,
                4,
                1400,
            ),
            Encapsulated,
        ),
        (
            "ICMP time exceeded about a 4in6 flow goes to its backend",
            icmp_error(
                "198.18.9.1",
                &from_vip("198.18.0.111:80", "198.18.2.7:41000"),
                11,
                0,
                0,
            ),
            Encapsulated,
        ),
        (
            "ICMPv6 packet too big about a 6in6 flow goes to its backend",
            icmp_error(
                "2001:2::9:1",
                &from_vip("[2001:2::110]:80", "[2001:2::2:1]:40000"),
                2,
                0,
                1400,
            ),
            Encapsulated,
        ),
        (
            "ICMP fragmentation needed about an L2 DSR flow goes to its backend",
            icmp_error(
                "198.18.9.1",
                &from_vip("198.18.0.113:80", "198.18.2.1:40000"),
                3,
                4,
                1400,
            ),
            Rewritten,
        ),
        (
            "ICMP fragmentation needed about another host's flow passes",
            icmp_error(
                "198.18.9.1",
                &from_vip("198.18.0.200:80", "198.18.2.1:40000"),
                3,
                4,
                1400,
            ),
            Verdict(xdp_action::PASS, Reason::PassNotVip),
        ),
        (
            "ICMP error about an L2 DSR VIP flow, sent to this host's own address, passes",
            icmp_error_to(
                "198.18.9.1",
                "198.18.0.2".parse().expect("address"),
                &from_vip("198.18.0.113:80", "198.18.2.1:40000"),
                3,
                4,
                1400,
            ),
            Verdict(xdp_action::PASS, Reason::PassOtherProtocol),
        ),
        (
            "ICMPv6 error about a 6in6 VIP flow, sent to this host's own address, passes",
            icmp_error_to(
                "2001:2::9:1",
                "2001:2::2".parse().expect("address"),
                &from_vip("[2001:2::110]:80", "[2001:2::2:1]:40000"),
                2,
                0,
                1400,
            ),
            Verdict(xdp_action::PASS, Reason::PassOtherProtocol),
        ),
        (
            "ICMP error quoting a later IPv4 fragment (no ports) passes",
            icmp_error(
                "198.18.9.1",
                &from_vip("198.18.0.113:80", "198.18.2.1:40000").ipv4_frag(185),
                11,
                1,
                0,
            ),
            Verdict(xdp_action::PASS, Reason::PassFragment),
        ),
    ] {
        error.name = name;
        error.expect = expect;
        cases.push(error);
    }
    cases
}

/// Where the frame's IP header starts (after at most one VLAN tag).
fn l3_of(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// The expected encapsulation of `input` for `flow`, by the rules the
/// docs/encapsulation.md documents: outer source = prefix | hash bits, flow label and GUE
/// port from the hash, DF set, TTL 64, the inner DSCP/ECN copied.
fn encapsulated(fixture: &Fixture, input: &[u8], flow: &FlowKey) -> Vec<u8> {
    let vip = fixture.state.vip_for(flow).expect("a VIP");
    let backend = fixture
        .state
        .backend_for(flow, &TEST_SEED)
        .expect("a backend");
    let l3 = l3_of(input);
    let inner = &input[l3..];
    let (inner_len, tos, carried) = if inner[0] >> 4 == 4 {
        (
            usize::from(u16::from_be_bytes([inner[2], inner[3]])),
            inner[1],
            4u8,
        )
    } else {
        let len = usize::from(u16::from_be_bytes([inner[4], inner[5]])) + 40;
        (len, (inner[0] << 4) | (inner[1] >> 4), 41u8)
    };
    let inner = &inner[..inner_len];
    let entropy = mix64(flow_hash(flow, &TEST_SEED));
    let gue = vip.forwarding == Forwarding::Gue;
    let (mut tail, next) = if gue {
        (vec![0u8; 12], 17u8)
    } else {
        (Vec::new(), carried)
    };
    let payload_len = tail.len() + inner.len();
    let mut outer = Vec::new();
    let (ether_type, pseudo) = match backend.addr.ip() {
        std::net::IpAddr::V4(dst) => {
            let src = [198, 18, 64, entropy as u8];
            let mut ip = vec![0x45, tos, 0, 0, 0, 0, 0x40, 0, 64, next, 0, 0];
            ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&dst.octets());
            let sum = internet_checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            outer = ip;
            (0x0800u16, None)
        }
        std::net::IpAddr::V6(dst) => {
            let mut src = [0x20, 1, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0];
            src[8..].copy_from_slice(&entropy.to_be_bytes());
            let label = match (entropy >> 32) as u32 & 0xf_ffff {
                0 => 1,
                label => label,
            };
            outer.push(0x60 | (tos >> 4));
            outer.push((tos << 4) | (label >> 16) as u8);
            outer.extend_from_slice(&(label as u16).to_be_bytes());
            outer.extend_from_slice(&(payload_len as u16).to_be_bytes());
            outer.extend_from_slice(&[next, 64]);
            outer.extend_from_slice(&src);
            outer.extend_from_slice(&dst.octets());
            let mut pseudo = src.to_vec();
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(payload_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            (0x86ddu16, Some(pseudo))
        }
    };
    if gue {
        let sport = 0xc000 | ((entropy >> 16) as u16 & 0x3fff);
        tail[0..2].copy_from_slice(&sport.to_be_bytes());
        tail[2..4].copy_from_slice(&6080u16.to_be_bytes());
        tail[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        tail[9] = carried;
        // A UDP checksum over IPv6 (summed here over every byte), none
        // over IPv4, and none for an inner IPv4 UDP datagram without one.
        let inner_udp_unchecked = inner[0] >> 4 == 4 && inner[9] == 17 && inner[26..28] == [0, 0];
        if let Some(pseudo) = pseudo.filter(|_| !inner_udp_unchecked) {
            let sum = match internet_checksum(&[&pseudo, &tail, inner]) {
                0 => 0xffff,
                sum => sum,
            };
            tail[6..8].copy_from_slice(&sum.to_be_bytes());
        }
    }
    let mut frame = backend.mac.0.to_vec();
    frame.extend_from_slice(&LB_MAC);
    if l3 == 18 {
        frame.extend_from_slice(&input[12..16]);
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(&outer);
    frame.extend_from_slice(&tail);
    frame.extend_from_slice(inner);
    frame
}

/// The expected too-big answer to `input`, advertising `mtu`.
fn too_big(input: &[u8], mtu: u16) -> Vec<u8> {
    let l3 = l3_of(input);
    let inner = &input[l3..];
    let mut frame = ROUTER_MAC.to_vec();
    frame.extend_from_slice(&LB_MAC);
    if inner[0] >> 4 == 4 {
        let quote = &inner[..84];
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&mtu.to_be_bytes());
        icmp.extend_from_slice(quote);
        let sum = internet_checksum(&[&icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 112, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&inner[16..20]);
        ip.extend_from_slice(&inner[12..16]);
        let sum = internet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&icmp);
    } else {
        let quote = &inner[..248];
        let mut icmp = vec![2, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&mtu.to_be_bytes());
        icmp.extend_from_slice(quote);
        let (src, dst) = (&inner[24..40], &inner[8..24]);
        let mut pseudo = [src, dst].concat();
        pseudo.extend_from_slice(&256u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let sum = internet_checksum(&[&pseudo, &icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0x01, 0x00, 58, 64]);
        frame.extend_from_slice(src);
        frame.extend_from_slice(dst);
        frame.extend_from_slice(&icmp);
    }
    frame
}

/// Checks one case; returns every way it went wrong.
fn check(fixture: &mut Fixture, case: &Case) -> Vec<String> {
    let before = fixture.snapshot();
    let run = match fixture.run(&case.input) {
        Ok(run) => run,
        Err(err) => return vec![format!("BPF_PROG_TEST_RUN failed: {err}")],
    };
    let after = fixture.snapshot();
    let (action, verdict, output) = match case.expect {
        Expect::Encapsulated => (
            xdp_action::TX,
            Reason::Tx,
            encapsulated(fixture, &case.input, &case.flow),
        ),
        Expect::Rewritten => {
            let backend = fixture
                .state
                .backend_for(&case.flow, &TEST_SEED)
                .expect("a backend");
            let mut output = case.input.clone();
            output[..6].copy_from_slice(&backend.mac.0);
            output[6..12].copy_from_slice(&LB_MAC);
            (xdp_action::TX, Reason::Tx, output)
        }
        Expect::TooBig(mtu) => (xdp_action::TX, Reason::TxTooBig, too_big(&case.input, mtu)),
        Expect::Verdict(action, reason) => (action, reason, case.input.clone()),
    };
    let mut problems = run_problems(&run, (&before, &after), (action, verdict), &output);
    let ip = &case.input[l3_of(&case.input)..];
    let icmp = if ip[0] >> 4 == 4 {
        ip[9] == 1
    } else {
        ip[6] == 58
    };
    if icmp && verdict == Reason::Tx {
        if after.reason_delta(&before, Reason::IcmpToBackend) != 1 {
            problems.push("icmp_to_backend did not move".into());
        }
        if after.reason_delta(&before, Reason::ConnInsert) != 0 {
            problems.push("an ICMP error was tracked as a flow".into());
        }
    }
    problems
}

/// Runs every case through `problems`; fails listing what went wrong.
fn check_all(fixture: &mut Fixture, mut problems: impl FnMut(&mut Fixture, &Case) -> Vec<String>) {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        for problem in problems(fixture, case) {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn encapsulation_cases() {
    check_all(&mut Fixture::with_config(ENCAP_CONFIG), check);
}

#[test]
fn a_traced_packet_carries_its_bytes_as_they_left_encapsulated_or_not() {
    let mut fixture = Fixture::with_config(ENCAP_CONFIG);
    let mut events = fixture.trace_everything(TRACE_SNAP_MAX);
    check_all(&mut fixture, |fixture, case| {
        match fixture.run(&case.input) {
            Ok(run) => capture_problems(&events.drain(), &run.output),
            Err(err) => vec![format!("BPF_PROG_TEST_RUN failed: {err}")],
        }
    });
}

#[test]
fn established_flows_keep_their_outer_header() {
    let mut fixture = Fixture::with_config(ENCAP_CONFIG);
    let syn = Frame::tcp("[2001:2::2:50]:45000", "[2001:2::111]:80", SYN);
    let ack = Frame::tcp("[2001:2::2:50]:45000", "[2001:2::111]:80", ACK);
    let first = fixture.run(&syn.bytes()).expect("runs");
    let before = fixture.snapshot();
    let second = fixture.run(&ack.bytes()).expect("runs");
    let after = fixture.snapshot();
    assert_eq!(first.action, xdp_action::TX);
    assert_eq!(second.action, xdp_action::TX);
    assert_eq!(
        after.reason_delta(&before, Reason::ConnHit),
        1,
        "the ACK hit its entry"
    );
    // The same backend and the same outer header (6in4: source, length,
    // checksum): only the inner TCP header differs (its acknowledgement
    // number, flags and checksum).
    let tcp = 14 + 20 + 40;
    assert_eq!(
        first.output[..tcp],
        second.output[..tcp],
        "outer headers differ"
    );
    let differing: Vec<usize> = (tcp..first.output.len())
        .filter(|&i| first.output[i] != second.output[i])
        .map(|i| i - tcp)
        .collect();
    assert!(
        differing
            .iter()
            .all(|i| (8..12).contains(i) || *i == 13 || (16..18).contains(i)),
        "TCP bytes {differing:?} differ"
    );
}

/// The decapsulation program, loaded for `addresses` and GUE port 6080.
fn decapsulator(addresses: &[&str]) -> aya::Ebpf {
    lb_tests::fixture::require_root();
    let addresses: Vec<std::net::IpAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
    let config = lb_userspace::dataplane::decap::settings(&addresses, 6080).expect("settings");
    let mut ebpf = aya::Ebpf::load(lb_userspace::DECAP_OBJECT).expect("decap object loads");
    let mut settings: aya::maps::Array<_, lb_common::maps::DecapConfig> =
        aya::maps::Array::try_from(ebpf.map_mut("DECAP_CONFIG").expect("settings map"))
            .expect("an array");
    settings.set(0, config, 0).expect("settings written");
    xdp_program(&mut ebpf, "fulcrum_decap")
        .expect("program")
        .load()
        .expect("the decapsulation program verifies");
    ebpf
}

/// The decapsulation program's counter `reason`.
fn decap_count(ebpf: &aya::Ebpf, reason: lb_common::maps::DecapReason) -> u64 {
    let stats: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(ebpf.map("DECAP_STATS").expect("counters"))
            .expect("a per-CPU array");
    stats
        .get(&(reason as u32), 0)
        .expect("counter")
        .iter()
        .sum()
}

#[test]
fn decapsulation_gives_back_what_was_encapsulated() {
    use lb_common::maps::DecapReason;
    let mut fixture = Fixture::with_config(ENCAP_CONFIG);
    let backends = [
        "198.18.5.1",
        "198.18.5.2",
        "198.18.5.3",
        "198.18.5.4",
        "198.18.5.5",
        "198.18.5.6",
        "2001:2:0:5::1",
        "2001:2:0:5::2",
        "2001:2:0:5::3",
        "2001:2:0:5::4",
        "2001:2:0:5::5",
        "2001:2:0:5::6",
        "2001:2:0:5::7",
        "2001:2:0:5::8",
    ];
    let mut all = decapsulator(&backends[..]);
    let mut failures = Vec::new();
    let mut decapsulated = 0;
    for case in cases()
        .iter()
        .filter(|c| matches!(c.expect, Expect::Encapsulated))
    {
        let sent = fixture.run(&case.input).expect("runs");
        if sent.action != xdp_action::TX {
            continue;
        }
        let before = decap_count(&all, DecapReason::Decapsulated);
        let program = xdp_program(&mut all, "fulcrum_decap").expect("program");
        let got = test_run(program, &sent.output, 1).expect("runs");
        // The packet as the client sent it, behind the tunnelled frame's
        // MACs (a VLAN tag stays).
        let mut want = sent.output[..12].to_vec();
        want.extend_from_slice(&case.input[12..]);
        if got.action != xdp_action::PASS || got.output != want {
            failures.push(format!(
                "{}: {} to {:02x?}",
                case.name,
                xdp_action::name(got.action),
                &got.output[..got.output.len().min(40)]
            ));
        }
        if decap_count(&all, DecapReason::Decapsulated) != before + 1 {
            failures.push(format!("{}: not counted as decapsulated", case.name));
        }
        decapsulated += 1;
    }
    assert!(
        decapsulated >= 10,
        "only {decapsulated} cases reached the decapsulator"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Another host's tunnel, plain traffic and outer fragments pass untouched.
    let mut other = decapsulator(&["198.18.5.200", "2001:2:0:5::200"]);
    let tunnelled = fixture
        .run(&Frame::tcp("198.18.2.1:40000", "198.18.0.110:80", SYN).bytes())
        .expect("runs")
        .output;
    let mut fragment = tunnelled.clone();
    fragment[14 + 6] |= 0x20;
    let plain = Frame::tcp("198.18.2.1:40000", "198.18.5.1:22", SYN).bytes();
    let untouched = |ebpf: &mut aya::Ebpf, name: &str, input: Vec<u8>, reason: DecapReason| {
        let before = decap_count(ebpf, reason);
        let program = xdp_program(ebpf, "fulcrum_decap").expect("program");
        let got = test_run(program, &input, 1).expect("runs");
        assert_eq!(got.action, xdp_action::PASS, "{name}");
        assert_eq!(got.output, input, "{name}: untouched");
        assert_eq!(
            decap_count(ebpf, reason),
            before + 1,
            "{name}: counted as {}",
            reason.name()
        );
    };
    untouched(
        &mut other,
        "another host's tunnel",
        tunnelled.clone(),
        DecapReason::PassNotOurs,
    );
    untouched(&mut all, "plain TCP", plain, DecapReason::PassNotTunnel);
    untouched(
        &mut all,
        "an outer fragment",
        fragment,
        DecapReason::PassFragment,
    );
    let program = xdp_program(&mut all, "fulcrum_decap").expect("program");
    let cut = test_run(program, &tunnelled[..14 + 20 + 10], 1).expect("runs");
    assert_eq!(
        cut.action,
        xdp_action::PASS,
        "a cut inner packet is the stack's to drop"
    );
}
