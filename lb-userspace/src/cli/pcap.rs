//! The pcapng file `fulcrum trace --pcap` writes: a section header, one
//! Ethernet interface with the trace's snap length and nanosecond
//! timestamps, and an enhanced packet block per traced packet whose
//! comment is the data plane's decision. Every block is written
//! little-endian (readers learn the order from the section header's
//! byte-order magic) and flushed at once, so a reader at the other end of
//! a pipe sees each packet as it comes.

use std::io::{self, Write};

/// Section Header Block.
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
/// Interface Description Block.
const INTERFACE: u32 = 0x0000_0001;
/// Enhanced Packet Block.
const ENHANCED_PACKET: u32 = 0x0000_0006;
/// Read back as 0x1A2B3C4D, the byte order is the reader's own.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u16 = 1;
/// `opt_comment`, in any block.
const OPT_COMMENT: u16 = 1;
/// `shb_userappl`: the application that wrote the section.
const SHB_USERAPPL: u16 = 4;
/// `if_tsresol`: the interface's timestamp unit.
const IF_TSRESOL: u16 = 9;
/// `if_tsresol`'s value for nanoseconds (10^-9 s).
const NANOSECONDS: u8 = 9;

/// One packet for the file.
pub struct Packet<'a> {
    /// When, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The bytes captured.
    pub bytes: &'a [u8],
    /// The packet's whole length.
    pub len: u32,
    /// Its comment: the decision.
    pub comment: &'a str,
}

/// A pcapng stream being written to `out`.
pub struct PcapngWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts the stream: the section header and the one interface, which
    /// captured at most `snap_len` bytes of each packet.
    pub fn start(mut out: W, snap_len: u32) -> io::Result<Self> {
        out.write_all(&section_header())?;
        out.write_all(&interface(snap_len))?;
        out.flush()?;
        Ok(Self { out })
    }

    /// Writes one packet and flushes it.
    pub fn packet(&mut self, packet: &Packet<'_>) -> io::Result<()> {
        self.out.write_all(&enhanced_packet(packet))?;
        self.out.flush()
    }
}

fn section_header() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(BYTE_ORDER_MAGIC.to_le_bytes());
    body.extend(1u16.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    // The section's length: not given (-1), as a stream cannot know it.
    body.extend((-1i64).to_le_bytes());
    let application = format!("fulcrum {} trace", env!("CARGO_PKG_VERSION"));
    block(
        SECTION_HEADER,
        &body,
        &[(SHB_USERAPPL, application.as_bytes())],
    )
}

fn interface(snap_len: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(LINKTYPE_ETHERNET.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    body.extend(snap_len.to_le_bytes());
    block(INTERFACE, &body, &[(IF_TSRESOL, &[NANOSECONDS])])
}

fn enhanced_packet(packet: &Packet<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    // Interface 0: the only one.
    body.extend(0u32.to_le_bytes());
    body.extend(((packet.time_ns >> 32) as u32).to_le_bytes());
    body.extend((packet.time_ns as u32).to_le_bytes());
    body.extend((packet.bytes.len() as u32).to_le_bytes());
    body.extend(packet.len.to_le_bytes());
    body.extend(packet.bytes);
    pad(&mut body);
    let comment = option_text(packet.comment);
    block(ENHANCED_PACKET, &body, &[(OPT_COMMENT, comment)])
}

/// `text`, cut (at a character) to the most an option holds.
fn option_text(text: &str) -> &[u8] {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// A block: its type, its total length, `body` (padded to 4 bytes), the
/// options and their end, and its total length again.
fn block(kind: u32, body: &[u8], options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut inner = body.to_vec();
    pad(&mut inner);
    for (code, value) in options {
        inner.extend(code.to_le_bytes());
        inner.extend((value.len() as u16).to_le_bytes());
        inner.extend(*value);
        pad(&mut inner);
    }
    if !options.is_empty() {
        // opt_endofopt.
        inner.extend([0; 4]);
    }
    let total = (inner.len() + 12) as u32;
    let mut block = Vec::with_capacity(total as usize);
    block.extend(kind.to_le_bytes());
    block.extend(total.to_le_bytes());
    block.extend(inner);
    block.extend(total.to_le_bytes());
    block
}

/// Zeros up to the next multiple of 4 bytes.
fn pad(bytes: &mut Vec<u8>) {
    bytes.resize(bytes.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn the_section_header_says_its_byte_order_and_version() {
        let block = section_header();
        assert_eq!(&block[..4], &[0x0A, 0x0D, 0x0D, 0x0A]);
        assert_eq!(
            &block[8..12],
            &[0x4D, 0x3C, 0x2B, 0x1A],
            "little-endian magic"
        );
        assert_eq!(&block[12..16], &[1, 0, 0, 0], "version 1.0");
        assert_eq!(&block[16..24], &[0xff; 8], "section length unknown");
        assert_eq!(u32_at(&block, 4) as usize, block.len());
        assert_eq!(u32_at(&block, block.len() - 4) as usize, block.len());
    }

    #[test]
    fn the_interface_is_ethernet_with_the_snap_length_in_nanoseconds() {
        let block = interface(128);
        let expected: Vec<u8> = [
            &[1, 0, 0, 0][..], // type
            &[32, 0, 0, 0],    // total length
            &[1, 0, 0, 0],     // LINKTYPE_ETHERNET, reserved
            &[128, 0, 0, 0],   // snap length
            &[9, 0, 1, 0],     // if_tsresol, 1 byte
            &[9, 0, 0, 0],     // 10^-9, padded
            &[0, 0, 0, 0],     // opt_endofopt
            &[32, 0, 0, 0],    // total length
        ]
        .concat();
        assert_eq!(block, expected);
    }

    #[test]
    fn a_packet_is_padded_to_4_and_carries_its_comment() {
        let time_ns = 0x0000_0001_0000_0002;
        let block = enhanced_packet(&Packet {
            time_ns,
            bytes: &[0xaa; 5],
            len: 60,
            comment: "tx tx",
        });
        let expected: Vec<u8> = [
            &[6, 0, 0, 0][..],         // type
            &[56, 0, 0, 0],            // total length
            &[0, 0, 0, 0],             // interface 0
            &[1, 0, 0, 0],             // timestamp, high
            &[2, 0, 0, 0],             // timestamp, low
            &[5, 0, 0, 0],             // captured
            &[60, 0, 0, 0],            // original length
            &[0xaa, 0xaa, 0xaa, 0xaa], // packet...
            &[0xaa, 0, 0, 0],          // ...padded
            &[1, 0, 5, 0],             // opt_comment, 5 bytes
            b"tx t",                   // the comment...
            &[b'x', 0, 0, 0],          // ...padded
            &[0, 0, 0, 0],             // opt_endofopt
            &[56, 0, 0, 0],            // total length
        ]
        .concat();
        assert_eq!(block, expected);
    }

    #[test]
    fn every_block_is_a_multiple_of_4_bytes_whatever_it_carries() {
        for len in 0..9 {
            let bytes = vec![1; len];
            let comment = "é".repeat(len);
            let block = enhanced_packet(&Packet {
                time_ns: 0,
                bytes: &bytes,
                len: len as u32,
                comment: &comment,
            });
            assert_eq!(block.len() % 4, 0, "{len} bytes");
            assert_eq!(u32_at(&block, 4) as usize, block.len());
        }
    }

    #[test]
    fn a_comment_too_long_for_an_option_is_cut_at_a_character() {
        let text = "é".repeat(40_000);
        let cut = option_text(&text);
        assert_eq!(cut.len(), 65_534);
        assert!(std::str::from_utf8(cut).is_ok());
    }

    #[test]
    fn a_stream_is_the_header_the_interface_then_each_packet_as_it_comes() {
        let mut out = Vec::new();
        let mut writer = PcapngWriter::start(&mut out, 64).expect("start");
        writer
            .packet(&Packet {
                time_ns: 1,
                bytes: &[1, 2, 3, 4],
                len: 4,
                comment: "x",
            })
            .expect("a packet");
        let shb = section_header().len();
        let idb = interface(64).len();
        assert_eq!(u32_at(&out, shb), INTERFACE);
        assert_eq!(u32_at(&out, shb + idb), ENHANCED_PACKET);
        assert_eq!(out.len(), shb + idb + u32_at(&out, shb + idb + 4) as usize);
    }
}
