//! `fulcrum trace` in the daemon: one session at a time. The controller
//! turns the data plane's events on for what the client asked (a VIP, a
//! backend, a source prefix, a sampling rate, a per-second cap, how many
//! of each packet's bytes) with a short lease it renews while the client
//! listens; a reader thread takes
//! the events off the ring buffer and hands them to the session; the API
//! streams them as JSON lines, with the names the controller knows. When
//! the client goes (Ctrl-C, a crash) the session ends and tracing goes off
//! at once; if the daemon itself dies, the lease runs out in the kernel.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use lb_common::maps::{
    MAX_VIPS, PROTO_TCP, PROTO_UDP, QuicOutcome, Reason, TRACE_ANY_VIP, TRACE_SNAP_MAX,
    TRACE_VIA_CONNECTION, TRACE_VIA_QUIC, TRACE_VIA_TABLE, TraceControl,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    runtime::Handle,
    sync::mpsc,
};

use crate::{
    daemon::wire::{Labels, TraceEventLine, TraceRequest, TraceStatsAnswer, Via, packet_hex},
    dataplane::{
        state::{DesiredState, ip_from},
        trace::{TraceEvents, TraceRecord, TraceStats, lease_end},
    },
};

/// How long a lease lasts: the controller renews it every second while
/// the client listens.
pub const LEASE: Duration = Duration::from_secs(3);

/// Events a session may hold while its client reads.
const BUFFERED: usize = 4096;

impl Labels {
    /// The names in `state`, installed as `generation` in `bank` (the
    /// other bank holds the one before).
    pub fn of(state: &DesiredState, bank: u32, generation: u64) -> Self {
        let mut labels = Self::default();
        for vip in &state.vips {
            labels.vips.insert(vip.vip_id, vip.label.clone());
            for backend in &vip.backends {
                labels.backends.insert(
                    backend.backend_id,
                    (backend.label.clone(), backend.addr.to_string()),
                );
            }
        }
        labels.generations.insert(bank, generation);
        labels
            .generations
            .insert(1 - bank, generation.saturating_sub(1));
        labels
    }
}

/// The control that asks the data plane for what `request` wants, in
/// `state`; or why it cannot.
pub fn control(request: &TraceRequest, state: &DesiredState) -> Result<TraceControl, String> {
    let mut control = TraceControl {
        expires_ns: lease_end(LEASE),
        vip_id: TRACE_ANY_VIP,
        sample: request.sample.max(1),
        ..TraceControl::default()
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| format!("counting CPUs: {e}"))? as u32;
    if request.rate == 0 {
        return Err("rate must be at least 1 event a second".into());
    }
    control.per_cpu_per_s = request.rate.div_ceil(cpus.max(1));
    if request.snap_len > TRACE_SNAP_MAX {
        return Err(format!(
            "snap_len {} is over the most a trace event carries, {TRACE_SNAP_MAX} bytes",
            request.snap_len
        ));
    }
    control.snap_len = request.snap_len;
    let vip = match &request.vip {
        Some(name) => {
            let vip = state
                .vips
                .iter()
                .find(|v| &v.label == name || &v.endpoint() == name)
                .ok_or_else(|| format!("no VIP {name:?} is installed"))?;
            control.vip_id = vip.vip_id;
            Some(vip)
        }
        None => None,
    };
    if let Some(name) = &request.backend {
        let mut found = state
            .vips
            .iter()
            .filter(|v| vip.is_none_or(|only| only.vip_id == v.vip_id))
            .flat_map(|v| &v.backends)
            .filter(|b| &b.label == name || &b.addr.to_string() == name);
        let backend = found
            .next()
            .ok_or_else(|| format!("no backend {name:?} is installed"))?;
        if found.next().is_some() {
            return Err(format!(
                "backend {name:?} serves several VIPs; name the VIP too (--vip)"
            ));
        }
        control.backend_id = backend.backend_id;
    }
    if let Some(text) = &request.src {
        let prefix: crate::config::Prefix = text
            .parse()
            .map_err(|e| format!("source prefix {text:?}: {e}"))?;
        let (bytes, family) = crate::dataplane::state::ip_bytes(prefix.address);
        control.src_addr = bytes;
        control.src_family = family;
        control.src_prefix_len = prefix.len;
    }
    Ok(control)
}

/// One event as a line of the stream, named with `labels`.
pub fn event_line(record: &TraceRecord, labels: &Labels) -> TraceEventLine {
    let event = &record.event;
    let reason = Reason::ALL
        .iter()
        .find(|r| **r as u32 == event.reason)
        .map_or("unknown", |r| r.name());
    let action = match event.action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    };
    let mut line = TraceEventLine {
        time_ns: event.time_ns,
        cpu: event.cpu,
        vlan: event.vlan,
        action: action.into(),
        reason: reason.into(),
        packet_len: event.packet_len,
        packet: (!record.packet.is_empty()).then(|| packet_hex(&record.packet)),
        ..TraceEventLine::default()
    };
    if event.has_flow != 0 {
        let key = &event.key;
        let src = ip_from(&key.src_addr, key.family);
        let dst = ip_from(&key.dst_addr, key.family);
        line.protocol = Some(match key.proto {
            PROTO_TCP => "tcp".to_string(),
            PROTO_UDP => "udp".to_string(),
            other => other.to_string(),
        });
        line.source = Some(SocketAddr::new(src, key.src_port).to_string());
        line.destination = Some(SocketAddr::new(dst, key.dst_port).to_string());
    }
    if event.vip_id != TRACE_ANY_VIP {
        line.vip = labels.vips.get(&event.vip_id).cloned();
    }
    if event.backend_id != 0 {
        let (name, address) = labels
            .backends
            .get(&event.backend_id)
            .cloned()
            .unwrap_or_default();
        line.backend = Some(name);
        line.address = Some(address);
    }
    match event.via {
        TRACE_VIA_CONNECTION => line.via = Some(Via::ConnectionTable),
        TRACE_VIA_QUIC => line.via = Some(Via::ServerId),
        TRACE_VIA_TABLE => {
            line.via = Some(Via::Table);
            line.slot = Some(event.slot);
            line.generation = labels
                .generations
                .get(&(event.table_id / MAX_VIPS))
                .copied();
        }
        _ => {}
    }
    line.quic = event
        .quic
        .checked_sub(1)
        .and_then(QuicOutcome::from_index)
        .map(|outcome| outcome.name().to_string());
    line
}

/// The text of one event.
pub fn event_text(event: &TraceEventLine) -> String {
    let mut line = format!("{} {}", event.action, event.reason);
    if let Some(source) = &event.source {
        line = format!(
            "{} {source} -> {}: {line}",
            event.protocol.as_deref().unwrap_or(""),
            event.destination.as_deref().unwrap_or("")
        );
    }
    if event.vlan != 0 {
        line += &format!(" vlan {}", event.vlan);
    }
    if let Some(vip) = event.vip.as_deref().filter(|v| !v.is_empty()) {
        line += &format!("; VIP {vip}");
    }
    if let Some(backend) = event.backend.as_deref().filter(|b| !b.is_empty()) {
        line += &format!(" -> {backend} ({})", event.address.as_deref().unwrap_or(""));
    }
    match event.via {
        Some(Via::Table) => {
            let shown = |n: Option<u64>| n.map_or_else(|| "null".to_string(), |n| n.to_string());
            line += &format!(
                " by table slot {} (generation {})",
                shown(event.slot.map(u64::from)),
                shown(event.generation)
            );
        }
        Some(Via::ConnectionTable) => line += " by its connection-table entry",
        Some(Via::ServerId) => line += " by the server ID in its QUIC connection ID",
        None => {}
    }
    match event.quic.as_deref() {
        Some("routed") | None => {}
        Some(outcome) => line += &format!(" (QUIC: {outcome}, so by the 4-tuple)"),
    }
    line
}

/// The session in progress, if any, and what the reader could not hand it.
#[derive(Default)]
struct HubState {
    next_id: u64,
    session: Option<(u64, mpsc::Sender<TraceRecord>)>,
    receiver: Option<(u64, mpsc::Receiver<TraceRecord>)>,
    /// Events the session's buffer had no room for (its client is slow).
    lost: u64,
}

/// Where the reader's events go: shared by the controller (which opens
/// and closes sessions), the reader thread and the API.
#[derive(Clone, Default)]
pub struct Hub(Arc<Mutex<HubState>>);

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session, unless one is open; returns its id.
    pub fn open(&self) -> Option<u64> {
        let mut state = self.lock();
        if state.session.is_some() {
            return None;
        }
        state.next_id += 1;
        let id = state.next_id;
        let (sender, receiver) = mpsc::channel(BUFFERED);
        state.session = Some((id, sender));
        state.receiver = Some((id, receiver));
        state.lost = 0;
        Some(id)
    }

    /// Session `id`'s events, for the API to stream.
    pub fn events(&self, id: u64) -> Option<mpsc::Receiver<TraceRecord>> {
        let mut state = self.lock();
        match state.receiver.take() {
            Some((open, receiver)) if open == id => Some(receiver),
            other => {
                state.receiver = other;
                None
            }
        }
    }

    /// Whether session `id` is the one open.
    pub fn is_open(&self, id: u64) -> bool {
        self.lock()
            .session
            .as_ref()
            .is_some_and(|(open, _)| *open == id)
    }

    /// Closes session `id` (if it is the one open).
    pub fn close(&self, id: u64) -> bool {
        let mut state = self.lock();
        if state.session.as_ref().is_some_and(|(open, _)| *open == id) {
            state.session = None;
            state.receiver = None;
            return true;
        }
        false
    }

    /// Events lost in userspace in this session.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    fn hand(&self, records: Vec<TraceRecord>) {
        let mut state = self.lock();
        let Some((_, sender)) = &state.session else {
            return;
        };
        let mut lost = 0;
        for record in records {
            if sender.try_send(record).is_err() {
                lost += 1;
            }
        }
        state.lost += lost;
    }
}

/// Reads the ring buffer for as long as `runtime` runs, handing events to
/// the open session (and dropping them without one).
pub fn spawn_reader(events: TraceEvents, hub: Hub, runtime: &Handle) -> anyhow::Result<()> {
    let _inside = runtime.enter();
    // SAFETY: `TraceEvents` owns the ring buffer's map, whose descriptor
    // stays open, and is the one `as_raw_fd` returns, for as long as the
    // `AsyncFd` owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("watching the trace ring buffer")?;
    runtime.spawn(async move {
        while let Ok(mut ready) = ring.readable_mut().await {
            let drained = ready.get_inner_mut().drain();
            if drained.is_empty() {
                // Cleared only if nothing arrived since it was found ready.
                ready.clear_ready();
            } else {
                hub.hand(drained);
            }
        }
    });
    Ok(())
}

/// A session's counters, for its client: what the kernel dropped, what
/// the daemon could not hand on.
pub fn stats_answer(stats: &TraceStats, lost: u64) -> TraceStatsAnswer {
    TraceStatsAnswer {
        sent: stats.sent,
        sampled_out: stats.sampled,
        dropped_by_cap: stats.capped,
        dropped_ring_full: stats.ring_full,
        dropped_slow_client: lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::{FAMILY_IPV4, TraceEvent};

    fn state() -> DesiredState {
        crate::dataplane::state::sample_state()
    }

    fn request() -> TraceRequest {
        TraceRequest {
            vip: None,
            backend: None,
            src: None,
            sample: 1,
            rate: crate::daemon::wire::DEFAULT_RATE,
            snap_len: 0,
        }
    }

    #[test]
    fn a_request_names_what_the_data_plane_filters_on() {
        let state = state();
        let any = control(&request(), &state).unwrap();
        assert_eq!(
            (any.vip_id, any.backend_id, any.src_family),
            (TRACE_ANY_VIP, 0, 0)
        );
        assert!(any.expires_ns > 0 && any.per_cpu_per_s >= 1);
        let web = control(
            &TraceRequest {
                vip: Some("web".into()),
                backend: Some("b2".into()),
                src: Some("198.18.2.0/24".into()),
                sample: 10,
                ..request()
            },
            &state,
        )
        .unwrap();
        assert_eq!(web.vip_id, state.vips[0].vip_id);
        assert_eq!(web.backend_id, state.vips[0].backends[1].backend_id);
        assert_eq!((web.src_family, web.src_prefix_len), (FAMILY_IPV4, 24));
        assert_eq!(web.src_addr[..4], [198, 18, 2, 0]);
        assert_eq!(web.sample, 10);
        let ambiguous = TraceRequest {
            backend: Some("b1".into()),
            ..request()
        };
        assert!(
            control(&ambiguous, &state)
                .unwrap_err()
                .contains("several VIPs")
        );
        let unknown = TraceRequest {
            vip: Some("nope".into()),
            ..request()
        };
        assert!(control(&unknown, &state).unwrap_err().contains("no VIP"));
        let bad = TraceRequest {
            src: Some("198.18.2.1/24".into()),
            ..request()
        };
        assert!(control(&bad, &state).is_err(), "host bits set");
    }

    #[test]
    fn a_request_asks_for_packet_bytes_up_to_the_most_an_event_carries() {
        let state = state();
        assert_eq!(control(&request(), &state).unwrap().snap_len, 0);
        let most = TraceRequest {
            snap_len: TRACE_SNAP_MAX,
            ..request()
        };
        assert_eq!(control(&most, &state).unwrap().snap_len, TRACE_SNAP_MAX);
        let over = TraceRequest {
            snap_len: TRACE_SNAP_MAX + 1,
            ..request()
        };
        let why = control(&over, &state).unwrap_err();
        assert!(
            why.contains("snap_len 257") && why.contains("256 bytes"),
            "{why}"
        );
    }

    #[test]
    fn events_are_named_and_read() {
        let state = state();
        let labels = Labels::of(&state, 1, 7);
        let vip = &state.vips[0];
        let mut event = TraceEvent {
            has_flow: 1,
            action: 3,
            reason: Reason::Tx as u32,
            vip_id: vip.vip_id,
            backend_id: vip.backends[1].backend_id,
            via: TRACE_VIA_TABLE,
            slot: 42,
            table_id: MAX_VIPS + vip.vip_id,
            ..TraceEvent::default()
        };
        event.key = crate::dataplane::state::flow_key(
            "198.18.2.1:40000".parse().unwrap(),
            "198.18.100.1:80".parse().unwrap(),
            PROTO_TCP,
        );
        let line = event_line(
            &TraceRecord {
                event,
                packet: Vec::new(),
            },
            &labels,
        );
        assert_eq!(line.backend.as_deref(), Some("b2"));
        assert_eq!(line.generation, Some(7));
        assert_eq!(line.source.as_deref(), Some("198.18.2.1:40000"));
        let json = serde_json::to_value(&line).expect("JSON");
        assert_eq!((&json["via"], &json["slot"]), (&"table".into(), &42.into()));
        assert!(json.get("protocol").is_some() && json.get("error").is_none());
        assert_eq!(
            event_text(&line),
            "tcp 198.18.2.1:40000 -> 198.18.100.1:80: tx tx; VIP web -> b2 (198.18.1.2:80) \
             by table slot 42 (generation 7)"
        );
        assert!(json.get("packet").is_none(), "no bytes asked for: {json}");

        // On a QUIC VIP: routed by the server ID, or why not.
        let quic = |via: u8, outcome: QuicOutcome| {
            event_line(
                &TraceRecord {
                    event: TraceEvent {
                        via,
                        quic: outcome as u32 + 1,
                        ..event
                    },
                    packet: Vec::new(),
                },
                &labels,
            )
        };
        let routed = quic(TRACE_VIA_QUIC, QuicOutcome::Routed);
        assert_eq!(
            (routed.via, routed.quic.as_deref()),
            (Some(Via::ServerId), Some("routed"))
        );
        assert!(
            event_text(&routed).ends_with("by the server ID in its QUIC connection ID"),
            "{}",
            event_text(&routed)
        );
        let fell_back = event_text(&quic(TRACE_VIA_TABLE, QuicOutcome::UnknownServer));
        assert!(
            fell_back.ends_with("(generation 7) (QUIC: unknown_server, so by the 4-tuple)"),
            "{fell_back}"
        );

        let captured = event_line(
            &TraceRecord {
                event: TraceEvent {
                    packet_len: 74,
                    captured: 2,
                    ..event
                },
                packet: vec![0x02, 0xf0],
            },
            &labels,
        );
        assert_eq!(
            (captured.packet_len, captured.packet.as_deref()),
            (74, Some("02f0"))
        );
    }
}
