//! What a QUIC VIP's UDP packet says of its server, read as QUIC-LB
//! (draft-ietf-quic-load-balancers-21, plaintext) reads it: a long header
//! goes the way of every UDP flow; a short header's destination
//! connection ID carries the config rotation codepoint in its first octet
//! and the server ID at the VIP's offset. Only the header's first bytes
//! are read, and nothing is decrypted.

use lb_common::maps::{FAMILY_IPV4, QUIC_WINDOW, QuicOutcome, QuicRoute};
use network_types::{ip::Ipv6Hdr, udp::UdpHdr};

use crate::{
    frame::Frame,
    parse::{Flow, ipv4_header_len},
};

/// A long header's form bit (RFC 9000, 17.2): set in the first byte of
/// Initial, 0-RTT, Handshake and Retry packets, clear in a short header.
const LONG_HEADER: u8 = 0x80;

/// Where the UDP header of `flow`'s packet starts.
#[inline(always)]
fn udp_header<F: Frame + ?Sized>(frame: &F, flow: &Flow) -> Option<usize> {
    if flow.key.family == FAMILY_IPV4 {
        // Two bytes, not one: LLVM turns a one-byte bound into `>=`,
        // which leaves the verifier a range of nothing.
        let [vihl, _] = *frame.header::<[u8; 2]>(flow.l3)?;
        Some(flow.l3 + ipv4_header_len(vihl)?)
    } else {
        Some(flow.l3 + Ipv6Hdr::LEN)
    }
}

/// The server ID (`QuicRoute::server_id`) in the destination connection
/// ID of `flow`'s packet, a UDP datagram to a VIP that routes by `route`,
/// or why there is none to go by. The ID's window must lie inside the
/// datagram (not in a frame's padding).
#[inline(always)]
pub fn server_id<F: Frame + ?Sized>(
    frame: &F,
    flow: &Flow,
    route: &QuicRoute,
) -> Result<[u8; QUIC_WINDOW], QuicOutcome> {
    let l4 = udp_header(frame, flow).ok_or(QuicOutcome::Truncated)?;
    let udp = frame.header::<UdpHdr>(l4).ok_or(QuicOutcome::Truncated)?;
    let end = l4 + usize::from(u16::from_be_bytes(udp.len));
    let payload = l4 + UdpHdr::LEN;
    if payload + 2 > end {
        return Err(QuicOutcome::Truncated);
    }
    // The header's first byte, then the connection ID's first octet.
    let [form, first] = *frame
        .header::<[u8; 2]>(payload)
        .ok_or(QuicOutcome::Truncated)?;
    if form & LONG_HEADER != 0 {
        return Err(QuicOutcome::LongHeader);
    }
    if let Some(outcome) = route.judge(first) {
        return Err(outcome);
    }
    let at = payload + 1 + usize::from(route.offset);
    if at + QUIC_WINDOW > end {
        return Err(QuicOutcome::Truncated);
    }
    let window = frame
        .header::<[u8; QUIC_WINDOW]>(at)
        .ok_or(QuicOutcome::Truncated)?;
    Ok(route.server_id(window))
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{FAMILY_IPV6, FlowKey, PROTO_UDP};

    use super::*;
    use crate::testing::{
        CLIENT4, CLIENT6, IPV4, IPV6, L3, VIP4, VIP6, edited, ethernet, ipv4, ipv6, udp,
    };

    /// Config 0, the server ID two octets at offset 1.
    const ROUTE: QuicRoute = QuicRoute {
        config_id: 0,
        offset: 1,
        len: 2,
        pad: 0,
    };

    /// A short-header packet: its first byte, the CID (server ID
    /// `0a 0b` after the config's first octet), packet number and payload.
    fn short(cid_first: u8) -> Vec<u8> {
        let mut datagram = vec![0x40, cid_first, 0x0a, 0x0b, 1, 2, 3, 4, 5];
        datagram.extend_from_slice(&[0x77; 24]);
        datagram
    }

    fn frame(family: u8, datagram: &[u8]) -> Vec<u8> {
        let segment = udp(5000, 443, datagram);
        if family == FAMILY_IPV4 {
            ethernet(IPV4, &ipv4(PROTO_UDP, CLIENT4, VIP4, &segment))
        } else {
            ethernet(IPV6, &ipv6(PROTO_UDP, CLIENT6, VIP6, &segment))
        }
    }

    fn flow(family: u8) -> Flow {
        Flow {
            key: FlowKey {
                family,
                proto: PROTO_UDP,
                ..FlowKey::default()
            },
            opens: false,
            closes: false,
            resets: false,
            icmp: false,
            l3: L3,
        }
    }

    fn id(bytes: &[u8]) -> [u8; QUIC_WINDOW] {
        let mut id = [0; QUIC_WINDOW];
        id[..bytes.len()].copy_from_slice(bytes);
        id
    }

    /// What the server-ID read answers: the ID's window, or why not.
    type Read = Result<[u8; QUIC_WINDOW], QuicOutcome>;

    #[test]
    fn a_short_header_names_its_server_and_others_say_why_not() {
        let mut long = short(0x07);
        long[0] = 0xc3;
        let udp_len = |frame: &mut Vec<u8>, family: u8, len: u16| {
            let at = L3 + if family == FAMILY_IPV4 { 20 } else { 40 } + 4;
            frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
        };
        for family in [FAMILY_IPV4, FAMILY_IPV6] {
            let rows: [(&str, Vec<u8>, Read); 8] = [
                (
                    "short header",
                    frame(family, &short(0x07)),
                    Ok(id(&[0x0a, 0x0b])),
                ),
                (
                    "long header",
                    frame(family, &long),
                    Err(QuicOutcome::LongHeader),
                ),
                (
                    "unroutable codepoint",
                    frame(family, &short(0xe7)),
                    Err(QuicOutcome::Unroutable),
                ),
                (
                    "another config",
                    frame(family, &short(0x27)),
                    Err(QuicOutcome::OtherConfig),
                ),
                (
                    "empty datagram",
                    frame(family, &[]),
                    Err(QuicOutcome::Truncated),
                ),
                (
                    "one byte",
                    frame(family, &[0x40]),
                    Err(QuicOutcome::Truncated),
                ),
                (
                    "cut before the window ends",
                    frame(family, &short(0x07)[..1 + 1 + QUIC_WINDOW - 1]),
                    Err(QuicOutcome::Truncated),
                ),
                (
                    // The frame holds the bytes, the datagram does not.
                    "window in the frame's padding",
                    edited(frame(family, &short(0x07)), |f| udp_len(f, family, 8 + 10)),
                    Err(QuicOutcome::Truncated),
                ),
            ];
            for (name, bytes, want) in rows {
                assert_eq!(
                    server_id(&bytes[..], &flow(family), &ROUTE),
                    want,
                    "{name}, family {family}"
                );
            }
        }
    }

    #[test]
    fn the_offset_and_length_pick_the_server_id() {
        let bytes = frame(FAMILY_IPV4, &short(0x07));
        let wide = QuicRoute {
            offset: 2,
            len: 3,
            ..ROUTE
        };
        assert_eq!(
            server_id(&bytes[..], &flow(FAMILY_IPV4), &wide),
            Ok(id(&[0x0b, 1, 2]))
        );
        let other_config = QuicRoute {
            config_id: 1,
            ..ROUTE
        };
        assert_eq!(
            server_id(
                &frame(FAMILY_IPV4, &short(0x27))[..],
                &flow(FAMILY_IPV4),
                &other_config
            ),
            Ok(id(&[0x0a, 0x0b]))
        );
    }
}
