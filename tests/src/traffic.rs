//! Real traffic for the lab: backend servers that answer every TCP
//! connection (and every line sent on it after) and every UDP datagram with
//! their own name, and clients that open connections, keep long-lived
//! sessions, or send datagrams to a VIP and tally who answered.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::netns::Netns;

/// Long enough for TCP's own SYN retransmissions (after 1 s and 3 s): a
/// connection that needs one still completes, as it would for a real client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_MS: i32 = 100;

/// Who answered how often, and what failed.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Answers per backend name.
    pub answers: BTreeMap<String, u64>,
    /// Attempts that got no answer.
    pub failures: u64,
    /// The first failure, for the message.
    pub first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, result: anyhow::Result<String>) {
        match result {
            Ok(name) => *self.answers.entry(name).or_default() += 1,
            Err(err) => {
                self.failures += 1;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    /// Adds `other`'s answers and failures to this tally.
    pub fn merge(&mut self, other: Tally) {
        for (name, n) in other.answers {
            *self.answers.entry(name).or_default() += n;
        }
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Answers in all.
    pub fn answered(&self) -> u64 {
        self.answers.values().sum()
    }

    /// `name`'s share of the answers (0..1).
    pub fn share(&self, name: &str) -> f64 {
        let total = self.answered();
        if total == 0 {
            return 0.0;
        }
        *self.answers.get(name).unwrap_or(&0) as f64 / total as f64
    }
}

fn readable(fd: i32) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut poll, 1, POLL_MS) > 0 }
}

/// Servers of one backend; they stop when `stop` is set.
pub fn start_servers(
    host: &Netns,
    name: &str,
    tcp_port: u16,
    udp: &[SocketAddr],
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let (listener, udp_sockets) = host.enter(|| {
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, tcp_port))
            .context("binding the TCP server")?;
        let sockets = udp
            .iter()
            .map(|addr| UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((listener, sockets))
    })?;
    let mut threads = Vec::new();
    let reply = format!("{name}\n");
    {
        let (stop, reply) = (stop.clone(), reply.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if readable(listener.as_raw_fd())
                    && let Ok((stream, _)) = listener.accept()
                {
                    let (stop, reply) = (stop.clone(), reply.clone());
                    std::thread::spawn(move || serve_connection(stream, &reply, &stop));
                }
            }
        }));
    }
    for socket in udp_sockets {
        let (stop, reply) = (stop.clone(), reply.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if readable(socket.as_raw_fd())
                    && let Ok((_, from)) = socket.recv_from(&mut buf)
                {
                    let _ = socket.send_to(reply.as_bytes(), from);
                }
            }
        }));
    }
    Ok(threads)
}

/// An HTTP health endpoint on `port` in `host`: every request is answered
/// `200 OK` after `delay_ms` (read at each request), until `stop` is set.
pub fn health_endpoint(
    host: &Netns,
    port: u16,
    delay_ms: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = host.enter(|| {
        TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).context("binding the health endpoint")
    })?;
    let (delay_ms, stop) = (delay_ms.clone(), stop.clone());
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if readable(listener.as_raw_fd())
                && let Ok((mut stream, _)) = listener.accept()
            {
                let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
                std::thread::spawn(move || {
                    let mut request = [0u8; 1024];
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.read(&mut request);
                    std::thread::sleep(delay);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        }
    }))
}

/// Answers a connection with `reply` at once and after every chunk the
/// client sends, until the client closes it or `stop` is set.
/// Serves one connection: the backend's name at once, then after each
/// read the name again, except for two commands: `bulk N` is answered with
/// N bytes and then the name (a download), and `sink N` reads N bytes
/// (those after the command's newline included) and then answers the name
/// (an upload).
fn serve_connection(mut stream: TcpStream, reply: &str, stop: &AtomicBool) {
    if stream.write_all(reply.as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(POLL_MS as u64)));
    let mut buf = [0u8; 4096];
    let mut sinking: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let text = &buf[..n];
                let command = |name: &str| {
                    let line = text.split(|&b| b == b'\n').next()?;
                    let count = std::str::from_utf8(line).ok()?.strip_prefix(name)?;
                    Some((count.trim().parse::<usize>().ok()?, line.len() + 1))
                };
                let answer = if sinking > 0 {
                    sinking = sinking.saturating_sub(n);
                    sinking == 0
                } else if let Some((count, _)) = command("bulk ") {
                    let chunk = [b'x'; 4096];
                    let mut left = count;
                    while left > 0 {
                        let part = left.min(chunk.len());
                        if stream.write_all(&chunk[..part]).is_err() {
                            return;
                        }
                        left -= part;
                    }
                    true
                } else if let Some((count, header)) = command("sink ") {
                    sinking = count.saturating_sub(n.saturating_sub(header));
                    sinking == 0
                } else {
                    true
                };
                if answer && stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Downloads `bytes` through `vip` from the client namespace (`bulk`):
/// returns who served it, once every byte and the closing name arrived.
pub fn download(client: &Netns, vip: SocketAddr, bytes: usize) -> anyhow::Result<String> {
    let stream = client.enter(|| Ok(TcpStream::connect_timeout(&vip, IO_TIMEOUT)?))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let backend = read_name(&mut reader)?;
    reader
        .get_mut()
        .write_all(format!("bulk {bytes}\n").as_bytes())?;
    let mut body = vec![0u8; bytes];
    reader
        .read_exact(&mut body)
        .with_context(|| format!("downloading {bytes} bytes from {backend}"))?;
    anyhow::ensure!(body.iter().all(|&b| b == b'x'), "the download is corrupt");
    let closing = read_name(&mut reader)?;
    anyhow::ensure!(closing == backend, "{closing} closed what {backend} began");
    Ok(backend)
}

/// Uploads `bytes` through `vip` from the client namespace (`sink`):
/// returns who took it, once it said it had every byte.
pub fn upload(client: &Netns, vip: SocketAddr, bytes: usize) -> anyhow::Result<String> {
    let stream = client.enter(|| Ok(TcpStream::connect_timeout(&vip, IO_TIMEOUT)?))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let backend = read_name(&mut reader)?;
    let mut message = format!("sink {bytes}\n").into_bytes();
    message.resize(message.len() + bytes, b'y');
    reader
        .get_mut()
        .write_all(&message)
        .with_context(|| format!("uploading {bytes} bytes to {backend}"))?;
    let receipt = read_name(&mut reader)?;
    anyhow::ensure!(receipt == backend, "{receipt} answered for {backend}");
    Ok(backend)
}

fn read_name(reader: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut answer = String::new();
    reader.read_line(&mut answer).context("read")?;
    let name = answer.trim();
    anyhow::ensure!(!name.is_empty(), "empty answer");
    Ok(name.to_string())
}

/// One connection to `vip`, given up after `patience` unanswered: who
/// answered on it.
fn tcp_once(vip: SocketAddr, patience: Duration) -> anyhow::Result<String> {
    let stream = TcpStream::connect_timeout(&vip, patience).context("connect")?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    read_name(&mut BufReader::new(stream))
}

/// A long-lived TCP connection to a VIP and the backend that answered it.
pub struct Session {
    reader: BufReader<TcpStream>,
    /// Who answered when it opened.
    pub backend: String,
}

impl Session {
    /// Opens a connection to `vip` from the client namespace.
    pub fn open(client: &Netns, vip: SocketAddr) -> anyhow::Result<Self> {
        let stream = client.enter(|| Ok(TcpStream::connect_timeout(&vip, IO_TIMEOUT)?))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut reader = BufReader::new(stream);
        let backend = read_name(&mut reader)?;
        Ok(Self { reader, backend })
    }

    /// The client's end: the flow's source address and port.
    pub fn source(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// Sends a line on the open connection; returns who answered.
    pub fn ask(&mut self) -> anyhow::Result<String> {
        self.reader.get_mut().write_all(b"?\n").context("write")?;
        read_name(&mut self.reader)
    }
}

/// Opens `count` TCP connections to `vip` from the client namespace (the
/// kernel picks source ports, as for any real client), `workers` at a time.
pub fn tcp_connections(
    client: &Netns,
    vip: SocketAddr,
    count: usize,
    workers: usize,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || -> anyhow::Result<Tally> {
                    client.join_current_thread()?;
                    let mut tally = Tally::default();
                    for _ in (w..count).step_by(workers) {
                        tally.record(tcp_once(vip, IO_TIMEOUT));
                    }
                    Ok(tally)
                })
            })
            .collect();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
            tally.merge(part);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(tally)
}

/// How clients keep connecting: so many at a time, each giving up on a
/// connection after `patience` unanswered (a few SYN retransmissions) and
/// opening its next no sooner than `pace` after its last.
#[derive(Clone, Copy, Debug)]
pub struct Clients {
    /// Clients connecting at once.
    pub workers: usize,
    /// How long one waits for an answer.
    pub patience: Duration,
    /// The least time between one client's connections.
    pub pace: Duration,
}

/// Opens TCP connections to `vip` from the client namespace, as `clients`
/// says, until `stop` is set. What they met, so far, is in `tally`.
pub fn keep_connecting(
    client: &Netns,
    vip: SocketAddr,
    clients: Clients,
    (stop, tally): (&AtomicBool, &Mutex<Tally>),
) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients.workers)
            .map(|_| {
                scope.spawn(move || -> anyhow::Result<()> {
                    client.join_current_thread()?;
                    while !stop.load(Ordering::Relaxed) {
                        let started = std::time::Instant::now();
                        let met = tcp_once(vip, clients.patience);
                        tally.lock().expect("tally lock").record(met);
                        // Stimulus pacing, not a wait for an event.
                        std::thread::sleep(clients.pace.saturating_sub(started.elapsed()));
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok(())
    })
}

/// Stops the clients when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `body` while `clients` keep connecting to `vip` from the client
/// namespace; returns what they met.
pub fn while_connecting(
    client: &Netns,
    vip: SocketAddr,
    clients: Clients,
    body: impl FnOnce(),
) -> Tally {
    let stop = AtomicBool::new(false);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        let driver = scope.spawn(|| keep_connecting(client, vip, clients, (&stop, &tally)));
        {
            let _stop = Stop(&stop);
            body();
        }
        driver
            .join()
            .expect("the clients' thread")
            .expect("the clients connect");
    });
    tally.into_inner().expect("tally")
}

fn udp_once(vip: SocketAddr, source_port: u16) -> anyhow::Result<String> {
    let bind: SocketAddr = match vip.ip() {
        IpAddr::V4(_) => ([0, 0, 0, 0], source_port).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, source_port).into(),
    };
    let socket = UdpSocket::bind(bind).with_context(|| format!("bind port {source_port}"))?;
    socket.connect(vip)?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = [0u8; 256];
    let mut last_error = None;
    // A lost datagram is retried on the same 5-tuple: the same flow.
    for _ in 0..3 {
        socket.send(b"hello")?;
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.expect("three attempts")).context("no UDP answer")
}

/// Sends one request on each of `count` UDP flows to `vip`, from source
/// ports `first_port`, `first_port + 1`, ... so that every flow is new.
pub fn udp_flows(
    client: &Netns,
    vip: SocketAddr,
    count: u16,
    first_port: u16,
) -> anyhow::Result<Tally> {
    client.enter(|| {
        let mut tally = Tally::default();
        for i in 0..count {
            tally.record(udp_once(vip, first_port + i));
        }
        Ok(tally)
    })
}
