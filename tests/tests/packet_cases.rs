//! The data plane's behaviour as a table of frames: each case is a
//! description, an input frame, and what must happen to it — the XDP
//! action, the exact output bytes, and the counters it moves. Runs the real
//! XDP program in the kernel through BPF_PROG_TEST_RUN.

use lb_common::maps::{
    FlowKey, Reason, TABLE_HEADER_SLOTS, TRACE_SNAP_MAX, TRACE_VIA_TABLE, TraceControl,
};
use lb_tests::{
    fixture::{
        Fixture, Snapshot, TABLELESS_VIP, TEST_SEED, capture_problems, run_problems,
        trace_everything, xdp_action,
    },
    packet::{Frame, LB_MAC, tcp_flags::*},
};
use lb_userspace::dataplane::trace::TraceRecord;

/// What must happen to a case's frame.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// XDP_TX to the backend the lookup table gives this flow, MACs rewritten.
    Forward,
    /// XDP_PASS, untouched, counted under the reason.
    Pass(Reason),
    /// XDP_DROP, counted under the reason.
    Drop(Reason),
    /// BPF_PROG_TEST_RUN refuses the input (the kernel never delivers it).
    Refused,
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    frame: Option<Frame>,
    expect: Expect,
    /// Informational counters that must move by one.
    notes: &'static [Reason],
}

fn case(name: &'static str, frame: Frame, expect: Expect) -> Case {
    Case {
        name,
        input: frame.bytes(),
        frame: Some(frame),
        expect,
        notes: &[],
    }
}

fn raw(name: &'static str, input: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        input,
        frame: None,
        expect,
        notes: &[],
    }
}

fn truncated(name: &'static str, frame: Frame, len: usize, expect: Expect) -> Case {
    let mut input = frame.bytes();
    assert!(
        len < input.len(),
        "{name}: truncation must shorten the frame"
    );
    input.truncate(len);
    raw(name, input, expect)
}

/// A frame longer than its IP packet, as Ethernet pads short frames.
fn padded(name: &'static str, frame: Frame, pad: usize, expect: Expect) -> Case {
    let mut input = frame.bytes();
    input.resize(input.len() + pad, 0);
    Case {
        name,
        input,
        frame: Some(frame),
        expect,
        notes: &[],
    }
}

impl Case {
    fn noting(mut self, notes: &'static [Reason]) -> Self {
        self.notes = notes;
        self
    }
}

use Expect::*;

const WEB4: &str = "198.18.0.100:80";
const DNS4: &str = "198.18.0.100:53";
const WEB6: &str = "[2001:2::100]:80";
const DNS6: &str = "[2001:2::100]:53";
const ICMP_ECHO: &[u8] = &[8, 0, 0xf7, 0xff, 0, 0, 0, 0];

fn cases() -> Vec<Case> {
    let syn4 = |sport: u16| Frame::tcp(&format!("198.18.2.1:{sport}"), WEB4, SYN);
    vec![
        // Balanced traffic.
        case("IPv4 TCP SYN to a VIP", syn4(40000), Forward),
        case("IPv4 TCP SYN, another client port", syn4(40002), Forward),
        case(
            "IPv4 TCP SYN, another client",
            Frame::tcp("198.18.2.77:50000", WEB4, SYN),
            Forward,
        ),
        case(
            "IPv4 TCP ACK of an unknown flow hashes like a SYN",
            Frame::tcp("198.18.2.1:40100", WEB4, ACK | PSH).payload(b"GET / HTTP/1.1\r\n\r\n"),
            Forward,
        ),
        case(
            "IPv4 TCP FIN of an unknown flow",
            Frame::tcp("198.18.2.1:40102", WEB4, FIN | ACK),
            Forward,
        ),
        case(
            "IPv4 UDP to a VIP",
            Frame::udp("198.18.2.1:5000", DNS4).payload(b"query"),
            Forward,
        ),
        case(
            "IPv4 UDP with an empty payload",
            Frame::udp("198.18.2.1:5002", DNS4),
            Forward,
        ),
        case(
            "IPv6 TCP SYN to a VIP",
            Frame::tcp("[2001:2::2:1]:40000", WEB6, SYN),
            Forward,
        ),
        case(
            "IPv6 UDP to a VIP",
            Frame::udp("[2001:2::2:1]:5000", DNS6).payload(b"query"),
            Forward,
        ),
        case(
            "any-port VIP, port 443",
            Frame::tcp("198.18.2.1:40000", "198.18.0.101:443", SYN),
            Forward,
        ),
        case(
            "any-port VIP, port 22",
            Frame::tcp("198.18.2.1:40000", "198.18.0.101:22", SYN),
            Forward,
        ),
        case(
            "IPv4 DF set is not a fragment",
            syn4(40004).ipv4_frag(0x4000),
            Forward,
        ),
        case(
            "IPv4 with options (IHL 6)",
            syn4(40006).ipv4_options(&[1, 1, 1, 1]),
            Forward,
        )
        .noting(&[Reason::Ipv4Options]),
        case(
            "IPv4 with 40 bytes of options (IHL 15)",
            syn4(40008).ipv4_options(&[1; 40]),
            Forward,
        )
        .noting(&[Reason::Ipv4Options]),
        case(
            "802.1Q-tagged IPv4 TCP keeps its tag",
            syn4(40010).vlan(0x8100, 100),
            Forward,
        ),
        case(
            "802.1ad-tagged IPv6 UDP keeps its tag",
            Frame::udp("[2001:2::2:1]:5004", DNS6).vlan(0x88a8, 200),
            Forward,
        ),
        case(
            "standard maximum frame (1514 bytes)",
            Frame::udp("198.18.2.1:5006", DNS4).payload(&[0xab; 1514 - 42]),
            Forward,
        ),
        case(
            "one-page jumbo frame (3000 bytes)",
            Frame::udp("198.18.2.1:5008", DNS4).payload(&[0xcd; 3000 - 42]),
            Forward,
        ),
        // Not ours: passed untouched.
        case(
            "IPv4 to a VIP address on another port",
            Frame::tcp("198.18.2.1:40000", "198.18.0.100:81", SYN),
            Pass(Reason::PassNotVip),
        ),
        case(
            "IPv4 to a non-VIP address",
            Frame::tcp("198.18.2.1:40000", "198.18.0.200:80", SYN),
            Pass(Reason::PassNotVip),
        ),
        case(
            "UDP to a TCP-only any-port VIP",
            Frame::udp("198.18.2.1:5000", "198.18.0.101:443"),
            Pass(Reason::PassNotVip),
        ),
        case(
            "IPv6 to a non-VIP address",
            Frame::tcp("[2001:2::2:1]:40000", "[2001:2::200]:80", SYN),
            Pass(Reason::PassNotVip),
        ),
        raw(
            "ARP request (broadcast)",
            arp_request(),
            Pass(Reason::PassMulticast),
        ),
        raw(
            "ARP reply to this host",
            arp_reply(),
            Pass(Reason::PassNotIp),
        ),
        // Frames for other hosts: a switch floods a unicast frame whose
        // destination it has not learnt to every port, so several load
        // balancers on one segment get it; only the one it is for forwards.
        case(
            "SYN to a VIP, for another host's MAC",
            syn4(40040).dst_mac(OTHER_HOST_MAC),
            Pass(Reason::PassOtherHost),
        ),
        case(
            "IPv6 UDP to a VIP, for another host's MAC",
            Frame::udp("[2001:2::2:1]:5010", DNS6).dst_mac(OTHER_HOST_MAC),
            Pass(Reason::PassOtherHost),
        ),
        case(
            "SYN to a VIP in a broadcast frame",
            syn4(40042).dst_mac([0xff; 6]),
            Pass(Reason::PassMulticast),
        ),
        case(
            "IPv6 neighbour solicitation (multicast MAC)",
            Frame::other(
                "[2001:2::2:1]:0",
                "[ff02::1:ff00:100]:0",
                58,
                &[135, 0, 0, 0, 0, 0, 0, 0],
            )
            .dst_mac([0x33, 0x33, 0xff, 0, 1, 0]),
            Pass(Reason::PassMulticast),
        ),
        case(
            "ICMP echo to a VIP",
            Frame::other("198.18.2.1:0", "198.18.0.100:0", 1, ICMP_ECHO),
            Pass(Reason::PassOtherProtocol),
        ),
        case(
            "ICMPv6 echo to a VIP",
            Frame::other(
                "[2001:2::2:1]:0",
                "[2001:2::100]:0",
                58,
                &[128, 0, 0, 0, 0, 0, 0, 0],
            ),
            Pass(Reason::PassOtherProtocol),
        ),
        case(
            "SCTP to a VIP",
            Frame::other("198.18.2.1:0", "198.18.0.100:0", 132, &[0; 12]),
            Pass(Reason::PassOtherProtocol),
        ),
        case(
            "IPv4 first fragment (MF)",
            syn4(40012).ipv4_frag(0x2000),
            Pass(Reason::PassFragment),
        ),
        case(
            "IPv4 later fragment (offset 185)",
            syn4(40014).ipv4_frag(185),
            Pass(Reason::PassFragment),
        ),
        case(
            "IPv6 fragment header",
            Frame::udp("[2001:2::2:1]:5000", DNS6).ipv6_extension(44),
            Pass(Reason::PassFragment),
        ),
        case(
            "IPv6 hop-by-hop options header",
            Frame::udp("[2001:2::2:1]:5000", DNS6).ipv6_extension(0),
            Pass(Reason::PassUnsupported),
        ),
        case(
            "double-tagged (QinQ) frame",
            syn4(40016).vlan(0x88a8, 10).vlan(0x8100, 20),
            Pass(Reason::PassUnsupported),
        ),
        // Broken or unserviceable: dropped and counted.
        case(
            "IPv4 IHL below 5",
            syn4(40018).ipv4_vihl(0x44),
            Drop(Reason::DropMalformed),
        ),
        case(
            "IPv4 ethertype with version 6 inside",
            syn4(40020).ipv4_vihl(0x65),
            Drop(Reason::DropMalformed),
        ),
        case(
            "IPv6 ethertype with version 4 inside",
            Frame::tcp("[2001:2::2:1]:40000", WEB6, SYN).ipv6_version(4),
            Drop(Reason::DropMalformed),
        ),
        case(
            "VIP without a lookup table",
            Frame::tcp(
                "198.18.2.1:40000",
                &format!("{}:{}", TABLELESS_VIP.0, TABLELESS_VIP.1),
                SYN,
            ),
            Drop(Reason::DropNoBackend),
        ),
        truncated(
            "truncated inside the VLAN tag",
            syn4(40022).vlan(0x8100, 100),
            16,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "Ethernet header only, IPv4 ethertype",
            syn4(40024),
            14,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "truncated IPv4 header",
            syn4(40026),
            14 + 19,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "IPv4 options run past the frame",
            syn4(40028).ipv4_options(&[1; 8]),
            14 + 24,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "truncated TCP header",
            syn4(40030),
            14 + 20 + 19,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "truncated UDP header",
            Frame::udp("198.18.2.1:5000", DNS4),
            14 + 20 + 7,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "truncated IPv6 header",
            Frame::tcp("[2001:2::2:1]:40000", WEB6, SYN),
            14 + 39,
            Drop(Reason::DropTruncated),
        ),
        truncated(
            "truncated TCP header after IPv6",
            Frame::tcp("[2001:2::2:1]:40000", WEB6, SYN),
            14 + 40 + 10,
            Drop(Reason::DropTruncated),
        ),
        // Length fields that disagree with the frame.
        padded(
            "IPv4 UDP in a frame padded past its IP length",
            Frame::udp("198.18.2.1:5012", DNS4),
            18,
            Forward,
        ),
        case(
            "IPv4 total length beyond the frame",
            syn4(40044).ip_length(41),
            Drop(Reason::DropTruncated),
        ),
        case(
            "IPv4 total length below its header",
            syn4(40046).ip_length(19),
            Drop(Reason::DropMalformed),
        ),
        case(
            "IPv4 total length that leaves no room for the TCP header",
            syn4(40048).ip_length(30),
            Drop(Reason::DropMalformed),
        ),
        case(
            "IPv6 payload length beyond the frame",
            Frame::tcp("[2001:2::2:1]:40000", WEB6, SYN).ip_length(21),
            Drop(Reason::DropTruncated),
        ),
        case(
            "TCP data offset below 5",
            syn4(40050).tcp_offset(4),
            Drop(Reason::DropMalformed),
        ),
        case(
            "TCP data offset past the packet",
            syn4(40052).tcp_offset(6),
            Drop(Reason::DropMalformed),
        ),
        case(
            "IPv6 TCP data offset 0",
            Frame::tcp("[2001:2::2:1]:40002", WEB6, SYN).tcp_offset(0),
            Drop(Reason::DropMalformed),
        ),
        case(
            "UDP length below 8",
            Frame::udp("198.18.2.1:5014", DNS4).udp_length(7),
            Drop(Reason::DropMalformed),
        ),
        case(
            "UDP length past the packet",
            Frame::udp("198.18.2.1:5016", DNS4)
                .payload(b"query")
                .udp_length(14),
            Drop(Reason::DropMalformed),
        ),
        case(
            "IPv6 UDP length past the packet",
            Frame::udp("[2001:2::2:1]:5018", DNS6).udp_length(9),
            Drop(Reason::DropMalformed),
        ),
        // Frames the kernel itself refuses to hand to XDP.
        raw("zero-length frame", Vec::new(), Refused),
        raw("13-byte runt", vec![0xff; 13], Refused),
    ]
}

/// Another load balancer's MAC on the same segment.
const OTHER_HOST_MAC: [u8; 6] = [0x02, 0xfc, 0, 0, 0, 2];

fn arp_reply() -> Vec<u8> {
    let mut frame = LB_MAC.to_vec();
    frame.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    frame.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 198, 18, 2, 1]);
    frame.extend_from_slice(&LB_MAC);
    frame.extend_from_slice(&[198, 18, 0, 100]);
    frame
}

fn arp_request() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 198, 18, 2, 1]);
    frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 100]);
    frame
}

/// Checks one case, given the SYNs sent so far (`syns`, which it extends:
/// a SYN again for one of them, unanswered, is a retry); returns a
/// description of every way it went wrong, and the frame as the program
/// left it (none if the kernel refused it).
fn check(
    fixture: &mut Fixture,
    case: &Case,
    syns: &mut Vec<FlowKey>,
) -> (Vec<String>, Option<Vec<u8>>) {
    let mut problems = Vec::new();
    let before = fixture.snapshot();
    let run = fixture.run(&case.input);
    let after = fixture.snapshot();
    let (action, verdict) = match case.expect {
        Forward => (xdp_action::TX, Reason::Tx),
        Pass(reason) => (xdp_action::PASS, reason),
        Drop(reason) => (xdp_action::DROP, reason),
        Refused => {
            if run.is_ok() {
                problems.push("the kernel accepted the frame".into());
            }
            if after != before {
                problems.push("counters moved for a refused frame".into());
            }
            return (problems, None);
        }
    };
    let run = match run {
        Ok(run) => run,
        Err(err) => return (vec![format!("BPF_PROG_TEST_RUN failed: {err}")], None),
    };
    for &note in case.notes {
        if after.reason_delta(&before, note) != 1 {
            problems.push(format!("counter {} did not move", note.name()));
        }
    }
    let mut expected_output = case.input.clone();
    let mut expected_traffic = Snapshot { ..before.clone() };
    if let Forward = case.expect {
        let flow = case
            .frame
            .as_ref()
            .expect("forward cases have a frame")
            .flow();
        let vip = fixture
            .state
            .vip_for(&flow)
            .expect("forward cases hit a VIP");
        let backend = fixture
            .state
            .backend_for(&flow, &TEST_SEED)
            .expect("the table has a backend for the flow");
        expected_output[..6].copy_from_slice(&backend.mac.0);
        expected_output[6..12].copy_from_slice(&LB_MAC);
        let len = case.input.len() as u64;
        let opens = case.frame.as_ref().is_some_and(Frame::opens);
        let retried = opens && syns.contains(&flow);
        if opens && !retried {
            syns.push(flow);
        }
        for counters in [
            expected_traffic.backends.get_mut(&backend.backend_id),
            expected_traffic.vips.get_mut(&vip.vip_id),
        ] {
            let counters = counters.expect("counters exist");
            counters.packets += 1;
            counters.bytes += len;
            counters.new_flows += 1;
            counters.syns += u64::from(opens && !retried);
            counters.syn_retries += u64::from(retried);
        }
        if after.reason_delta(&before, Reason::ConnMiss) != 1 {
            problems.push("a new flow did not count a connection-table miss".into());
        }
    }
    problems.extend(run_problems(
        &run,
        (&before, &after),
        (action, verdict),
        &expected_output,
    ));
    if after.backends != expected_traffic.backends {
        problems.push(format!(
            "backend counters: got {:?}, expected {:?}",
            after.backends, expected_traffic.backends
        ));
    }
    if after.vips != expected_traffic.vips {
        problems.push("VIP counters differ from the expected ones".into());
    }
    (problems, Some(run.output))
}

#[test]
fn packet_cases() {
    let mut fixture = Fixture::standard();
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "the table should cover at least 30 cases"
    );
    let mut failures = Vec::new();
    let mut syns = Vec::new();
    for case in &cases {
        let (problems, _) = check(&mut fixture, case, &mut syns);
        if !problems.is_empty() {
            failures.push(format!("{}:\n    {}", case.name, problems.join("\n    ")));
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

/// What is wrong with the events one traced case sent, given the frame
/// as the program left it (`output`), whose first `TRACE_SNAP_MAX` bytes
/// each event carries.
fn trace_problems(
    fixture: &Fixture,
    case: &Case,
    records: &[TraceRecord],
    output: &[u8],
) -> Vec<String> {
    let mut problems = capture_problems(records, output);
    let [TraceRecord { event, .. }] = records else {
        return problems;
    };
    let (action, verdict) = match case.expect {
        Forward => (xdp_action::TX, Reason::Tx),
        Pass(reason) => (xdp_action::PASS, reason),
        Drop(reason) => (xdp_action::DROP, reason),
        Refused => return vec!["a refused frame was traced".into()],
    };
    if (event.action, event.reason) != (action, verdict as u32) {
        problems.push(format!(
            "event says action {} reason {}, the case {action} {}",
            event.action,
            event.reason,
            verdict.name()
        ));
    }
    if let Some(frame) = &case.frame
        && event.vlan != frame.vlan_id()
    {
        problems.push(format!(
            "event says VLAN {}, not {}",
            event.vlan,
            frame.vlan_id()
        ));
    }
    if let (Forward, Some(frame)) = (case.expect, &case.frame) {
        let flow = frame.flow();
        let vip = fixture.state.vip_for(&flow).expect("a VIP");
        let backend = fixture
            .state
            .backend_for(&flow, &TEST_SEED)
            .expect("a backend");
        if event.has_flow != 1 || event.key != flow {
            problems.push(format!("event's flow {:?} is not the frame's", event.key));
        }
        if (event.vip_id, event.backend_id) != (vip.vip_id, backend.backend_id) {
            problems.push(format!(
                "event names VIP {} backend {}, expected VIP {} backend {}",
                event.vip_id, event.backend_id, vip.vip_id, backend.backend_id
            ));
        }
        let slot_backend = vip
            .table
            .table
            .get(event.slot.wrapping_sub(TABLE_HEADER_SLOTS) as usize)
            .map(|&position| vip.backends[position as usize].backend_id);
        if event.via != TRACE_VIA_TABLE || slot_backend != Some(backend.backend_id) {
            problems.push(format!(
                "event says via {} slot {}, whose backend is {slot_backend:?}",
                event.via, event.slot
            ));
        }
        let table = lb_userspace::dataplane::table_id(fixture.dataplane.bank(), vip.vip_id);
        if event.table_id != table {
            problems.push(format!("event names table {}, not {table}", event.table_id));
        }
    }
    problems
}

#[test]
fn a_trace_reports_each_case_once_and_nothing_when_off() {
    let mut fixture = Fixture::standard();
    // With the most bytes an event carries: the frame as it left.
    let mut events = fixture.trace_everything(TRACE_SNAP_MAX);
    let cases = cases();
    assert!(
        cases
            .iter()
            .any(|c| c.input.len() > TRACE_SNAP_MAX as usize),
        "a case longer than the snap length shows the cut"
    );
    let mut failures = Vec::new();
    let mut traced = 0;
    let mut syns = Vec::new();
    for case in &cases {
        // Tracing changes nothing the case checks...
        let (mut problems, output) = check(&mut fixture, case, &mut syns);
        // ...and reports the decision exactly once, with the frame.
        let sent = events.drain();
        if let Some(output) = output {
            problems.extend(trace_problems(&fixture, case, &sent, &output));
            traced += 1;
        } else if !sent.is_empty() {
            problems.push("a refused frame was traced".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n    {}", case.name, problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} traced cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let stats = fixture.dataplane.trace_stats().expect("trace stats");
    assert_eq!(stats.sent, traced, "{stats:?}");

    // Off: the same cases again send nothing.
    fixture
        .dataplane
        .set_trace(TraceControl::default())
        .expect("trace control");
    for case in &cases {
        let _ = fixture.run(&case.input);
    }
    let quiet = events.drain();
    assert!(quiet.is_empty(), "{} events with tracing off", quiet.len());
    assert_eq!(fixture.dataplane.trace_stats().expect("stats"), stats);
}

#[test]
fn a_trace_samples_caps_counts_and_ends_with_its_lease() {
    let mut fixture = Fixture::standard();
    let mut events = fixture
        .dataplane
        .take_trace_events()
        .expect("the trace ring buffer");
    let syn = |port: u16| Frame::tcp(&format!("198.18.2.1:{port}"), WEB4, SYN).bytes();
    let other_vip = Frame::tcp("198.18.2.1:40000", DNS4, SYN).bytes();
    let run = |fixture: &mut Fixture, control: TraceControl, frames: &[Vec<u8>]| {
        fixture.dataplane.set_trace(control).expect("trace control");
        let before = fixture.dataplane.trace_stats().expect("stats");
        for frame in frames {
            fixture.run(frame).expect("a run");
        }
        let after = fixture.dataplane.trace_stats().expect("stats");
        (
            after.sent - before.sent,
            after.sampled - before.sampled,
            after.capped - before.capped,
        )
    };
    let web: Vec<Vec<u8>> = (0..12).map(|i| syn(41000 + i)).collect();
    let web_vip = fixture
        .state
        .vips
        .iter()
        .find(|v| v.endpoint() == format!("{WEB4}/tcp"))
        .expect("web4")
        .vip_id;

    // Only the VIP asked for.
    let only_web = TraceControl {
        vip_id: web_vip,
        ..trace_everything(0)
    };
    let mut frames = web[..3].to_vec();
    frames.push(other_vip.clone());
    assert_eq!(run(&mut fixture, only_web, &frames), (3, 0, 0));
    // Without a snap length, the event alone.
    assert!(events.drain().iter().all(|r| r.event.vip_id == web_vip
        && r.event.packet_len == web[0].len() as u32
        && (r.event.captured, r.packet.len()) == (0, 0)));

    // One in four.
    let quarter = TraceControl {
        sample: 4,
        ..only_web
    };
    assert_eq!(run(&mut fixture, quarter, &web), (3, 9, 0));
    assert_eq!(events.drain().len(), 3);

    // At most five a second on this CPU (the runs take far less).
    let capped = TraceControl {
        per_cpu_per_s: 5,
        ..only_web
    };
    let (sent, _, dropped) = run(&mut fixture, capped, &web);
    assert!(
        (sent, dropped) == (5, 7) || sent + dropped == 12 && sent <= 10,
        "sent {sent}, capped {dropped}"
    );
    events.drain();

    // A lease that ran out: nothing, and the program turns tracing off.
    let expired = TraceControl {
        expires_ns: 1,
        ..only_web
    };
    assert_eq!(run(&mut fixture, expired, &web[..1]), (0, 0, 0));
    assert_eq!(fixture.dataplane.trace().expect("control").expires_ns, 0);
    assert!(events.drain().is_empty());
}
