//! The group lab: two Fulcrum hosts behind one router that spreads flows
//! over them with ECMP (the kernel's L4 multipath hash), the routes learnt
//! over eBGP from BIRD on each host, which announces what its `fulcrum
//! run` tells it. The hosts and three backends share one segment (L2
//! DSR); the client sits behind the router on a subnet of its own, so the
//! router's route is the only way to the VIPs. Everything is removed on
//! drop, also when a test fails.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;
use lb_userspace::{dataplane::pins::PinDir, monitor::report::Report};

use crate::{
    fixture::{require_root, standalone_program, xdp_program},
    lab::{
        self, BackendSpec, Fulcrum, LAB_COUNTER, Places, Servers, TCP_PORT, Topology, VIP4, VIP6,
        add_backends, add_host, add_routed_host, fulcrum_binary, ipv4_of, ipv6_of, prepare_backend,
    },
    netns::Netns,
    wait,
};

/// The group's name.
pub const GROUP: &str = "lab-edge";
/// The router's index on the hosts' segment.
const ROUTER_INDEX: u8 = 1;
/// The load-balancer hosts' indexes.
const HOST_INDEXES: [u8; 2] = [3, 4];
/// The router's AS; host `i` is `HOST_AS + i`.
const ROUTER_AS: u32 = 65000;
const HOST_AS: u32 = 65001;
/// How long BIRD may take to start listening.
const BIRD_START: Duration = Duration::from_secs(10);

/// A BIRD daemon in a namespace, in the foreground; killed (by PID) on
/// drop.
struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Bird {
    fn start(netns: &Netns, dir: &Path, config: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config)?;
        let socket = dir.join("bird.ctl");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.name()))
            .args(["--", "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bird (Debian's bird2; `cargo xtask setup` installs it)")?;
        let mut bird = Self { child, socket };
        wait::until(
            BIRD_START,
            || {
                if let Some(status) = bird.child.try_wait()? {
                    bail!("bird exited with {status}; its config:\n{config}");
                }
                Ok(if bird.socket.exists() {
                    Ok(())
                } else {
                    Err(())
                })
            },
            |()| Ok("bird did not make its control socket".into()),
        )?;
        Ok(bird)
    }

    /// `birdc -s SOCKET <args>`'s output.
    fn birdc(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running birdc")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // birdc exits 0 also when BIRD refuses; its greeting says it answered.
        anyhow::ensure!(
            output.status.success() && text.starts_with("BIRD "),
            "birdc {}: {}{}",
            args.join(" "),
            text,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(text)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// BGP timers short enough for a test: sessions come up within seconds
/// of both ends listening.
const QUICK_BGP: &str = "\tconnect delay time 1;\n\tconnect retry time 2;\n\
                         \terror wait time 1, 4;\n\thold time 9;\n\tkeepalive time 3;\n";

/// BIRD on the router: a session per host, ECMP into the kernel.
fn router_bird(hosts: usize) -> String {
    let mut text = format!(
        "router id {};\nprotocol device {{ scan time 1; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n",
        ipv4_of(ROUTER_INDEX)
    );
    for (i, index) in HOST_INDEXES.iter().take(hosts).enumerate() {
        for (family, local, neighbour) in [
            (
                "ipv4",
                IpAddr::V4(ipv4_of(ROUTER_INDEX)),
                IpAddr::V4(ipv4_of(*index)),
            ),
            (
                "ipv6",
                IpAddr::V6(ipv6_of(ROUTER_INDEX)),
                IpAddr::V6(ipv6_of(*index)),
            ),
        ] {
            text += &format!(
                "protocol bgp host{i}_{family} {{\n\tlocal {local} as {ROUTER_AS};\n\
                 \tneighbor {neighbour} as {};\n{QUICK_BGP}\
                 \t{family} {{ import all; export none; }};\n}}\n",
                HOST_AS + i as u32
            );
        }
    }
    text
}

/// BIRD on host `i`, as docs/scale-out.md's minimal `bird.conf`: it includes the
/// file `fulcrum run` writes and exports Fulcrum's protocols only.
fn host_bird(i: usize, include: &Path) -> String {
    let index = HOST_INDEXES[i];
    let mut text = format!(
        "router id {};\nprotocol device {{ scan time 1; }}\ninclude \"{}\";\n",
        ipv4_of(index),
        include.display()
    );
    for (family, local, neighbour, protocol) in [
        (
            "ipv4",
            IpAddr::V4(ipv4_of(index)),
            IpAddr::V4(ipv4_of(ROUTER_INDEX)),
            "fulcrum4",
        ),
        (
            "ipv6",
            IpAddr::V6(ipv6_of(index)),
            IpAddr::V6(ipv6_of(ROUTER_INDEX)),
            "fulcrum6",
        ),
    ] {
        text += &format!(
            "protocol bgp router_{family} {{\n\tlocal {local} as {};\n\
             \tneighbor {neighbour} as {ROUTER_AS};\n{QUICK_BGP}\
             \t{family} {{ import none; export where proto = \"{protocol}\"; }};\n}}\n",
            HOST_AS + i as u32
        );
    }
    text
}

/// One load-balancer host: its namespace, BIRD, and `fulcrum run`.
struct Host {
    places: Places,
    config: PathBuf,
    fulcrum: Mutex<Option<Fulcrum>>,
    bird: Bird,
    netns: Netns,
}

/// A running group lab. Drop tears it all down.
pub struct GroupLab {
    servers: Vec<Servers>,
    hosts: Vec<Host>,
    router_bird: Bird,
    config_dir: PathBuf,
    /// The backends, in config order.
    pub backends: Vec<BackendSpec>,
    _peer_pass: aya::Ebpf,
    // Namespaces go last, after everything running in them.
    client: Netns,
    router: Netns,
    backend_hosts: Vec<Netns>,
    switch: Netns,
}

impl GroupLab {
    /// Builds the namespaces, starts BIRD everywhere, the backends'
    /// servers, and `fulcrum run` on both hosts with the same config
    /// (`extra` appended), each announcing through its own BIRD.
    pub fn start(backends: &[BackendSpec], extra: &str) -> anyhow::Result<Self> {
        require_root();
        let id = format!(
            "fg{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let switch = Netns::create(&format!("{id}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let router = add_host(&switch, &format!("{id}-rt"), "rt", ROUTER_INDEX)?;
        let (client, _, _) = add_routed_host(&router, &format!("{id}-client"), "eth1", 1, 2)?;
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/fib_multipath_hash_policy", "1"),
            ("net/ipv6/fib_multipath_hash_policy", "1"),
        ] {
            router.sysctl(key, value)?;
        }
        let (backend_hosts, backend_addrs) = add_backends(&switch, &id, backends)?;
        for host in &backend_hosts {
            prepare_backend(host)?;
            host.ip(&[
                "route",
                "add",
                "default",
                "via",
                &ipv4_of(ROUTER_INDEX).to_string(),
            ])?;
            host.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ipv6_of(ROUTER_INDEX).to_string(),
            ])?;
        }
        let config_dir = std::env::temp_dir().join(&id);
        let router_bird = Bird::start(&router, &config_dir.join("rt"), &router_bird(2))?;
        // NAPI for each host's XDP_TX on veth (see docs/troubleshooting.md).
        let mut peer_pass = standalone_program("lab_peer_pass")?;
        let program = xdp_program(&mut peer_pass, "lab_peer_pass")?;
        let mut hosts = Vec::new();
        let config = lab::fulcrum_config(backends, &backend_addrs, Topology::Switched);
        for (i, index) in HOST_INDEXES.into_iter().enumerate() {
            let netns = add_host(&switch, &format!("{id}-lb{i}"), &format!("lb{i}"), index)?;
            let peer = format!("p-lb{i}");
            switch.enter(|| {
                program.attach(&peer, XdpMode::Driver)?;
                Ok(())
            })?;
            let dir = config_dir.join(format!("lb{i}"));
            std::fs::create_dir_all(&dir)?;
            // As systemd-tmpfiles would at boot: an empty include, so that
            // BIRD starts before `fulcrum run` has said anything.
            let include = dir.join("bird-vips.conf");
            std::fs::write(&include, "")?;
            let bird = Bird::start(&netns, &dir.join("bird"), &host_bird(i, &include))?;
            let text = format!(
                "{config}\n[group]\nname = \"{GROUP}\"\n\n[announce]\nbird_include = \"{}\"\n\
                 bird_socket = \"{}\"\ndrain_s = 2\n{extra}",
                include.display(),
                bird.socket.display()
            );
            let path = dir.join("fulcrum.toml");
            std::fs::write(&path, text)?;
            let pin_root = Path::new(lb_userspace::dataplane::pins::DEFAULT_ROOT)
                .with_file_name(format!("fulcrum-lab-{id}-lb{i}"));
            hosts.push(Host {
                places: Places {
                    pin_root,
                    state_root: dir.join("state"),
                    socket: dir.join("run").join("api.sock"),
                    journal: dir.join("journal.jsonl"),
                },
                config: path,
                fulcrum: Mutex::new(None),
                bird,
                netns,
            });
        }
        let lab = Self {
            servers: Vec::new(),
            hosts,
            router_bird,
            config_dir,
            backends: backends.to_vec(),
            _peer_pass: peer_pass,
            client,
            router,
            backend_hosts,
            switch,
        };
        let mut lab = lab;
        for (host, backend) in lab.backend_hosts.iter().zip(&lab.backends) {
            lab.servers.push(Servers::start(host, &backend.name)?);
        }
        for i in 0..lab.hosts.len() {
            lab.start_fulcrum(i)?;
        }
        Ok(lab)
    }

    /// Starts `fulcrum run` on host `i` (adopting its pinned data plane if
    /// there is one); returns once it serves.
    pub fn start_fulcrum(&self, i: usize) -> anyhow::Result<()> {
        let host = &self.hosts[i];
        let mut slot = host.fulcrum.lock().expect("fulcrum lock");
        anyhow::ensure!(slot.is_none(), "fulcrum already runs on host {i}");
        *slot = Some(Fulcrum::start(
            &host.netns,
            &fulcrum_binary()?,
            &host.config,
            &host.places,
        )?);
        Ok(())
    }

    /// `kill -9` of host `i`'s `fulcrum run` (or, after `fulcrum detach`,
    /// the reaping of the daemon that exited by itself).
    pub fn kill_fulcrum(&self, i: usize) -> anyhow::Result<()> {
        let fulcrum = self.hosts[i]
            .fulcrum
            .lock()
            .expect("fulcrum lock")
            .take()
            .context("fulcrum is not running")?;
        fulcrum.stop(libc::SIGKILL).map(drop)
    }

    /// Runs a `fulcrum` verb against host `i`'s daemon (its socket added);
    /// returns the exit code, stdout and stderr.
    pub fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let output = Command::new(fulcrum_binary()?)
            .args(args)
            .arg("--socket")
            .arg(&self.hosts[i].places.socket)
            .output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Host `i`'s status report.
    pub fn status(&self, i: usize) -> anyhow::Result<Report> {
        let (code, stdout, stderr) = self.cli(i, &["status", "--format", "json"])?;
        anyhow::ensure!(code == 0, "fulcrum status on host {i}: {stderr}");
        serde_json::from_str(&stdout).context("parsing the status")
    }

    /// One scrape of host `i`'s `/metrics`, parsed.
    pub fn scrape(&self, i: usize) -> anyhow::Result<crate::scrape::Samples> {
        let (status, body) =
            crate::scrape::http_get(&self.hosts[i].netns, lab::METRICS, "/metrics")?;
        anyhow::ensure!(
            status == 200,
            "GET /metrics on host {i} answered {status}: {body}"
        );
        crate::scrape::Samples::parse(&body)
    }

    /// Host `i`'s API socket.
    pub fn socket(&self, i: usize) -> &Path {
        &self.hosts[i].places.socket
    }

    /// Host `i`'s config file.
    pub fn config_path(&self, i: usize) -> &Path {
        &self.hosts[i].config
    }

    /// When the router's BIRD learnt each path of `vip`'s route: the
    /// protocol and the time of day in seconds (`show route for VIP`).
    /// BIRD prints a time kept on its monotonic clock, so the same path
    /// can show a millisecond apart from one call to the next.
    pub fn router_paths(&self, vip: IpAddr) -> anyhow::Result<Vec<(String, f64)>> {
        let text = self
            .router_bird
            .birdc(&["show", "route", "for", &vip.to_string()])?;
        text.split('[')
            .skip(1)
            .filter_map(|part| part.split_once(']').map(|(inside, _)| inside))
            .filter(|inside| !inside.starts_with("AS"))
            .map(|inside| {
                let (protocol, time) = inside
                    .split_once(' ')
                    .with_context(|| format!("a path without a time: [{inside}]"))?;
                let seconds = time
                    .split(':')
                    .try_fold(0.0, |total, part| {
                        part.parse::<f64>().map(|v| total * 60.0 + v)
                    })
                    .with_context(|| format!("the time of [{inside}]"))?;
                Ok((protocol.to_string(), seconds))
            })
            .collect()
    }

    /// `fulcrum detach --interface eth0` on host `i`, without its daemon
    /// (stop it first); returns the exit code and stderr.
    pub fn detach_offline(&self, i: usize) -> anyhow::Result<(i32, String)> {
        let places = &self.hosts[i].places;
        let output = Command::new(fulcrum_binary()?)
            .args(["detach", "--interface", "eth0"])
            .args(places.args())
            .output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// What host `i`'s BIRD exports (`show route export` of its sessions).
    pub fn host_routes(&self, i: usize) -> anyhow::Result<String> {
        self.hosts[i].bird.birdc(&["show", "route"])
    }

    /// The next hops the router's kernel has for `vip`: one per host that
    /// announces it.
    pub fn next_hops(&self, vip: IpAddr) -> anyhow::Result<Vec<IpAddr>> {
        let family = if vip.is_ipv6() { "-6" } else { "-4" };
        let output = Command::new("ip")
            .args([
                "-n",
                self.router.name(),
                family,
                "route",
                "show",
                &vip.to_string(),
            ])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "ip route show {vip} in the router: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let mut hops: Vec<IpAddr> = text
            .split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .filter(|(word, _)| *word == "via")
            .filter_map(|(_, hop)| hop.parse().ok())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// Waits until the router's route to `vip` has exactly `want` next hops;
    /// returns how long that took.
    pub fn await_next_hops(
        &self,
        vip: IpAddr,
        want: &[IpAddr],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        wait::until(
            timeout,
            || Ok(self.next_hops(vip)?).map(|hops| if hops == want { Ok(()) } else { Err(hops) }),
            |hops| {
                Ok(format!(
                    "the router's route to {vip} goes via {hops:?}, not {want:?}; router BGP:\n{}",
                    self.router_bird.birdc(&["show", "protocols"])?
                ))
            },
        )?;
        Ok(start.elapsed())
    }

    /// Waits until host `i`'s status satisfies `done`; returns it.
    pub fn await_status(
        &self,
        i: usize,
        timeout: Duration,
        done: impl Fn(&Report) -> bool,
    ) -> anyhow::Result<Report> {
        wait::until(
            timeout,
            || {
                let report = self.status(i)?;
                Ok(if done(&report) {
                    Ok(report)
                } else {
                    Err(report)
                })
            },
            |report| {
                Ok(format!(
                    "host {i}'s status did not get there: {}",
                    serde_json::to_string_pretty(&report)?
                ))
            },
        )
    }

    /// Host `i`'s address on the segment (the router's next hop to it).
    pub fn host_addr(&self, i: usize, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(ipv6_of(HOST_INDEXES[i]))
        } else {
            IpAddr::V4(ipv4_of(HOST_INDEXES[i]))
        }
    }

    /// Detaches host `i`'s data plane from outside (`BPF_LINK_DETACH`).
    pub fn sever_link(&self, i: usize) -> anyhow::Result<()> {
        lab::sever_link(&self.hosts[i].places.pin_root)
    }

    /// Takes host `i`'s link down at the switch, as a pulled cable would.
    pub fn cut_link(&self, i: usize) -> anyhow::Result<()> {
        self.switch
            .ip(&["link", "set", &format!("p-lb{i}"), "down"])
    }

    /// Cuts host `i` off silently, or lets it back: its switch port stops
    /// (or resumes) forwarding while its link stays up, as a failed
    /// switch path does; nothing on the host sees a link go down.
    pub fn isolate(&self, i: usize, cut_off: bool) -> anyhow::Result<()> {
        // Bridge port states: 0 disabled, 3 forwarding.
        let state = if cut_off { "0" } else { "3" };
        let port = format!("p-lb{i}");
        self.switch
            .exec("bridge", &["link", "set", "dev", &port, "state", state])
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The TCP VIP of a family.
    pub fn web(ipv6: bool) -> SocketAddr {
        if ipv6 {
            SocketAddr::new(IpAddr::V6(VIP6), TCP_PORT)
        } else {
            SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT)
        }
    }

    /// What every `fulcrum run` printed on stderr so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            if let Some(fulcrum) = host.fulcrum.lock().expect("fulcrum lock").as_mut() {
                text += &format!("--- host {i}:\n{}\n", fulcrum.log_so_far().join("\n"));
            }
        }
        text
    }
}

impl Drop for GroupLab {
    fn drop(&mut self) {
        for servers in self.servers.drain(..) {
            servers.stop();
        }
        for host in &self.hosts {
            drop(host.fulcrum.lock().map(|mut f| f.take()));
            // The data plane outlives fulcrum by design: remove its pins too.
            let _ = PinDir::new(&host.places.pin_root, "eth0").remove();
            let _ = std::fs::remove_dir_all(&host.places.pin_root);
        }
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}
