//! QUIC for the lab: servers that issue QUIC-LB connection IDs (the
//! plaintext layout of draft-ietf-quic-load-balancers-21, with a server ID
//! the load balancer routes by) or plain random ones, and answer every
//! request stream with their name; and clients that ask who serves them and
//! move their connection to a new local port (connection migration).
//!
//! Servers and clients are quinn endpoints whose UDP sockets are opened
//! inside the namespace they belong to; each runs on a tokio runtime of its
//! own, so that it is served between calls. Every wait is bounded.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use quinn::{
    ClientConfig, Connection, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig,
    IdleTimeout, Incoming, RecvStream, SendStream, ServerConfig, TokioRuntime, TransportConfig,
    rustls::{
        RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};
use tokio::{runtime::Runtime, sync::oneshot};

use crate::netns::Netns;

/// The name every server's certificate is for, and clients ask for.
pub const SERVER_NAME: &str = "fulcrum.test";
/// The longest connection ID QUIC allows (RFC 9000, 17.2).
pub const MAX_CID_LEN: usize = 20;
/// The highest config rotation codepoint that names a config (7 is for
/// CIDs the load balancer must route without one).
pub const MAX_CONFIG_ID: u8 = 6;
/// The longest server ID the plaintext algorithm carries.
pub const MAX_SERVER_ID_LEN: usize = 15;
/// Nonce bytes a QUIC-LB CID carries at least.
pub const MIN_NONCE_LEN: usize = 4;
/// Bound on a client's handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one request and its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that hears nothing this long is gone (both ends).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the wait for closed connections to drain at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request a server reads, or answer a client reads.
const MAX_MESSAGE: usize = 1024;

/// QUIC-LB connection IDs in the plaintext layout: the first octet holds
/// the config rotation codepoint (top 3 bits) and the CID's length less
/// one (low 5 bits), then the server ID, then nonce bytes fresh for every
/// CID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdCids {
    config_id: u8,
    server_id: Vec<u8>,
    cid_len: usize,
}

impl ServerIdCids {
    /// CIDs of `cid_len` octets carrying `server_id` under config
    /// `config_id`. Fails unless the config is 0..=6, the server ID 1..=15
    /// octets, and the CID long enough for a 4-octet nonce but at most 20.
    pub fn new(config_id: u8, server_id: &[u8], cid_len: usize) -> anyhow::Result<Self> {
        ensure!(
            config_id <= MAX_CONFIG_ID,
            "config rotation codepoint {config_id} is not 0..={MAX_CONFIG_ID}"
        );
        ensure!(
            (1..=MAX_SERVER_ID_LEN).contains(&server_id.len()),
            "a server ID of {} octets is not 1..={MAX_SERVER_ID_LEN}",
            server_id.len()
        );
        let shortest = 1 + server_id.len() + MIN_NONCE_LEN;
        ensure!(
            (shortest..=MAX_CID_LEN).contains(&cid_len),
            "a CID of {cid_len} octets with a {}-octet server ID is not {shortest}..={MAX_CID_LEN}",
            server_id.len()
        );
        Ok(Self {
            config_id,
            server_id: server_id.to_vec(),
            cid_len,
        })
    }

    /// The server ID the CIDs carry.
    pub fn server_id(&self) -> &[u8] {
        &self.server_id
    }

    /// The CID's first octet: config rotation and self-encoded length.
    fn first_octet(&self) -> u8 {
        // cid_len is at most 20, so the length fits the low 5 bits.
        (self.config_id << 5) | ((self.cid_len - 1) as u8 & 0x1f)
    }

    /// One CID, its nonce octets drawn from `nonce` in order.
    pub fn cid(&self, mut nonce: impl FnMut() -> u8) -> Vec<u8> {
        let mut cid = Vec::with_capacity(self.cid_len);
        cid.push(self.first_octet());
        cid.extend_from_slice(&self.server_id);
        cid.resize_with(self.cid_len, &mut nonce);
        cid
    }

    /// Whether `cid` has this layout's length, first octet and server ID
    /// (so a load balancer that knows the config routes it to this server).
    pub fn carries(&self, cid: &[u8]) -> bool {
        cid.len() == self.cid_len
            && cid[0] == self.first_octet()
            && cid[1..=self.server_id.len()] == self.server_id
    }
}

/// Which connection IDs a [`QuicServer`] issues for its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidScheme {
    /// Random CIDs of this many octets (1..=20), as a server that knows
    /// nothing of QUIC-LB issues them: the control case.
    Random(usize),
    /// QUIC-LB CIDs that carry the server's ID.
    ServerId(ServerIdCids),
}

impl CidScheme {
    /// The length of every CID of the scheme.
    fn cid_len(&self) -> usize {
        match self {
            Self::Random(len) => *len,
            Self::ServerId(cids) => cids.cid_len,
        }
    }
}

/// Fills `buf` from the kernel's random source (getrandom(2)).
fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(got) {
            Ok(got) => filled += got,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                // Only a signal can interrupt it; nothing else fails for a
                // few bytes on a Linux that has the call.
                assert_eq!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted,
                    "getrandom: {err}"
                );
            }
        }
    }
}

/// quinn's source of a server's CIDs: the scheme's, each one recorded.
struct Generator {
    scheme: CidScheme,
    issued: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ConnectionIdGenerator for Generator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut random = [0u8; MAX_CID_LEN];
        fill_random(&mut random);
        let cid = match &self.scheme {
            CidScheme::Random(len) => random[..*len].to_vec(),
            CidScheme::ServerId(cids) => {
                let mut nonce = random.into_iter();
                cids.cid(|| nonce.next().unwrap_or_default())
            }
        };
        let id = ConnectionId::new(&cid);
        self.issued.lock().expect("issued CIDs lock").push(cid);
        id
    }

    fn cid_len(&self) -> usize {
        self.scheme.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A runtime for one endpoint: a worker of its own serves it between calls.
fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// Both ends' transport settings: bounded idleness, migration allowed.
fn transport() -> anyhow::Result<Arc<TransportConfig>> {
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT)?));
    Ok(Arc::new(transport))
}

/// A QUIC server in a backend's namespace. Every bidirectional stream is
/// read to its end and answered with the server's name and a newline.
/// Stops (closing its connections) when dropped.
pub struct QuicServer {
    cert: CertificateDer<'static>,
    issued: Arc<Mutex<Vec<Vec<u8>>>>,
    answered: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl QuicServer {
    /// Starts a server on `bind` (a backend binds the VIP it holds on
    /// `lo`, so that it answers from it) inside `host`, answering as
    /// `name` and issuing CIDs as `cids` says. Its certificate, made now
    /// and self-signed for [`SERVER_NAME`], is [`QuicServer::cert`].
    pub fn start(
        host: &Netns,
        bind: SocketAddr,
        name: &str,
        cids: CidScheme,
    ) -> anyhow::Result<Self> {
        if let CidScheme::Random(len) = cids {
            ensure!(
                (1..=MAX_CID_LEN).contains(&len),
                "random CIDs of {len} octets: not 1..={MAX_CID_LEN}"
            );
        }
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .context("making the server's certificate")?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let mut server_config = ServerConfig::with_single_cert(vec![cert.clone()], key)
            .context("the server's TLS config")?;
        server_config.transport_config(transport()?);

        let issued = Arc::new(Mutex::new(Vec::new()));
        let mut endpoint_config = EndpointConfig::default();
        {
            let issued = issued.clone();
            endpoint_config.cid_generator(move || {
                Box::new(Generator {
                    scheme: cids.clone(),
                    issued: issued.clone(),
                })
            });
        }

        let socket =
            host.enter(|| UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}")))?;
        let runtime = runtime()?;
        let endpoint = {
            let _context = runtime.enter();
            Endpoint::new(
                endpoint_config,
                Some(server_config),
                socket,
                Arc::new(TokioRuntime),
            )
            .with_context(|| format!("the QUIC endpoint on {bind}"))?
        };
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel();
        let reply: Arc<[u8]> = format!("{name}\n").into_bytes().into();
        let thread = {
            let answered = answered.clone();
            std::thread::Builder::new()
                .name(format!("quic-{name}"))
                .spawn(move || runtime.block_on(serve(endpoint, reply, answered, stopped)))
                .context("starting the server's thread")?
        };
        Ok(Self {
            cert,
            issued,
            answered,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The server's certificate, for clients to trust.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Every CID the server has issued so far (for its handshakes and in
    /// NEW_CONNECTION_ID frames), in order.
    pub fn issued_cids(&self) -> Vec<Vec<u8>> {
        self.issued.lock().expect("issued CIDs lock").clone()
    }

    /// The client address of every request answered so far, in order, as
    /// the server saw it when the request had arrived (after a client
    /// migrates, its new address).
    pub fn answered_from(&self) -> Vec<SocketAddr> {
        self.answered.lock().expect("answered lock").clone()
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        // Dropping the sender stops the accept loop, which closes the
        // endpoint and waits (bounded) for its connections to drain.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("warning: a QUIC server's thread panicked");
        }
    }
}

/// Accepts connections until `stopped` fires (or its sender is dropped).
async fn serve(
    endpoint: Endpoint,
    reply: Arc<[u8]>,
    answered: Arc<Mutex<Vec<SocketAddr>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let incoming = tokio::select! {
            _ = &mut stopped => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        tokio::spawn(serve_connection(incoming, reply.clone(), answered.clone()));
    }
    endpoint.close(0u32.into(), b"server stopped");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
}

/// Answers each bidirectional stream of one connection until it closes.
async fn serve_connection(
    incoming: Incoming,
    reply: Arc<[u8]>,
    answered: Arc<Mutex<Vec<SocketAddr>>>,
) {
    let Ok(connection) = incoming.await else {
        return;
    };
    while let Ok((send, recv)) = connection.accept_bi().await {
        let (connection, reply, answered) = (connection.clone(), reply.clone(), answered.clone());
        tokio::spawn(async move {
            // A stream that fails is the client's to notice.
            let _ = answer(&connection, send, recv, &reply, &answered).await;
        });
    }
}

/// Reads one request to its end and answers it.
async fn answer(
    connection: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    reply: &[u8],
    answered: &Mutex<Vec<SocketAddr>>,
) -> anyhow::Result<()> {
    recv.read_to_end(MAX_MESSAGE).await?;
    answered
        .lock()
        .expect("answered lock")
        .push(connection.remote_address());
    send.write_all(reply).await?;
    send.finish()?;
    Ok(())
}

/// A QUIC client in the client's namespace, with an endpoint (and so a
/// local UDP port) of its own and one connection to a VIP.
pub struct QuicClient<'ns> {
    netns: &'ns Netns,
    vip: SocketAddr,
    connection: Connection,
    endpoint: Endpoint,
    // Last, so that the connection and endpoint go while it still runs.
    runtime: Runtime,
}

impl<'ns> QuicClient<'ns> {
    /// Connects from `client` (a port the kernel picks on the unspecified
    /// address of the VIP's family) to `vip`, as [`SERVER_NAME`], trusting
    /// only the certificates `trusted` (every backend's that may answer).
    pub fn connect(
        client: &'ns Netns,
        vip: SocketAddr,
        trusted: &[CertificateDer<'static>],
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in trusted {
            roots
                .add(cert.clone())
                .context("trusting a server's certificate")?;
        }
        let mut config = ClientConfig::with_root_certificates(Arc::new(roots))
            .context("the client's TLS config")?;
        config.transport_config(transport()?);

        let socket = Self::socket(client, vip)?;
        let runtime = runtime()?;
        let mut endpoint = {
            let _context = runtime.enter();
            Endpoint::new(
                EndpointConfig::default(),
                None,
                socket,
                Arc::new(TokioRuntime),
            )
            .context("the client's QUIC endpoint")?
        };
        endpoint.set_default_client_config(config);
        // Inside the runtime: connecting spawns the connection's driver.
        let connection = runtime.block_on(async {
            let connecting = endpoint
                .connect(vip, SERVER_NAME)
                .with_context(|| format!("connecting to {vip}"))?;
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                .await
                .with_context(|| format!("no handshake with {vip} within {HANDSHAKE_TIMEOUT:?}"))?
                .with_context(|| format!("the handshake with {vip}"))
        })?;
        Ok(Self {
            netns: client,
            vip,
            connection,
            endpoint,
            runtime,
        })
    }

    /// A fresh UDP socket in `client` on a port the kernel picks.
    fn socket(client: &Netns, vip: SocketAddr) -> anyhow::Result<UdpSocket> {
        let any = match vip.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        client.enter(|| UdpSocket::bind((any, 0)).context("binding the client's UDP socket"))
    }

    /// Sends a request on a new bidirectional stream and returns who
    /// answered (the server's name).
    pub fn ask(&mut self) -> anyhow::Result<String> {
        let connection = &self.connection;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_all(b"who?\n").await?;
            send.finish()?;
            anyhow::Ok(recv.read_to_end(MAX_MESSAGE).await?)
        };
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, exchange).await })
            .with_context(|| format!("no answer from {} within {REQUEST_TIMEOUT:?}", self.vip))?
            .with_context(|| format!("asking {}", self.vip))?;
        let answer = String::from_utf8(answer).context("an answer that is not UTF-8")?;
        match answer.strip_suffix('\n') {
            Some(name) if !name.is_empty() => Ok(name.to_string()),
            _ => bail!("answer {answer:?} is not a name and a newline"),
        }
    }

    /// Moves the connection to a new UDP socket on a port the kernel picks
    /// and returns the new local address. quinn sends from it at once (a
    /// PING), and switches to a fresh CID of the server's if it holds one
    /// (see [`QuicClient::retired_cids`]); the server, on hearing from the
    /// new address, answers there (and validates the new path).
    pub fn rebind(&mut self) -> anyhow::Result<SocketAddr> {
        let socket = Self::socket(self.netns, self.vip)?;
        let _context = self.runtime.enter();
        self.endpoint
            .rebind(socket)
            .context("rebinding the client's endpoint")?;
        self.local_addr()
    }

    /// The local address the client sends from.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .context("the client's local address")
    }

    /// RETIRE_CONNECTION_ID frames the client has sent: one each time it
    /// moved on to a fresh CID of the server's (a rebind does when it has
    /// one to spare), and again for any it had to retransmit; so at least
    /// the number of switches.
    pub fn retired_cids(&self) -> u64 {
        self.connection.stats().frame_tx.retire_connection_id
    }
}

impl Drop for QuicClient<'_> {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"client done");
        let endpoint = &self.endpoint;
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_matches_the_drafts_example() {
        let cids = ServerIdCids::new(0, &[0xc4, 0x60, 0x5e], 8).unwrap();
        let mut nonce = [0x45, 0x04, 0xcc, 0x4f].into_iter();
        let cid = cids.cid(|| nonce.next().unwrap());
        assert_eq!(cid, [0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f]);
        assert!(cids.carries(&cid));
    }

    #[test]
    fn first_octet_holds_config_and_length() {
        let cids = ServerIdCids::new(2, &[0xaa], 10).unwrap();
        let cid = cids.cid(|| 0x11);
        assert_eq!(
            cid,
            [0x49, 0xaa, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11]
        );
        assert!(cids.carries(&cid));
        // Another server, config or length is not this layout's.
        assert!(!cids.carries(&[0x49, 0xab, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11]));
        assert!(!cids.carries(&[0x09, 0xaa, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11]));
        assert!(!cids.carries(&[0x49, 0xaa, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11]));
    }

    #[test]
    fn layouts_out_of_bounds_are_refused() {
        assert!(ServerIdCids::new(7, &[1], 8).is_err());
        assert!(ServerIdCids::new(0, &[], 8).is_err());
        assert!(ServerIdCids::new(0, &[1; 16], 20).is_err());
        assert!(ServerIdCids::new(0, &[1, 2, 3, 4], 8).is_err());
        assert!(ServerIdCids::new(0, &[1; 15], 21).is_err());
        assert!(ServerIdCids::new(6, &[1; 15], 20).is_ok());
        assert!(ServerIdCids::new(0, &[1, 2, 3], 8).is_ok());
    }
}
