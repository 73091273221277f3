//! The namespace lab: a client, the load balancer and backends, each in its
//! own network namespace. Switched: all on one segment, joined by veth
//! pairs to a bridge in a switch namespace, and the real `fulcrum run`
//! serves the VIPs with L2 direct server return. Routed: each on a subnet
//! of its own behind a router namespace, the path to the client of a
//! smaller MTU, and `fulcrum run` encapsulates (IP in IP and GUE, in
//! every family combination) to backends that decapsulate with `fulcrum
//! decap`. Backends hold the VIPs on `lo` and answer with their names.
//! Everything is removed on drop, also when a test fails.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;
use lb_userspace::{dataplane::pins::PinDir, monitor::report::Report};

use crate::{
    fixture::{require_root, standalone_program, xdp_program},
    netns::Netns,
    traffic::{self, Tally},
    wait,
};

/// The IPv4 VIP.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 1);
/// The TCP service port.
pub const TCP_PORT: u16 = 80;
/// The UDP service port.
pub const UDP_PORT: u16 = 53;
const LB_INDEX: u8 = 3;
const CLIENT_INDEX: u8 = 2;
const FIRST_BACKEND_INDEX: u8 = 11;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the daemon serves `/metrics`, inside the load balancer's namespace
/// (the config's default).
pub const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9487);

/// A backend to start: its name and weight.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// Name it answers with.
    pub name: String,
    /// Weight in the config.
    pub weight: u32,
}

impl BackendSpec {
    /// `count` backends `b1`, `b2`, ... of weight 1.
    pub fn equal(count: usize) -> Vec<Self> {
        (1..=count)
            .map(|i| Self {
                name: format!("b{i}"),
                weight: 1,
            })
            .collect()
    }
}

/// The four VIPs the lab serves, by name.
pub const VIP_NAMES: [&str; 4] = ["web4", "dns4", "web6", "dns6"];

/// A running `fulcrum run` inside the load balancer's namespace.
pub(crate) struct Fulcrum {
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
    /// Its counter reports, one JSON line each, as it prints them.
    stdout: mpsc::Receiver<String>,
    reports: Vec<String>,
}

/// Hands each line `from` prints to the receiver, on a thread of its own.
fn lines_of(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Where a lab's `fulcrum` pins its data plane and keeps its records: its
/// own directories, so that labs never share or touch the host's.
#[derive(Clone, Debug)]
pub(crate) struct Places {
    pub(crate) pin_root: PathBuf,
    pub(crate) state_root: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) journal: PathBuf,
}

impl Places {
    /// Where pins and records are: for `run` and `detach --interface`.
    pub(crate) fn args(&self) -> [&std::ffi::OsStr; 4] {
        [
            "--pin-root".as_ref(),
            self.pin_root.as_os_str(),
            "--state-root".as_ref(),
            self.state_root.as_os_str(),
        ]
    }
}

/// How `fulcrum run` is started: how it enters the load balancer's
/// namespace, and what it is given beyond the lab's own arguments.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run<'a> {
    /// How it enters the namespace.
    pub launch: Launch,
    /// Arguments after the lab's.
    pub args: &'a [&'a str],
    /// Environment variables.
    pub env: &'a [(&'a str, &'a str)],
}

/// How `fulcrum run` enters the load balancer's namespace.
#[derive(Clone, Copy, Debug, Default)]
pub enum Launch {
    /// `nsenter --net`: the network namespace only, so fulcrum keeps the
    /// host's mounts and pins on the host's bpffs, as on a real host.
    #[default]
    HostMounts,
    /// `ip netns exec`, which also gives fulcrum a mount namespace of its
    /// own with a fresh `/sys`: the bpffs it mounts there, and its pins,
    /// vanish with the process.
    PrivateMounts,
}

impl Fulcrum {
    pub(crate) fn start(
        lb: &Netns,
        binary: &Path,
        config: &Path,
        places: &Places,
    ) -> anyhow::Result<Self> {
        Self::start_as(lb, &Run::default(), binary, config, places)
    }

    /// Starts `fulcrum run` as `run` says, entering `lb`.
    pub(crate) fn start_as(
        lb: &Netns,
        run: &Run<'_>,
        binary: &Path,
        config: &Path,
        places: &Places,
    ) -> anyhow::Result<Self> {
        let mut command = match run.launch {
            Launch::HostMounts => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{}", lb.name()));
                command.arg("--");
                command
            }
            Launch::PrivateMounts => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", lb.name()]);
                command
            }
        };
        let mut child = command
            .arg(binary)
            .args(["run", "--stats-format", "json"])
            .args(places.args())
            .arg("--socket")
            .arg(&places.socket)
            .arg("--journal")
            .arg(&places.journal)
            .arg("--config")
            .arg(config)
            .args(run.args)
            .envs(run.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = lines_of(child.stderr.take().context("fulcrum stderr")?);
        let stdout = lines_of(child.stdout.take().context("fulcrum stdout")?);
        let mut fulcrum = Self {
            child,
            stderr,
            log: Vec::new(),
            stdout,
            reports: Vec::new(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match fulcrum.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("fulcrum: serving on");
                    fulcrum.log.push(line);
                    if ready {
                        return Ok(fulcrum);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "fulcrum exited before attaching:\n{}",
                        fulcrum.log.join("\n")
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "fulcrum did not attach within {READY_TIMEOUT:?}:\n{}",
                    fulcrum.log.join("\n")
                ),
            }
        }
    }

    /// What it printed on stderr so far.
    pub(crate) fn log_so_far(&mut self) -> Vec<String> {
        self.log.extend(self.stderr.try_iter());
        self.log.clone()
    }

    /// Sends SIGUSR1 and waits for the counter report it prints.
    pub(crate) fn report_counters(&mut self) -> anyhow::Result<()> {
        self.reports.extend(self.stdout.try_iter());
        let printed = self.reports.len();
        // SAFETY: signalling the child we started, by its PID.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGUSR1");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.reports.len() == printed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => self.reports.push(line),
                Err(e) => bail!("no counter report after SIGUSR1 ({e})"),
            }
        }
        Ok(())
    }

    /// Sends `signal`, waits, and parses every counter report it printed
    /// (one per SIGUSR1, then, after SIGTERM, the final one).
    /// Waits (10 s at most) for the process to exit; `what` says what
    /// it failed to do otherwise.
    fn exited(&mut self, what: &str) -> anyhow::Result<std::process::ExitStatus> {
        wait::until(
            Duration::from_secs(10),
            || Ok(self.child.try_wait()?.ok_or(())),
            |()| Ok(format!("fulcrum {what}")),
        )
    }

    pub(crate) fn stop(mut self, signal: i32) -> anyhow::Result<Vec<Report>> {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.exited(&format!("ignored signal {signal}"))?;
        // It exited: its stdout ends, and the reader hands on the rest.
        self.reports.extend(self.stdout.iter());
        let stdout = self.reports.join("\n");
        self.log.extend(self.stderr.try_iter());
        if signal != libc::SIGTERM {
            return parse_reports(&stdout);
        }
        if !status.success() {
            bail!("fulcrum exited with {status}:\n{}", self.log.join("\n"));
        }
        let reports = parse_reports(&stdout)?;
        anyhow::ensure!(!reports.is_empty(), "fulcrum printed no counters on exit");
        Ok(reports)
    }
}

fn parse_reports(stdout: &str) -> anyhow::Result<Vec<Report>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .with_context(|| format!("parsing fulcrum's counters: {line}"))
        })
        .collect()
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `fulcrum` binary: `$FULCRUM_BIN`, or next to the running executable
/// (cargo puts test binaries in `deps/` beside it).
pub fn fulcrum_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FULCRUM_BIN") {
        return Ok(path.into());
    }
    binary_near_tests(
        "fulcrum",
        "build it (`cargo build --release -p lb-userspace`) or set FULCRUM_BIN",
    )
}

/// A second build of `fulcrum` (a different build input) for the upgrade
/// test: `fulcrum-upgrade` beside `fulcrum`, which `cargo xtask test` makes.
pub fn fulcrum_upgrade_binary() -> anyhow::Result<PathBuf> {
    binary_near_tests(
        "fulcrum-upgrade",
        "`cargo xtask test` builds it before the tests",
    )
}

/// The Debian package of this build: `FULCRUM_DEB`, else the one `cargo
/// xtask test` packs beside the binaries (`dist/`).
pub fn package_near_tests() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FULCRUM_DEB") {
        return Ok(path.into());
    }
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("dpkg --print-architecture")?;
    let arch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    binary_near_tests(
        &format!("dist/fulcrum_{}_{arch}.deb", env!("CARGO_PKG_VERSION")),
        "`cargo xtask test` packs it, or set FULCRUM_DEB",
    )
}

fn binary_near_tests(name: &str, how: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("no {name} binary near {}; {how}", exe.display()))
}

/// One backend's running servers.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts the servers of backend `name` on `host`: TCP and UDP,
    /// answering with its name.
    pub(crate) fn start(host: &Netns, name: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = traffic::start_servers(host, name, TCP_PORT, &UDP_SERVED, &stop)?;
        Ok(Self { stop, threads })
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The UDP addresses every backend serves.
const UDP_SERVED: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT),
    SocketAddr::new(IpAddr::V6(VIP6), UDP_PORT),
];

/// Client traffic per VIP name.
pub type Traffic = Vec<(&'static str, Tally)>;

/// Everything wrong with `traffic` from `drive(tcp, udp, ..)`: a flow not
/// answered, or a backend's share further than `bound` from its weight's.
pub fn traffic_problems(
    traffic: &Traffic,
    backends: &[BackendSpec],
    (tcp, udp): (usize, u16),
    bound: f64,
) -> Vec<String> {
    let total_weight: u32 = backends.iter().map(|b| b.weight).sum();
    let mut problems = Vec::new();
    for (vip, tally) in traffic {
        let attempts = if vip.starts_with("web") {
            tcp as u64
        } else {
            u64::from(udp)
        };
        if tally.failures > 0 || tally.answered() != attempts {
            problems.push(format!(
                "{vip}: {} of {attempts} answered, {} failed (first: {:?})",
                tally.answered(),
                tally.failures,
                tally.first_error
            ));
        }
        for backend in backends {
            let want = f64::from(backend.weight) / f64::from(total_weight);
            let got = tally.share(&backend.name);
            eprintln!(
                "{vip}/{}: {:.1}% (weight share {:.1}%)",
                backend.name,
                got * 100.0,
                want * 100.0
            );
            if (got - want).abs() > bound {
                problems.push(format!(
                    "{vip}/{}: share {:.1}% vs weight share {:.1}%",
                    backend.name,
                    got * 100.0,
                    want * 100.0
                ));
            }
        }
    }
    problems
}

/// A running lab. Drop tears it all down.
pub struct Lab {
    id: String,
    /// Per backend: its servers' stop flag and threads.
    servers: Mutex<Vec<Servers>>,
    fulcrum: Mutex<Option<Fulcrum>>,
    places: Places,
    /// The backends, in config order.
    pub backends: Vec<BackendSpec>,
    config_dir: PathBuf,
    /// The client's addresses.
    client_addrs: (Ipv4Addr, Ipv6Addr),
    /// Each backend's own addresses, in config order.
    backend_addrs: Vec<(Ipv4Addr, Ipv6Addr)>,
    /// Per backend, where its decapsulation program is pinned (routed labs).
    decap_roots: Vec<PathBuf>,
    // Namespaces are dropped (deleted) after everything using them.
    _peer_pass: aya::Ebpf,
    client: Netns,
    lb: Netns,
    backend_hosts: Vec<Netns>,
    _middle: Netns,
}

/// How a lab's hosts are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One segment; L2 direct server return.
    Switched,
    /// A router between subnets; IP-in-IP and GUE encapsulation.
    Routed,
}

/// The MTU of the path from the router to the client in a routed lab:
/// smaller than every link's 1500, so that replies need path MTU discovery.
pub const CLIENT_PATH_MTU: u16 = 1400;

/// The prefixes a routed lab's load balancer takes outer sources from.
const OUTER_SOURCE4: &str = "198.18.64.0/24";
const OUTER_SOURCE6: &str = "2001:2:0:64::/64";

/// The namespaces of a lab and their addresses, as one topology wires them.
struct Network {
    middle: Netns,
    client: Netns,
    lb: Netns,
    backend_hosts: Vec<Netns>,
    client_addrs: (Ipv4Addr, Ipv6Addr),
    backend_addrs: Vec<(Ipv4Addr, Ipv6Addr)>,
    /// The middle namespace's end of the load balancer's link.
    lb_peer: &'static str,
}

pub(crate) fn mac_of(index: u8) -> String {
    format!("02:f0:00:00:00:{index:02x}")
}

pub(crate) fn ipv4_of(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, index)
}

pub(crate) fn ipv6_of(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::from(index))
}

/// Creates a host namespace wired to the switch's bridge.
pub(crate) fn add_host(switch: &Netns, name: &str, role: &str, index: u8) -> anyhow::Result<Netns> {
    let host = Netns::create(name)?;
    let peer = format!("p-{role}");
    switch.ip(&[
        "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    switch.ip(&["link", "set", &peer, "master", "br0", "up"])?;
    host.ip(&["link", "set", "eth0", "address", &mac_of(index)])?;
    host.ip(&[
        "addr",
        "add",
        &format!("{}/24", ipv4_of(index)),
        "dev",
        "eth0",
    ])?;
    host.ip(&[
        "addr",
        "add",
        &format!("{}/64", ipv6_of(index)),
        "dev",
        "eth0",
        "nodad",
    ])?;
    host.ip(&["link", "set", "eth0", "up"])?;
    Ok(host)
}

/// The VIPs every lab serves: name, address, port, protocol; and in a
/// routed lab, the family of the backend addresses behind it and its
/// forwarding mode (every combination of families, and GUE once).
const LAB_VIPS: [(&str, IpAddr, u16, &str, bool, &str); 4] = [
    ("web4", IpAddr::V4(VIP4), TCP_PORT, "tcp", false, "ipip"),
    ("dns4", IpAddr::V4(VIP4), UDP_PORT, "udp", true, "ipip"),
    ("web6", IpAddr::V6(VIP6), TCP_PORT, "tcp", false, "ipip"),
    ("dns6", IpAddr::V6(VIP6), UDP_PORT, "udp", true, "gue"),
];

pub(crate) fn fulcrum_config(
    backends: &[BackendSpec],
    addresses: &[(Ipv4Addr, Ipv6Addr)],
    topology: Topology,
) -> String {
    // A seed of the lab's own, so that tests predict the kernel's choices
    // from the config (as a group of hosts sharing one would).
    let mut text = String::from(
        "interface = \"eth0\"\nflow_hash_seed = \"6c61622d736565642d6f662d74657374\"\n",
    );
    if topology == Topology::Routed {
        text += &format!(
            "forwarding = \"ipip\"\n\n[encapsulation]\nsource4 = \"{OUTER_SOURCE4}\"\n\
             source6 = \"{OUTER_SOURCE6}\"\n"
        );
    }
    for (name, addr, port, protocol, routed_v6, forwarding) in LAB_VIPS {
        text += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = {port}\nprotocol = \"{protocol}\"\n"
        );
        let backend_v6 = match topology {
            Topology::Switched => addr.is_ipv6(),
            Topology::Routed => {
                text += &format!("forwarding = \"{forwarding}\"\n");
                routed_v6
            }
        };
        if protocol == "udp" {
            // A UDP service is checked at its host's TCP port.
            text += &format!("[vip.health_check]\nkind = \"tcp\"\nport = {TCP_PORT}\n");
        }
        for (backend, (v4, v6)) in backends.iter().zip(addresses) {
            let address = if backend_v6 {
                v6.to_string()
            } else {
                v4.to_string()
            };
            text += &format!(
                "[[vip.backend]]\nname = \"{}\"\naddress = \"{address}\"\nweight = {}\n",
                backend.name, backend.weight
            );
        }
    }
    text
}

/// Detaches the data plane pinned under `pin_root` from outside, as
/// `bpftool link detach` would: the pinned link stays, but no longer has
/// an interface (`BPF_LINK_DETACH`, Linux 5.9).
pub(crate) fn sever_link(pin_root: &Path) -> anyhow::Result<()> {
    let path = pin_root.join("eth0").join("link");
    lb_userspace::dataplane::sys::PinnedXdpLink::open(&path)?.detach()?;
    Ok(())
}

/// A host's IPv4 and IPv6 addresses.
pub(crate) type Addresses = (Ipv4Addr, Ipv6Addr);

/// Backend hosts on the switch's bridge, with their addresses.
pub(crate) fn add_backends(
    switch: &Netns,
    id: &str,
    backends: &[BackendSpec],
) -> anyhow::Result<(Vec<Netns>, Vec<Addresses>)> {
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    for (index, backend) in (FIRST_BACKEND_INDEX..).zip(backends) {
        let host = add_host(
            switch,
            &format!("{id}-{}", backend.name),
            &backend.name,
            index,
        )?;
        hosts.push(host);
        addrs.push((ipv4_of(index), ipv6_of(index)));
    }
    Ok((hosts, addrs))
}

/// Makes `host` a DSR backend: the VIPs on `lo`, no ARP answers for them
/// elsewhere, and whole checksums on what it sends.
pub(crate) fn prepare_backend(host: &Netns) -> anyhow::Result<()> {
    host.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
    host.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
    host.ip(&["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
    host.sysctl("net/ipv4/conf/all/arp_ignore", "1")?;
    host.sysctl("net/ipv4/conf/all/arp_announce", "2")
}

/// All hosts on one bridge (L2 DSR).
fn switched_network(id: &str, backends: &[BackendSpec]) -> anyhow::Result<Network> {
    let switch = Netns::create(&format!("{id}-sw"))?;
    switch.ip(&["link", "add", "br0", "type", "bridge"])?;
    switch.ip(&["link", "set", "br0", "up"])?;
    let client = add_host(&switch, &format!("{id}-client"), "client", CLIENT_INDEX)?;
    client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
    client.ip(&[
        "route",
        "add",
        "198.18.100.0/24",
        "via",
        &ipv4_of(LB_INDEX).to_string(),
    ])?;
    client.ip(&[
        "-6",
        "route",
        "add",
        "2001:2:0:100::/64",
        "via",
        &ipv6_of(LB_INDEX).to_string(),
    ])?;
    let lb = add_host(&switch, &format!("{id}-lb"), "lb", LB_INDEX)?;
    let (backend_hosts, backend_addrs) = add_backends(&switch, id, backends)?;
    Ok(Network {
        middle: switch,
        client,
        lb,
        backend_hosts,
        client_addrs: (ipv4_of(CLIENT_INDEX), ipv6_of(CLIENT_INDEX)),
        backend_addrs,
        lb_peer: "p-lb",
    })
}

/// A host on a subnet of its own (`198.18.{subnet}.0/24` and
/// `2001:2:0:{subnet}::/64`, hex) behind the router: the host is `.{host}`,
/// the router `.1`, and the host's default routes go to the router.
pub(crate) fn add_routed_host(
    router: &Netns,
    name: &str,
    router_side: &str,
    subnet: u8,
    host: u8,
) -> anyhow::Result<(Netns, Ipv4Addr, Ipv6Addr)> {
    let ns = Netns::create(name)?;
    router.ip(&[
        "link",
        "add",
        router_side,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        name,
    ])?;
    let v4 = |last: u8| Ipv4Addr::new(198, 18, subnet, last);
    let v6 = |last: u8| Ipv6Addr::new(0x2001, 2, 0, u16::from(subnet), 0, 0, 0, u16::from(last));
    router.ip(&["addr", "add", &format!("{}/24", v4(1)), "dev", router_side])?;
    router.ip(&[
        "addr",
        "add",
        &format!("{}/64", v6(1)),
        "dev",
        router_side,
        "nodad",
    ])?;
    router.ip(&["link", "set", router_side, "up"])?;
    ns.ip(&["addr", "add", &format!("{}/24", v4(host)), "dev", "eth0"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", v6(host)),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &v4(1).to_string()])?;
    ns.ip(&["-6", "route", "add", "default", "via", &v6(1).to_string()])?;
    Ok((ns, v4(host), v6(host)))
}

/// The client, the load balancer and each backend on subnets of their own
/// behind a router (encapsulation).
fn routed_network(id: &str, backends: &[BackendSpec]) -> anyhow::Result<Network> {
    let router = Netns::create(&format!("{id}-rt"))?;
    router.sysctl("net/ipv4/ip_forward", "1")?;
    router.sysctl("net/ipv6/conf/all/forwarding", "1")?;
    router.sysctl("net/ipv4/conf/all/rp_filter", "0")?;
    router.sysctl("net/ipv4/conf/default/rp_filter", "0")?;
    let (client, client4, client6) =
        add_routed_host(&router, &format!("{id}-client"), "rt-cl", 2, CLIENT_INDEX)?;
    client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
    // The path to the client carries less than its own link (as a tunnel
    // on the way would): the router's routes towards it have the smaller
    // MTU, so it answers full-size packets for the client as too big, and
    // the client still sends (and advertises) full-size ones.
    // Locked: IPv6 forwarding honours a route's MTU only then. The metric
    // of the connected route (0 for IPv4, 256 for IPv6), which it replaces.
    let mtu = CLIENT_PATH_MTU.to_string();
    for (family, prefix, metric) in [
        ("-4", "198.18.2.0/24", "0"),
        ("-6", "2001:2:0:2::/64", "256"),
    ] {
        router.ip(&[
            family, "route", "replace", prefix, "dev", "rt-cl", "metric", metric, "mtu", "lock",
            &mtu,
        ])?;
    }
    let (lb, lb4, lb6) = add_routed_host(&router, &format!("{id}-lb"), "rt-lb", 0, LB_INDEX)?;
    // The outer sources are the load balancer's own, for routers' errors.
    lb.ip(&["route", "add", "local", OUTER_SOURCE4, "dev", "lo"])?;
    lb.ip(&["-6", "route", "add", "local", OUTER_SOURCE6, "dev", "lo"])?;
    // The VIPs and the outer sources are the load balancer's.
    for prefix in ["198.18.100.0/24", OUTER_SOURCE4] {
        router.ip(&["route", "add", prefix, "via", &lb4.to_string()])?;
    }
    for prefix in ["2001:2:0:100::/64", OUTER_SOURCE6] {
        router.ip(&["-6", "route", "add", prefix, "via", &lb6.to_string()])?;
    }
    let mut backend_hosts = Vec::new();
    let mut backend_addrs = Vec::new();
    for (subnet, backend) in (FIRST_BACKEND_INDEX..).zip(backends) {
        let (host, v4, v6) = add_routed_host(
            &router,
            &format!("{id}-{}", backend.name),
            &format!("rt-{}", backend.name),
            subnet,
            FIRST_BACKEND_INDEX,
        )?;
        for key in [
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/rp_filter",
        ] {
            host.sysctl(key, "0")?;
        }
        backend_hosts.push(host);
        backend_addrs.push((v4, v6));
    }
    Ok(Network {
        middle: router,
        client,
        lb,
        backend_hosts,
        client_addrs: (client4, client6),
        backend_addrs,
        lb_peer: "rt-lb",
    })
}

pub(crate) static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the namespaces, starts the backend servers and `fulcrum run`.
    pub fn start(backends: &[BackendSpec]) -> anyhow::Result<Self> {
        Self::start_with(backends, "")
    }

    /// As `start`, with `extra` (top-level TOML tables) appended to the
    /// generated config.
    pub fn start_with(backends: &[BackendSpec], extra: &str) -> anyhow::Result<Self> {
        Self::build(backends, extra, Topology::Switched)
    }

    /// A routed lab: backends behind a router, reached by encapsulation
    /// (see the module doc), with `extra` appended to the config.
    pub fn start_routed(backends: &[BackendSpec], extra: &str) -> anyhow::Result<Self> {
        Self::build(backends, extra, Topology::Routed)
    }

    fn build(backends: &[BackendSpec], extra: &str, topology: Topology) -> anyhow::Result<Self> {
        require_root();
        let id = format!(
            "fl{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let network = match topology {
            Topology::Switched => switched_network(&id, backends)?,
            Topology::Routed => routed_network(&id, backends)?,
        };
        for host in &network.backend_hosts {
            prepare_backend(host)?;
        }
        // NAPI for the load balancer's XDP_TX on veth (see docs/troubleshooting.md).
        let mut peer_pass = standalone_program("lab_peer_pass")?;
        let program = xdp_program(&mut peer_pass, "lab_peer_pass")?;
        let lb_peer = network.lb_peer;
        network.middle.enter(|| {
            program.attach(lb_peer, XdpMode::Driver)?;
            Ok(())
        })?;

        let config_dir = std::env::temp_dir().join(&id);
        let pin_root = |what: &str| {
            Path::new(lb_userspace::dataplane::pins::DEFAULT_ROOT)
                .with_file_name(format!("fulcrum-lab-{id}{what}"))
        };
        let decap_roots = match topology {
            Topology::Switched => Vec::new(),
            Topology::Routed => backends
                .iter()
                .map(|b| pin_root(&format!("-decap-{}", b.name)))
                .collect(),
        };
        let lab = Self {
            id: id.clone(),
            servers: Mutex::new(Vec::new()),
            fulcrum: Mutex::new(None),
            places: Places {
                pin_root: pin_root(""),
                state_root: config_dir.join("state"),
                socket: config_dir.join("run").join("api.sock"),
                journal: config_dir.join("journal.jsonl"),
            },
            backends: backends.to_vec(),
            config_dir,
            client_addrs: network.client_addrs,
            backend_addrs: network.backend_addrs,
            decap_roots,
            _peer_pass: peer_pass,
            client: network.client,
            lb: network.lb,
            backend_hosts: network.backend_hosts,
            _middle: network.middle,
        };
        for (index, root) in lab.decap_roots.iter().enumerate() {
            lab.decap(index, root, ("attach", &[]))?;
        }
        for index in 0..backends.len() {
            let servers = lab.serve(index)?;
            lab.servers.lock().expect("servers lock").push(servers);
        }
        std::fs::create_dir_all(&lab.config_dir)?;
        let config = lab.config_dir.join("fulcrum.toml");
        let text = fulcrum_config(backends, &lab.backend_addrs, topology) + extra;
        std::fs::write(&config, text)?;
        lab.start_fulcrum()?;
        Ok(lab)
    }

    /// Runs `fulcrum decap <verb> eth0 [extra]` in backend `index`'s
    /// namespace, pinned under `root` (nsenter: the host's bpffs, see
    /// `Fulcrum`).
    fn decap(
        &self,
        index: usize,
        root: &Path,
        (verb, extra): (&str, &[&str]),
    ) -> anyhow::Result<String> {
        let output = Command::new("nsenter")
            .arg(format!(
                "--net=/run/netns/{}",
                self.backend_hosts[index].name()
            ))
            .arg("--")
            .arg(fulcrum_binary()?)
            .args(["decap", verb, "eth0", "--pin-root"])
            .arg(root)
            .args(extra)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "fulcrum decap {verb} on backend {index}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Backend `index`'s decapsulation counters (`fulcrum decap status
    /// --format json`), by name; a routed lab's only.
    pub fn decap_counters(&self, index: usize) -> anyhow::Result<Vec<(String, u64)>> {
        let root = self
            .decap_roots
            .get(index)
            .context("only a routed lab's backends decapsulate")?;
        let json = self.decap(index, root, ("status", &["--format", "json"]))?;
        let status: serde_json::Value = serde_json::from_str(&json).context("decap's JSON")?;
        anyhow::ensure!(status["interface"] == "eth0", "{status}");
        status["counters"]
            .as_object()
            .context("decap's counters")?
            .iter()
            .map(|(name, count)| Ok((name.clone(), count.as_u64().context("a count")?)))
            .collect()
    }

    /// Starts backend `index`'s servers (TCP and UDP, answering with its name).
    fn serve(&self, index: usize) -> anyhow::Result<Servers> {
        Servers::start(&self.backend_hosts[index], &self.backends[index].name)
    }

    /// Stops backend `index`'s servers: its port refuses connections, and
    /// its open connections close, as when the service dies.
    pub fn stop_backend(&self, index: usize) {
        let mut servers = self.servers.lock().expect("servers lock");
        let stopped = std::mem::replace(
            &mut servers[index],
            Servers {
                stop: Arc::new(AtomicBool::new(true)),
                threads: Vec::new(),
            },
        );
        stopped.stop();
    }

    /// Starts backend `index`'s servers again.
    pub fn start_backend(&self, index: usize) -> anyhow::Result<()> {
        let started = self.serve(index)?;
        let old = std::mem::replace(
            &mut self.servers.lock().expect("servers lock")[index],
            started,
        );
        old.stop();
        Ok(())
    }

    /// Makes backend `index`'s health checks fail, or pass again
    /// (`blind` false), while its service keeps answering clients: the
    /// backend's host stops answering the load balancer's own addresses
    /// (a `prohibit` route), which only the checks come from under DSR.
    pub fn blind_checks(&self, index: usize, blind: bool) -> anyhow::Result<()> {
        self.unreachable_from(index, (LB_INDEX, "prohibit"), blind)
    }

    /// Makes backend `index`'s service drop its clients' connections, or
    /// serve them again (`dropped` false), while its health checks keep
    /// passing: its replies to the client's addresses go nowhere (a
    /// `blackhole` route), so a client's SYN is never answered, as behind
    /// a firewall rule or a wedged service.
    pub fn drop_clients(&self, index: usize, dropped: bool) -> anyhow::Result<()> {
        self.unreachable_from(index, (CLIENT_INDEX, "blackhole"), dropped)
    }

    /// Adds (`on`) or removes a route of `kind` on backend `index`'s host
    /// to both addresses of the lab host numbered `host`.
    fn unreachable_from(
        &self,
        index: usize,
        (host, kind): (u8, &str),
        on: bool,
    ) -> anyhow::Result<()> {
        let (backend, _, _) = self.backend_host(index);
        let verb = if on { "add" } else { "del" };
        for (to, family) in [
            (ipv4_of(host).to_string() + "/32", "-4"),
            (ipv6_of(host).to_string() + "/128", "-6"),
        ] {
            backend.ip(&[family, "route", verb, kind, &to])?;
        }
        Ok(())
    }

    /// The lab's config file.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join("fulcrum.toml")
    }

    /// Starts `fulcrum run` (it adopts the pinned data plane if there is one)
    /// and returns once it serves; returns what it said on stderr.
    pub fn start_fulcrum(&self) -> anyhow::Result<Vec<String>> {
        self.start_fulcrum_from(&fulcrum_binary()?)
    }

    /// Starts `fulcrum run` from `binary` (another build, for an upgrade).
    pub fn start_fulcrum_from(&self, binary: &Path) -> anyhow::Result<Vec<String>> {
        self.start_fulcrum_as(Launch::HostMounts, binary)
    }

    /// Starts `fulcrum run` from `binary`, entering the load balancer's
    /// namespace as `launch` says.
    pub fn start_fulcrum_as(&self, launch: Launch, binary: &Path) -> anyhow::Result<Vec<String>> {
        let run = Run {
            launch,
            ..Run::default()
        };
        self.start_fulcrum_with(&run, binary)
    }

    /// Starts `fulcrum run` from `binary` as `run` says.
    pub fn start_fulcrum_with(&self, run: &Run<'_>, binary: &Path) -> anyhow::Result<Vec<String>> {
        let mut slot = self.fulcrum.lock().expect("fulcrum lock");
        anyhow::ensure!(slot.is_none(), "fulcrum is already running");
        let fulcrum = Fulcrum::start_as(&self.lb, run, binary, &self.config_path(), &self.places)?;
        let log = fulcrum.log.clone();
        *slot = Some(fulcrum);
        Ok(log)
    }

    /// Waits for `fulcrum run` to exit on its own (after an API detach,
    /// say); returns its exit status.
    pub fn await_fulcrum_exit(&self) -> anyhow::Result<std::process::ExitStatus> {
        self.take_fulcrum()?.exited("did not exit")
    }

    /// `kill -9` of `fulcrum run`; returns the counter reports it printed.
    pub fn kill_fulcrum(&self) -> anyhow::Result<Vec<Report>> {
        self.take_fulcrum()?.stop(libc::SIGKILL)
    }

    fn take_fulcrum(&self) -> anyhow::Result<Fulcrum> {
        self.fulcrum
            .lock()
            .expect("fulcrum lock")
            .take()
            .context("fulcrum is not running")
    }

    /// Runs a `fulcrum` CLI verb against this lab's daemon (its socket
    /// added); returns the exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let output = Command::new(fulcrum_binary()?)
            .args(args)
            .arg("--socket")
            .arg(&self.places.socket)
            .output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// `--pin-root` and `--state-root` as this lab's `fulcrum run` has them.
    pub fn place_args(&self) -> Vec<std::ffi::OsString> {
        self.places.args().iter().map(|&a| a.to_owned()).collect()
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> &Path {
        &self.places.socket
    }

    /// The record of what is installed on the load balancer's interface.
    pub fn records(&self) -> lb_userspace::daemon::records::RecordDir {
        lb_userspace::daemon::records::RecordDir::new(&self.places.state_root, "eth0")
    }

    /// The client host's addresses.
    pub fn client_addrs(&self) -> (Ipv4Addr, Ipv6Addr) {
        self.client_addrs
    }

    /// One scrape of the daemon's `/metrics` (at the default address, in
    /// the load balancer's namespace), parsed.
    pub fn scrape(&self) -> anyhow::Result<crate::scrape::Samples> {
        let (status, body) = crate::scrape::http_get(&self.lb, METRICS, "/metrics")?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}: {body}");
        crate::scrape::Samples::parse(&body)
    }

    /// Waits until the VIPs' and backends' counters stop moving (the same
    /// in `QUIET_READINGS` readings in a row, a poll apart): what was in
    /// flight to a VIP, a retransmitted FIN say, has landed. (The global
    /// counters never rest: health checks and neighbour discovery pass.)
    pub fn await_quiet(&self, timeout: Duration) -> anyhow::Result<()> {
        const QUIET_READINGS: usize = 5;
        let mut readings: Vec<serde_json::Value> = Vec::new();
        wait::until(
            timeout,
            || {
                let (code, out, err) = self.cli(&["status", "--format", "json"])?;
                anyhow::ensure!(code == 0, "fulcrum status: {err}");
                let status: serde_json::Value = serde_json::from_str(&out)?;
                let counts = |entry: &serde_json::Value| {
                    serde_json::json!([entry["packets"], entry["bytes"], entry["new_flows"]])
                };
                let vips = status["vips"].as_array().cloned().unwrap_or_default();
                let reading = vips
                    .iter()
                    .map(|vip| {
                        let backends = vip["backends"].as_array().cloned().unwrap_or_default();
                        serde_json::json!([
                            counts(vip),
                            backends.iter().map(counts).collect::<Vec<_>>()
                        ])
                    })
                    .collect();
                readings.push(reading);
                let last = &readings[readings.len().saturating_sub(QUIET_READINGS)..];
                let quiet = last.len() == QUIET_READINGS && last.iter().all(|r| *r == last[0]);
                Ok(if quiet {
                    Ok(())
                } else {
                    Err(readings.last().cloned())
                })
            },
            |last| Ok(format!("the counters still move: {last:?}")),
        )
    }

    /// The daemon's apply journal.
    pub fn journal(&self) -> &Path {
        &self.places.journal
    }

    /// What `fulcrum run` printed on stderr so far.
    pub fn fulcrum_log(&self) -> Vec<String> {
        let mut slot = self.fulcrum.lock().expect("fulcrum lock");
        slot.as_mut().map_or_else(Vec::new, Fulcrum::log_so_far)
    }

    /// Waits until a line of what `fulcrum run` printed contains `text`;
    /// returns everything it printed so far.
    pub fn await_log(&self, text: &str, timeout: Duration) -> anyhow::Result<Vec<String>> {
        wait::until(
            timeout,
            || {
                let log = self.fulcrum_log();
                let found = log.iter().any(|line| line.contains(text));
                Ok(if found { Ok(log) } else { Err(log) })
            },
            |log| Ok(format!("no {text:?} in the log:\n{}", log.join("\n"))),
        )
    }

    /// Runs `fulcrum detach` for the load balancer's interface.
    pub fn detach(&self) -> anyhow::Result<()> {
        let status = Command::new(fulcrum_binary()?)
            .args(["detach", "--interface", "eth0"])
            .args(self.places.args())
            .status()?;
        anyhow::ensure!(status.success(), "fulcrum detach failed: {status}");
        Ok(())
    }

    /// Detaches the data plane from outside (see `sever_link`).
    pub fn sever_link(&self) -> anyhow::Result<()> {
        sever_link(&self.places.pin_root)
    }

    /// The client's namespace, for traffic of a test's own.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The load balancer's namespace.
    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// The load balancer's MAC on the switched segment.
    pub fn lb_mac() -> [u8; 6] {
        [0x02, 0xf0, 0, 0, 0, LB_INDEX]
    }

    /// Backend `index`'s namespace (config order) and its IPv4 and IPv6
    /// addresses.
    pub fn backend_host(&self, index: usize) -> (&Netns, Ipv4Addr, Ipv6Addr) {
        let (v4, v6) = self.backend_addrs[index];
        (&self.backend_hosts[index], v4, v6)
    }

    /// The prefix of every namespace this lab created.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The PID of the running `fulcrum run`, if any.
    pub fn fulcrum_pid(&self) -> Option<u32> {
        self.fulcrum
            .lock()
            .expect("fulcrum lock")
            .as_ref()
            .map(|f| f.child.id())
    }

    /// Runs `tcp` connections and `udp` flows against each VIP family. UDP
    /// flows use source ports from `first_udp_port` on, so that each is new.
    pub fn drive(&self, tcp: usize, udp: u16, first_udp_port: u16) -> anyhow::Result<Traffic> {
        let web4 = SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT);
        let web6 = SocketAddr::new(IpAddr::V6(VIP6), TCP_PORT);
        let dns4 = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
        let dns6 = SocketAddr::new(IpAddr::V6(VIP6), UDP_PORT);
        Ok(vec![
            (
                "web4",
                traffic::tcp_connections(&self.client, web4, tcp, 4)?,
            ),
            (
                "dns4",
                traffic::udp_flows(&self.client, dns4, udp, first_udp_port)?,
            ),
            (
                "web6",
                traffic::tcp_connections(&self.client, web6, tcp, 4)?,
            ),
            (
                "dns6",
                traffic::udp_flows(&self.client, dns6, udp, first_udp_port)?,
            ),
        ])
    }

    /// Asks `fulcrum` for its counters (SIGUSR1) and waits until it has
    /// printed them; they are returned, in order, by `stop_fulcrum`.
    pub fn request_counters(&self) -> anyhow::Result<()> {
        self.fulcrum
            .lock()
            .expect("fulcrum lock")
            .as_mut()
            .context("fulcrum is not running")?
            .report_counters()
    }

    /// Stops `fulcrum` (SIGTERM) and returns every counter report it
    /// printed; the last one is from its exit.
    pub fn stop_fulcrum(&self) -> anyhow::Result<Vec<Report>> {
        self.take_fulcrum()?.stop(libc::SIGTERM)
    }

    /// Whether an XDP program is attached to the load balancer's interface.
    pub fn lb_has_xdp(&self) -> anyhow::Result<bool> {
        self.lb.enter(|| {
            let output = Command::new("ip")
                .args(["-d", "link", "show", "eth0"])
                .output()?;
            Ok(String::from_utf8_lossy(&output.stdout).contains("prog/xdp"))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut servers) = self.servers.lock() {
            for backend in servers.drain(..) {
                backend.stop();
            }
        }
        drop(self.fulcrum.lock().map(|mut f| f.take()));
        // The data plane outlives fulcrum by design: remove its pins too.
        let pins = PinDir::new(&self.places.pin_root, "eth0");
        let _ = pins.remove();
        let _ = std::fs::remove_dir_all(&self.places.pin_root);
        for (index, root) in self.decap_roots.iter().enumerate() {
            let _ = self.decap(index, root, ("detach", &[]));
            let _ = std::fs::remove_dir_all(root);
        }
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}
