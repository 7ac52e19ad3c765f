//! The PROXY protocol v2 header a TCP load balancer sends before the TLS handshake
//! (`--proxy-protocol`): parsed from bytes with no I/O into the client's address, or a
//! typed refusal.
//!
//! The header (haproxy's `proxy-protocol.txt`, section 2.2) is 16 fixed bytes, then as
//! many more as its length field says:
//!
//! ```text
//! 0..12   signature  \r\n\r\n\0\r\nQUIT\n
//! 12      version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY)
//! 13      family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX), transport (low: 1 STREAM)
//! 14..16  length of what follows, big-endian
//! 16..    addresses: src, dst, src port, dst port (12 bytes for INET, 36 for INET6),
//!         then TLVs up to the length (skipped)
//! ```
//!
//! What is accepted, and why the rest is refused:
//! - PROXY over TCP/IPv4 or TCP/IPv6: the source becomes the session's peer address.
//! - LOCAL, whatever its family: the balancer's own connection (a health check); the
//!   socket's peer is used, as the specification requires.
//! - PROXY with UNSPEC, UNIX or a datagram transport is refused: there is no client IP
//!   address to put the per-address bounds on, and using the balancer's address instead
//!   would put every such client into one bucket without anybody noticing. A balancer
//!   that sends it is misconfigured, and a refused connection shows it.
//! - Version 1 (the text header, `PROXY TCP4 ...`) is refused: the daemon speaks v2 only,
//!   whose length is known after 16 bytes, so that nothing past the header is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first 12 bytes of every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family, length.
pub const FIXED_LEN: usize = 16;
/// The largest header accepted, fixed part included. The specification allows 16 +
/// 65,535 bytes, which the daemon would hold for every connection before any TLS work:
/// 256 connections could pin 16 MiB. 536 bytes after the fixed part is the IPv4 minimum
/// segment size (576 − 40), the most a balancer can count on arriving in one segment:
/// room for the largest address block (216 bytes, UNIX) and for the TLVs haproxy sends
/// (ALPN, authority, unique ID, CRC32C), while the bound stays a stack buffer.
pub const MAX_HEADER: usize = FIXED_LEN + 536;

/// The start of a version 1 header, recognised only to say so in the refusal.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Address block lengths (src, dst, src port, dst port).
const INET_LEN: usize = 4 + 4 + 2 + 2;
const INET6_LEN: usize = 16 + 16 + 2 + 2;

/// Who the connection is for, as the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// PROXY: the client the balancer forwards.
    Client(SocketAddr),
    /// LOCAL: the balancer's own connection (a health check); the socket's peer stands.
    Local,
}

impl Origin {
    /// The address the session is for: the forwarded client, or the socket's peer.
    pub fn peer(self, socket_peer: SocketAddr) -> SocketAddr {
        match self {
            Origin::Client(addr) => addr,
            Origin::Local => socket_peer,
        }
    }
}

/// What the bytes so far give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole header yet: `need` bytes in all are needed before it can be parsed
    /// further (16 for the fixed part, then 16 + its length). Never more than
    /// `MAX_HEADER`, so a reader can read exactly `need` bytes into a bounded buffer and
    /// never into the TLS ClientHello behind the header.
    Incomplete { need: usize },
    /// A whole header of `header_len` bytes; whatever follows it belongs to TLS.
    Complete { header_len: usize, origin: Origin },
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol v2 signature")]
    Signature,
    #[error("a PROXY protocol v1 (text) header; only v2 is accepted")]
    Version1,
    #[error("PROXY protocol version {0}; only 2 is accepted")]
    Version(u8),
    #[error("unknown PROXY protocol command {0:#x}")]
    Command(u8),
    #[error("a header of {0} bytes, over the {MAX_HEADER}-byte bound")]
    TooLong(usize),
    #[error("address family and transport {0:#04x} on a PROXY command; only TCP over IPv4 or IPv6 is accepted")]
    Family(u8),
    #[error("an address block of {len} bytes, {need} needed for its family")]
    AddressLength { len: usize, need: usize },
}

/// Parses the header at the start of `data`, which may hold fewer bytes than the header
/// (`Incomplete`) or more (`Complete` says where the header ends). Refuses as early as the
/// bytes allow: a wrong signature at its first wrong byte, an over-long header on its
/// length field, before its body is read.
pub fn parse(data: &[u8]) -> Result<Parsed, HeaderError> {
    let seen = data.len().min(SIGNATURE.len());
    if data[..seen] != SIGNATURE[..seen] {
        return Err(refuse_signature(data));
    }
    if data.len() < FIXED_LEN {
        return Ok(Parsed::Incomplete { need: FIXED_LEN });
    }
    let (version, command) = (data[12] >> 4, data[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::Version(version));
    }
    let local = match command {
        0x0 => true,
        0x1 => false,
        other => return Err(HeaderError::Command(other)),
    };
    let family = data[13];
    let header_len = FIXED_LEN + usize::from(u16::from_be_bytes([data[14], data[15]]));
    // Before the body is asked for, so that a reader never buffers more than the bound.
    if header_len > MAX_HEADER {
        return Err(HeaderError::TooLong(header_len));
    }
    // Checked on the fixed part, so that a bad family is refused before its body is read.
    let need = if local {
        0
    } else {
        match family {
            0x11 => INET_LEN,
            0x21 => INET6_LEN,
            other => return Err(HeaderError::Family(other)),
        }
    };
    let len = header_len - FIXED_LEN;
    // A length shorter than the addresses would make them run into the TLS bytes.
    if len < need {
        return Err(HeaderError::AddressLength { len, need });
    }
    if data.len() < header_len {
        return Ok(Parsed::Incomplete { need: header_len });
    }
    let body = &data[FIXED_LEN..header_len];
    let origin = match family {
        _ if local => Origin::Local,
        0x11 => {
            let ip: [u8; 4] = body[0..4].try_into().expect("4 bytes");
            let port = u16::from_be_bytes([body[8], body[9]]);
            Origin::Client(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        _ => {
            let ip: [u8; 16] = body[0..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([body[32], body[33]]);
            Origin::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
    };
    Ok(Parsed::Complete { header_len, origin })
}

/// A wrong signature: a v1 text header once its prefix is certain, else garbage (a TLS
/// ClientHello from a client that bypassed the balancer, for one).
fn refuse_signature(data: &[u8]) -> HeaderError {
    if data.starts_with(V1_PREFIX) {
        HeaderError::Version1
    } else {
        HeaderError::Signature
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header: command, family byte, and the body (addresses and TLVs).
    fn header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn inet(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&[10, 0, 0, 1]);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&12344u16.to_be_bytes());
        b
    }

    fn inet6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
        let mut b = src.octets().to_vec();
        b.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&12344u16.to_be_bytes());
        b
    }

    fn client(addr: &str) -> Origin {
        Origin::Client(addr.parse().unwrap())
    }

    #[test]
    fn ipv4_proxy_gives_the_source_address() {
        let h = header(1, 0x11, &inet([203, 0, 113, 7], 40000));
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete {
                header_len: 28,
                origin: client("203.0.113.7:40000")
            })
        );
    }

    #[test]
    fn ipv6_proxy_gives_the_source_address() {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let h = header(1, 0x21, &inet6(src, 443));
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete {
                header_len: 52,
                origin: client("[2001:db8::7]:443")
            })
        );
    }

    #[test]
    fn local_uses_the_socket_peer_whatever_its_family_and_body() {
        let socket: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        for (family, body) in [
            (0x00, vec![]),
            (0x11, inet([1, 2, 3, 4], 1)),
            (0x31, vec![0; 216]),
        ] {
            let h = header(0, family, &body);
            match parse(&h) {
                Ok(Parsed::Complete { header_len, origin }) => {
                    assert_eq!(header_len, h.len(), "{family:#x}");
                    assert_eq!(origin, Origin::Local);
                    assert_eq!(origin.peer(socket), socket);
                }
                other => panic!("{family:#x}: {other:?}"),
            }
        }
        assert_eq!(
            client("203.0.113.7:1").peer(socket),
            "203.0.113.7:1".parse().unwrap()
        );
    }

    #[test]
    fn tlvs_are_skipped_and_the_bytes_after_the_header_are_not_its_own() {
        let mut body = inet([198, 51, 100, 1], 9);
        // PP2_TYPE_ALPN "pyexec/1", then PP2_TYPE_NOOP with 3 bytes.
        body.extend_from_slice(&[0x01, 0x00, 0x08]);
        body.extend_from_slice(b"pyexec/1");
        body.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        let mut data = header(1, 0x11, &body);
        let len = data.len();
        data.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]); // a ClientHello's start
        assert_eq!(
            parse(&data),
            Ok(Parsed::Complete {
                header_len: len,
                origin: client("198.51.100.1:9")
            })
        );
    }

    #[test]
    fn every_byte_arriving_alone_asks_for_exactly_what_is_missing() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        for h in [
            header(1, 0x11, &inet([203, 0, 113, 7], 1)),
            header(1, 0x21, &inet6(src, 2)),
            header(0, 0x00, &[]),
            header(
                1,
                0x11,
                &[inet([1, 1, 1, 1], 3), vec![0x04, 0, 1, 0]].concat(),
            ),
        ] {
            for n in 0..h.len() {
                let need = if n < FIXED_LEN { FIXED_LEN } else { h.len() };
                assert_eq!(
                    parse(&h[..n]),
                    Ok(Parsed::Incomplete { need }),
                    "{n} of {} bytes",
                    h.len()
                );
            }
            assert!(
                matches!(parse(&h), Ok(Parsed::Complete { header_len, .. }) if header_len == h.len())
            );
        }
    }

    #[test]
    fn a_wrong_signature_is_refused_at_its_first_wrong_byte() {
        for i in 0..SIGNATURE.len() {
            let mut h = header(1, 0x11, &inet([1, 2, 3, 4], 5));
            h[i] ^= 0x40;
            assert_eq!(parse(&h[..=i]), Err(HeaderError::Signature), "byte {i}");
        }
        // A client that bypassed the balancer: its TLS ClientHello.
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(HeaderError::Signature));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Signature));
    }

    #[test]
    fn a_v1_text_header_is_refused() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 12344\r\n";
        assert_eq!(parse(v1), Err(HeaderError::Version1));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Err(HeaderError::Version1));
        // Byte by byte it is refused at once: v1 never shares v2's first byte.
        assert_eq!(parse(b"P"), Err(HeaderError::Signature));
    }

    #[test]
    fn versions_other_than_2_are_refused() {
        for version in [0x0, 0x1, 0x3, 0xf] {
            let mut h = header(1, 0x11, &inet([1, 2, 3, 4], 5));
            h[12] = version << 4 | 1;
            assert_eq!(parse(&h[..FIXED_LEN]), Err(HeaderError::Version(version)));
        }
    }

    #[test]
    fn unknown_commands_are_refused() {
        for command in [0x2, 0x3, 0xf] {
            let h = header(command, 0x11, &inet([1, 2, 3, 4], 5));
            assert_eq!(parse(&h[..FIXED_LEN]), Err(HeaderError::Command(command)));
        }
    }

    #[test]
    fn the_length_is_bounded_on_the_fixed_part() {
        let at_bound = header(
            1,
            0x11,
            &[inet([1, 2, 3, 4], 5), vec![0; 536 - 12]].concat(),
        );
        assert_eq!(at_bound.len(), MAX_HEADER);
        assert!(matches!(
            parse(&at_bound),
            Ok(Parsed::Complete {
                header_len: MAX_HEADER,
                ..
            })
        ));
        assert_eq!(
            parse(&at_bound[..FIXED_LEN]),
            Ok(Parsed::Incomplete { need: MAX_HEADER })
        );
        let over = header(
            1,
            0x11,
            &[inet([1, 2, 3, 4], 5), vec![0; 536 - 11]].concat(),
        );
        assert_eq!(
            parse(&over[..FIXED_LEN]),
            Err(HeaderError::TooLong(MAX_HEADER + 1))
        );
        let mut most = header(0, 0x00, &[]);
        most[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&most), Err(HeaderError::TooLong(FIXED_LEN + 65535)));
    }

    #[test]
    fn families_without_a_tcp_client_address_are_refused_on_proxy() {
        // UNSPEC, UDP over IPv4 and IPv6, UNIX stream and datagram, unknown.
        for family in [0x00, 0x10, 0x12, 0x20, 0x22, 0x31, 0x32, 0x41, 0xff] {
            let h = header(1, family, &[0; 216]);
            assert_eq!(
                parse(&h[..FIXED_LEN]),
                Err(HeaderError::Family(family)),
                "{family:#x}"
            );
        }
    }

    #[test]
    fn an_address_block_shorter_than_its_family_is_refused() {
        let h = header(1, 0x11, &inet([1, 2, 3, 4], 5)[..11]);
        assert_eq!(
            parse(&h[..FIXED_LEN]),
            Err(HeaderError::AddressLength { len: 11, need: 12 })
        );
        let h = header(1, 0x21, &[0; 35]);
        assert_eq!(
            parse(&h),
            Err(HeaderError::AddressLength { len: 35, need: 36 })
        );
        // IPv4 addresses announced with IPv6's family: too short as well.
        let h = header(1, 0x21, &inet([1, 2, 3, 4], 5));
        assert_eq!(
            parse(&h),
            Err(HeaderError::AddressLength { len: 12, need: 36 })
        );
    }
}
