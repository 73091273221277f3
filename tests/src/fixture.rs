//! A loaded XDP program with a known set of VIPs and backends, the runner
//! that pushes one frame through it with BPF_PROG_TEST_RUN, and counter
//! snapshots so a test can assert exactly which counters a frame moved.

use std::{collections::BTreeMap, path::Path};

use aya::{TestRun as _, TestRunOptions};
use lb_common::{
    flow_hash::FlowSeed,
    maps::{
        DataplaneConfig, Reason, TRACE_ANY_VIP, TRACE_SNAP_MAX, TraceControl, TrafficCounters,
        VipSlot, names,
    },
};
use lb_userspace::{
    config::{Config, MacAddr},
    dataplane::state::{DesiredState, UnknownMac, vip_key},
    dataplane::trace::{TraceEvents, TraceRecord},
    dataplane::{
        BENCH_OBJECT, Capacities, Dataplane,
        pins::PinDir,
        system::{BPFFS, ensure_bpffs},
        table_id,
    },
    table::algorithm::Algorithm,
};

use crate::packet::LB_MAC;

/// `config` (the standard one, or a variant of it) with every VIP under
/// the table algorithm `table`.
pub fn standard_config(table: Algorithm, config: &str) -> String {
    format!("table = {:?}\n{config}", table.name())
}

/// The standard test config: IPv4 and IPv6 VIPs for TCP and UDP, an
/// any-port VIP, weights 1:1:2 on the main pool.
pub const STANDARD_CONFIG: &str = r#"
table_size = 65537

[[vip]]
name = "web4"
address = "198.18.0.100"
port = 80
protocol = "tcp"
backend = [
  { name = "b1", address = "198.18.1.1", weight = 1, mac = "02:00:00:00:01:01" },
  { name = "b2", address = "198.18.1.2", weight = 1, mac = "02:00:00:00:01:02" },
  { name = "b3", address = "198.18.1.3", weight = 2, mac = "02:00:00:00:01:03" },
]

[[vip]]
name = "dns4"
address = "198.18.0.100"
port = 53
protocol = "udp"
backend = [
  { name = "b1", address = "198.18.1.1", mac = "02:00:00:00:01:01" },
  { name = "b2", address = "198.18.1.2", mac = "02:00:00:00:01:02" },
]

[[vip]]
name = "any4"
address = "198.18.0.101"
port = 0
protocol = "tcp"
health_check = { port = 8080 }
backend = [
  { name = "b4", address = "198.18.1.4", mac = "02:00:00:00:01:04" },
  { name = "b5", address = "198.18.1.5", mac = "02:00:00:00:01:05" },
]

[[vip]]
name = "web6"
address = "2001:2::100"
port = 80
protocol = "tcp"
backend = [
  { name = "b1v6", address = "2001:2::1:1", mac = "02:00:00:00:01:01" },
  { name = "b2v6", address = "2001:2::1:2", mac = "02:00:00:00:01:02" },
]

[[vip]]
name = "dns6"
address = "2001:2::100"
port = 53
protocol = "udp"
backend = [
  { name = "b1v6", address = "2001:2::1:1", mac = "02:00:00:00:01:01" },
  { name = "b2v6", address = "2001:2::1:2", mac = "02:00:00:00:01:02" },
]
"#;

/// A config that encapsulates: VIPs for every combination of families
/// (IP in IP and GUE), their backends on other networks (reached through
/// the next hop 02:00:00:00:0a:01, as the MACs say), and an L2 DSR VIP.
pub const ENCAP_CONFIG: &str = r#"
forwarding = "ipip"
table_size = 251

[encapsulation]
source4 = "198.18.64.0/24"
source6 = "2001:2:0:64::/64"
mtu = 1500
gue_port = 6080

[[vip]]
name = "4in4"
address = "198.18.0.110"
port = 80
protocol = "tcp"
backend = [
  { address = "198.18.5.1", mac = "02:00:00:00:0a:01" },
  { address = "198.18.5.2", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "6in6"
address = "2001:2::110"
port = 80
protocol = "tcp"
backend = [
  { address = "2001:2:0:5::1", mac = "02:00:00:00:0a:01" },
  { address = "2001:2:0:5::2", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "6in4"
address = "2001:2::111"
port = 80
protocol = "tcp"
backend = [
  { address = "198.18.5.3", mac = "02:00:00:00:0a:01" },
  { address = "198.18.5.4", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "4in6"
address = "198.18.0.111"
port = 80
protocol = "tcp"
backend = [
  { address = "2001:2:0:5::3", mac = "02:00:00:00:0a:01" },
  { address = "2001:2:0:5::4", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "gue4"
forwarding = "gue"
address = "198.18.0.112"
port = 53
protocol = "udp"
backend = [
  { address = "198.18.5.5", mac = "02:00:00:00:0a:01" },
  { address = "198.18.5.6", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "gue6"
forwarding = "gue"
address = "2001:2::112"
port = 80
protocol = "tcp"
backend = [
  { address = "2001:2:0:5::5", mac = "02:00:00:00:0a:01" },
  { address = "2001:2:0:5::6", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "gue-4in6"
forwarding = "gue"
address = "198.18.0.112"
port = 54
protocol = "udp"
backend = [
  { address = "2001:2:0:5::7", mac = "02:00:00:00:0a:01" },
  { address = "2001:2:0:5::8", mac = "02:00:00:00:0a:01" },
]

[[vip]]
name = "l2"
forwarding = "l2-dsr"
address = "198.18.0.113"
port = 80
protocol = "tcp"
backend = [
  { address = "198.18.1.1", mac = "02:00:00:00:01:01" },
  { address = "198.18.1.2", mac = "02:00:00:00:01:02" },
]
"#;

/// A VIP that is in the VIP map but has no lookup table (`vip_id` unused
/// by the config), to exercise the no-backend drop.
/// The flow hash seed the fixture's data plane uses.
pub const TEST_SEED: FlowSeed = FlowSeed([0x5eed_0000_0000_0001, 0x5eed_0000_0000_0002]);

/// A VIP the fixture's index names without a table behind it.
pub const TABLELESS_VIP: (&str, u16) = ("198.18.0.102", 80);
const TABLELESS_VIP_ID: u32 = 900;

/// XDP return codes (linux/bpf.h).
pub mod xdp_action {
    /// XDP_ABORTED.
    pub const ABORTED: u32 = 0;
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;

    /// The action's name, for messages.
    pub fn name(action: u32) -> String {
        match action {
            ABORTED => "XDP_ABORTED".into(),
            DROP => "XDP_DROP".into(),
            PASS => "XDP_PASS".into(),
            TX => "XDP_TX".into(),
            other => format!("action {other}"),
        }
    }
}

/// Tracing every packet for a minute, each event with its packet's first
/// `snap_len` bytes.
pub fn trace_everything(snap_len: u32) -> TraceControl {
    TraceControl {
        expires_ns: lb_userspace::dataplane::trace::lease_end(std::time::Duration::from_secs(60)),
        vip_id: TRACE_ANY_VIP,
        sample: 1,
        per_cpu_per_s: 1_000_000,
        snap_len,
        ..TraceControl::default()
    }
}

/// What is wrong with the one trace record sent about a frame the
/// program left as `output`, traced with the most bytes an event carries.
pub fn capture_problems(records: &[TraceRecord], output: &[u8]) -> Vec<String> {
    let [TraceRecord { event, packet }] = records else {
        return vec![format!("{} trace events, not 1", records.len())];
    };
    let mut problems = Vec::new();
    let snap = output.len().min(TRACE_SNAP_MAX as usize);
    if (event.packet_len as usize, event.captured as usize) != (output.len(), snap) {
        problems.push(format!(
            "event says {} of {} bytes captured, the frame left with {}",
            event.captured,
            event.packet_len,
            output.len()
        ));
    }
    if packet[..] != output[..snap] {
        problems.push(format!(
            "captured bytes {packet:02x?} are not the frame as it left, {:02x?}",
            &output[..snap]
        ));
    }
    problems
}

/// Fails with a clear message unless the test can load BPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads XDP programs into the kernel and needs root \
         (run `sudo cargo xtask test`); euid is {euid}"
    );
}

/// Loads a fresh copy of the bench object and verifies one of its helper
/// programs (`lab_peer_pass`, `bench_floor_tx`); get it back with
/// `xdp_program` to attach or run it.
pub fn standalone_program(name: &str) -> anyhow::Result<aya::Ebpf> {
    let mut ebpf = aya::Ebpf::load(BENCH_OBJECT)?;
    xdp_program(&mut ebpf, name)?.load()?;
    Ok(ebpf)
}

/// The XDP program `name` of a loaded object.
pub fn xdp_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("no program {name} in the object"))?
        .try_into()?)
}

/// Runs one frame through a loaded XDP program `repeat` times with
/// BPF_PROG_TEST_RUN.
pub fn test_run(program: &aya::programs::Xdp, input: &[u8], repeat: u32) -> std::io::Result<Run> {
    let mut output = vec![0u8; input.len() + 512];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            repeat,
            ..Default::default()
        })
        .map_err(std::io::Error::other)?;
    output.truncate(result.data_size_out as usize);
    Ok(Run {
        action: result.return_value,
        output,
        nanos: result.duration.as_nanos() as u64,
    })
}

/// Every way a run differs from what a case expects: its action, the
/// verdict counters (exactly `verdict` moved, by one, between `before` and
/// `after`), its output bytes (the first difference shown).
pub fn run_problems(
    run: &Run,
    (before, after): (&Snapshot, &Snapshot),
    (action, verdict): (u32, Reason),
    output: &[u8],
) -> Vec<String> {
    let mut problems = Vec::new();
    if run.action != action {
        problems.push(format!(
            "action {} instead of {}",
            xdp_action::name(run.action),
            xdp_action::name(action)
        ));
    }
    for reason in Reason::ALL.into_iter().filter(|r| r.is_verdict()) {
        let moved = after.reason_delta(before, reason);
        let want = u64::from(reason == verdict);
        if moved != want {
            problems.push(format!(
                "counter {} moved by {moved}, expected {want}",
                reason.name()
            ));
        }
    }
    if run.output != output {
        let first = run
            .output
            .iter()
            .zip(output)
            .position(|(a, b)| a != b)
            .unwrap_or(run.output.len().min(output.len()));
        let around =
            |bytes: &[u8]| bytes[first.saturating_sub(4)..(first + 12).min(bytes.len())].to_vec();
        problems.push(format!(
            "output differs at byte {first} (lengths {} and {} expected)\n  got  {:02x?}\n  want {:02x?}",
            run.output.len(),
            output.len(),
            around(&run.output),
            around(output),
        ));
    }
    problems
}

/// A loaded program and the state installed into it.
pub struct Fixture {
    /// The program.
    pub dataplane: Dataplane,
    /// What was installed.
    pub state: DesiredState,
}

/// The result of one run.
#[derive(Debug)]
pub struct Run {
    /// The XDP action.
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Mean nanoseconds per run, as the kernel measured.
    pub nanos: u64,
}

/// Every counter the program keeps, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Per-reason counters.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Per-backend counters by backend id.
    pub backends: BTreeMap<u32, TrafficCounters>,
    /// Per-VIP counters by VIP id.
    pub vips: BTreeMap<u32, TrafficCounters>,
}

impl Fixture {
    /// Sets the data plane's clock to `epoch`, keeping the rest of its
    /// config.
    pub fn set_epoch(&mut self, epoch: u32) {
        let config = self.dataplane.config().expect("config map");
        self.dataplane
            .set_config(DataplaneConfig { epoch, ..config })
            .expect("config map");
    }

    /// Loads the program with `STANDARD_CONFIG`.
    pub fn standard() -> Self {
        Self::with_config(STANDARD_CONFIG)
    }

    /// The standard config with every backend's MAC set to the load
    /// balancer's own: a forwarded frame is addressed to the load balancer
    /// again, so a repeated BPF_PROG_TEST_RUN (which runs each repeat on
    /// the frame the last one left) takes the same path every time, where
    /// a frame for a backend's MAC would pass as another host's.
    pub fn looped() -> Self {
        let lb = LB_MAC.map(|b| format!("{b:02x}")).join(":");
        let mut parts = STANDARD_CONFIG.split("mac = \"");
        let mut config = parts.next().unwrap_or_default().to_string();
        for part in parts {
            let rest = part.get(17..).expect("a MAC of 17 characters");
            config.push_str(&format!("mac = \"{lb}{rest}"));
        }
        Self::with_config(&config)
    }

    /// Loads the program with `STANDARD_CONFIG` under the table algorithm
    /// `table` (for every VIP).
    pub fn standard_with(table: Algorithm) -> Self {
        Self::with_config(&standard_config(table, STANDARD_CONFIG))
    }

    /// Loads the program and installs `config_text`.
    pub fn with_config(config_text: &str) -> Self {
        Self::with_parsed(&Config::parse(config_text).expect("test config parses"))
    }

    /// Loads the program and installs `config` (read already: one larger
    /// than a config file may be, say).
    pub fn with_parsed(config: &Config) -> Self {
        require_root();
        let state = DesiredState::build(config, |b| {
            b.mac.ok_or(UnknownMac {
                address: b.address,
                why: "no MAC in the test config",
            })
        })
        .expect("test config builds");
        let mut dataplane = Dataplane::load_with(Capacities {
            connection_table_size: config.connection_table_size,
            max_backends: config.max_backends,
        })
        .expect("XDP program loads and verifies");
        dataplane
            .set_config(DataplaneConfig {
                if_mac: LB_MAC,
                tcp_idle_s: config.idle.tcp_s,
                udp_idle_s: config.idle.udp_s,
                seed: TEST_SEED,
                ..DataplaneConfig::default()
            })
            .expect("config map");
        dataplane.install(&state).expect("state installs");
        let (addr, port) = TABLELESS_VIP;
        let mut entries = dataplane.read_vip_index().expect("VIP index reads back");
        entries.push(VipSlot {
            key: vip_key(addr.parse().expect("address"), port, 6),
            vip_id: TABLELESS_VIP_ID,
            flags: 0,
            table_id: table_id(dataplane.bank(), TABLELESS_VIP_ID),
            ..VipSlot::default()
        });
        dataplane
            .install_vip_index(&entries)
            .expect("VIP index with the tableless VIP");
        Self { dataplane, state }
    }

    /// Loads a copy of the bench object on this fixture's maps and
    /// verifies its program `name` (`bench_untraced`), which then runs on
    /// the very state the fixture's program runs on; get it back with
    /// `xdp_program`. The maps are pinned under a bpffs directory of this
    /// process's own for the load, which opens them by their pins, and
    /// unpinned after.
    pub fn bench_program(&mut self, name: &str) -> anyhow::Result<aya::Ebpf> {
        ensure_bpffs()?;
        let pins = PinDir::new(
            Path::new(BPFFS),
            &format!("fulcrum-bench-{}", std::process::id()),
        );
        let loaded = self
            .dataplane
            .pin(&pins)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let mut loader = aya::EbpfLoader::new();
                for name in names::OBJECT_MAPS {
                    loader.map_pin_path(name, pins.path().join(name));
                }
                Ok(loader.load(BENCH_OBJECT)?)
            });
        pins.remove()?;
        let mut ebpf = loaded?;
        xdp_program(&mut ebpf, name)?.load()?;
        Ok(ebpf)
    }

    /// Runs one frame through the program `repeat` times.
    pub fn run_repeated(&mut self, input: &[u8], repeat: u32) -> std::io::Result<Run> {
        let program = self.dataplane.program().expect("program");
        test_run(program, input, repeat)
    }

    /// Takes the trace ring buffer and traces every packet, each event
    /// with its first `snap_len` bytes.
    pub fn trace_everything(&mut self, snap_len: u32) -> TraceEvents {
        let events = self
            .dataplane
            .take_trace_events()
            .expect("the trace ring buffer");
        self.dataplane
            .set_trace(trace_everything(snap_len))
            .expect("trace control");
        events
    }

    /// Runs one frame through the program once.
    pub fn run(&mut self, input: &[u8]) -> std::io::Result<Run> {
        self.run_repeated(input, 1)
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let counters = self.dataplane.counters().expect("counters");
        let reasons = Reason::ALL
            .into_iter()
            .map(|reason| (reason.name(), counters.reason(reason)))
            .collect();
        let mut backends = BTreeMap::new();
        let mut vips = BTreeMap::new();
        for vip in &self.state.vips {
            vips.insert(vip.vip_id, counters.vip(vip.vip_id));
            for backend in &vip.backends {
                backends.insert(backend.backend_id, counters.backend(backend.backend_id));
            }
        }
        Snapshot {
            reasons,
            backends,
            vips,
        }
    }

    /// The MAC of backend slot `backend_id`.
    pub fn backend_mac(&self, backend_id: u32) -> MacAddr {
        self.state
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .find(|b| b.backend_id == backend_id)
            .map(|b| b.mac)
            .expect("known backend")
    }
}

impl Snapshot {
    /// How much reason `reason` moved since `before`.
    pub fn reason_delta(&self, before: &Snapshot, reason: Reason) -> u64 {
        self.reasons[reason.name()] - before.reasons[reason.name()]
    }
}
