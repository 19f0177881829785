//! `when=tls` and `when=tls:PATTERN`: is the start of the stream a TLS ClientHello, and what is its
//! SNI host name?
//!
//! Uses `tls-parser` for the record header, the ClientHello body (version, random, session id,
//! cipher suites, compression methods, the extensions block) and the SNI extension's contents.
//! The crate parses one record at a time and leaves reassembly to the caller, so this module
//! gathers the handshake message from consecutive handshake records itself: a ClientHello may be
//! split over several records (OpenSSL does so with `-max_send_frag`, large post-quantum key
//! shares make it likelier) as well as over several TCP segments. The extensions are walked one
//! by one by their framing only (`parse_tls_extension_unknown`), because the crate's
//! interpreting list parser stops silently at the first extension whose contents it dislikes,
//! which would lose an SNI that follows it (clients such as Chrome shuffle extension order).

use super::Scan;
use super::host;
use tls_parser::{
    SNIType, TlsExtension, TlsRecordType, parse_tls_extension_sni_content, parse_tls_extension_unknown,
    parse_tls_handshake_client_hello, parse_tls_record_header,
};

const RECORD_HEADER: usize = 5;
/// Largest plaintext record fragment (RFC 8446 5.1; a larger one is a `record_overflow`).
const MAX_FRAGMENT: usize = 1 << 14;
const HANDSHAKE_HEADER: usize = 4;
const CLIENT_HELLO: u8 = 1;
/// Smallest ClientHello body: version, random, session id length, one cipher suite with its
/// length, one compression method with its length.
const MIN_CLIENT_HELLO: usize = 2 + 32 + 1 + 2 + 2 + 1 + 1;

/// What a complete, well-formed ClientHello says that routing needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host name, lower-cased, if the client sent one that is a well-formed host name.
    pub sni: Option<String>,
}

/// Could `bytes` begin a TLS handshake record? Looks at the first three bytes only: content type
/// 22 (handshake) and a record version 3.0 to 3.4, i.e. `16 03 00`..`16 03 04`.
pub fn starts_like_tls(bytes: &[u8]) -> Scan<()> {
    const WANT: [std::ops::RangeInclusive<u8>; 3] = [0x16..=0x16, 0x03..=0x03, 0x00..=0x04];
    for (b, want) in bytes.iter().zip(WANT.iter()) {
        if !want.contains(b) {
            return Scan::Invalid;
        }
    }
    if bytes.len() >= WANT.len() {
        Scan::Done(())
    } else {
        Scan::Partial
    }
}

/// Reads the ClientHello at the start of `bytes`: `Partial` while more bytes could complete it,
/// `Invalid` as soon as they cannot be one (or one too large to fit in `limit` bytes).
pub fn client_hello(bytes: &[u8], limit: usize) -> Scan<ClientHello> {
    match handshake_message(bytes, limit) {
        Scan::Done(msg) => parse_client_hello(&msg).map_or(Scan::Invalid, Scan::Done),
        Scan::Partial => Scan::Partial,
        Scan::Invalid => Scan::Invalid,
    }
}

/// Gathers the first handshake message, which must be a ClientHello, from consecutive handshake
/// records; returns it whole (header included) once all of its bytes are there.
fn handshake_message(bytes: &[u8], limit: usize) -> Scan<Vec<u8>> {
    let mut msg: Vec<u8> = Vec::new();
    let mut rest = bytes;
    loop {
        match starts_like_tls(rest) {
            Scan::Invalid => return Scan::Invalid,
            Scan::Partial => return Scan::Partial,
            Scan::Done(()) if rest.len() < RECORD_HEADER => return Scan::Partial,
            Scan::Done(()) => {}
        }
        let Ok((body, hdr)) = parse_tls_record_header(rest) else {
            return Scan::Invalid;
        };
        let len = usize::from(hdr.len);
        // Zero-length handshake fragments are forbidden (RFC 8446 5.1), and handshake messages
        // may not be interleaved with records of another type.
        if hdr.record_type != TlsRecordType::Handshake || len == 0 || len > MAX_FRAGMENT {
            return Scan::Invalid;
        }
        let fragment = &body[..len.min(body.len())];
        msg.extend_from_slice(fragment);
        if msg.first().is_some_and(|&t| t != CLIENT_HELLO) {
            return Scan::Invalid;
        }
        if msg.len() >= HANDSHAKE_HEADER {
            let body_len = usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
            let total = HANDSHAKE_HEADER + body_len;
            // It needs at least one record header on the wire besides its own bytes.
            if body_len < MIN_CLIENT_HELLO || total + RECORD_HEADER > limit {
                return Scan::Invalid;
            }
            if msg.len() >= total {
                msg.truncate(total);
                return Scan::Done(msg);
            }
        }
        if fragment.len() < len {
            return Scan::Partial;
        }
        rest = &body[len..];
    }
}

/// Parses a complete ClientHello message; `None` if it is malformed.
fn parse_client_hello(msg: &[u8]) -> Option<ClientHello> {
    let (rest, ch) = parse_tls_handshake_client_hello(&msg[HANDSHAKE_HEADER..]).ok()?;
    // Bytes after the compression methods must be exactly one extensions block (RFC 5246 7.4.1.2;
    // the crate leaves them unread when the block's length is wrong). TLS 1.3 still sends 3.x
    // versions here, and requires a cipher suite and a compression method.
    if !rest.is_empty() || ch.version.0 >> 8 != 3 || ch.ciphers.is_empty() || ch.comp.is_empty() {
        return None;
    }
    let mut sni = None;
    let mut seen_sni = false;
    let mut ext = ch.ext.unwrap_or(&[]);
    while !ext.is_empty() {
        let Ok((next, TlsExtension::Unknown(ext_type, data))) = parse_tls_extension_unknown(ext) else {
            return None;
        };
        if ext_type.0 == 0 {
            // At most one extension of a type (RFC 8446 4.2).
            if seen_sni {
                return None;
            }
            seen_sni = true;
            sni = server_name(data)?;
        }
        ext = next;
    }
    Some(ClientHello { sni })
}

/// The host name of an SNI extension's contents: `None` if malformed, `Some(None)` if it names
/// no host or one that is not a well-formed host name.
fn server_name(data: &[u8]) -> Option<Option<String>> {
    // The crate reads an empty extension as an empty list (a server's form); a client's list
    // must have at least one entry.
    let list_len = usize::from(u16::from_be_bytes([*data.first()?, *data.get(1)?]));
    let Ok((rest, TlsExtension::SNI(list))) = parse_tls_extension_sni_content(data) else {
        return None;
    };
    // The crate stops quietly at a malformed entry: check that the entries fill the list.
    let used: usize = list.iter().map(|(_, name)| 3 + name.len()).sum();
    if !rest.is_empty() || list.is_empty() || used != list_len {
        return None;
    }
    let mut hosts = list.iter().filter(|(t, _)| *t == SNIType::HostName);
    let host = hosts.next();
    // At most one name of a type (RFC 6066 3).
    if hosts.next().is_some() {
        return None;
    }
    Some(
        host.and_then(|(_, name)| std::str::from_utf8(name).ok())
            .and_then(host::normalise),
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::route::PEEK_LIMIT;
    use crate::route::captured;

    /// A ClientHello handshake message (header included) with these extensions, each `(type,
    /// data)`, and `ciphers` cipher suites.
    pub fn hello_message(extensions: &[(u16, Vec<u8>)], ciphers: usize) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xab; 32]);
        body.push(32);
        body.extend_from_slice(&[0xcd; 32]);
        body.extend_from_slice(&u16::try_from(2 * ciphers).unwrap().to_be_bytes());
        for i in 0..ciphers {
            body.extend_from_slice(&(0x1301 + u16::try_from(i % 3).unwrap()).to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (t, data) in extensions {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![CLIENT_HELLO];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// An SNI extension's contents naming `names` (as host_name entries).
    pub fn sni_ext(names: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for name in names {
            list.push(0);
            list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            list.extend_from_slice(name.as_bytes());
        }
        let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (0, data)
    }

    /// `msg` cut into handshake records of at most `fragment` bytes each.
    pub fn records(msg: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(fragment) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A one-record ClientHello naming `name`, with GREASE and padding around the SNI.
    pub fn hello(name: &str) -> Vec<u8> {
        records(
            &hello_message(&[(0x0a0a, vec![]), sni_ext(&[name]), (21, vec![0; 40])], 8),
            MAX_FRAGMENT,
        )
    }

    fn sni_of(bytes: &[u8]) -> Scan<Option<String>> {
        client_hello(bytes, PEEK_LIMIT).map(|ch| ch.sni)
    }

    #[test]
    fn captured_openssl_hello() {
        let bytes = captured::openssl_client_hello();
        assert_eq!(sni_of(&bytes), Scan::Done(Some("www.example.com".into())));
    }

    #[test]
    fn captured_curl_tls13_hello() {
        let bytes = captured::curl_tls13_client_hello();
        assert_eq!(sni_of(&bytes), Scan::Done(Some("intranet.example.com".into())));
    }

    #[test]
    fn captured_hello_split_over_two_records() {
        let bytes = captured::openssl_two_record_client_hello();
        // It really is two records: the first one 512 bytes long.
        assert_eq!(&bytes[..5], &[0x16, 0x03, 0x01, 0x02, 0x00]);
        assert_eq!(bytes[5 + 512], 0x16);
        assert_eq!(sni_of(&bytes), Scan::Done(Some("split.example.com".into())));
    }

    #[test]
    fn every_proper_prefix_is_partial() {
        for bytes in [
            captured::openssl_client_hello(),
            captured::curl_tls13_client_hello(),
            captured::openssl_two_record_client_hello(),
        ] {
            for n in 0..bytes.len() {
                assert_eq!(sni_of(&bytes[..n]), Scan::Partial, "prefix of {n} bytes");
            }
        }
    }

    #[test]
    fn hello_in_records_of_any_size() {
        let msg = hello_message(&[sni_ext(&["Multi.Example.com"]), (21, vec![0; 300])], 20);
        for fragment in [1, 2, 3, 4, 5, 37, 100, msg.len() - 1, msg.len()] {
            let bytes = records(&msg, fragment);
            assert_eq!(
                sni_of(&bytes),
                Scan::Done(Some("multi.example.com".into())),
                "fragment {fragment}"
            );
            assert_eq!(sni_of(&bytes[..bytes.len() - 1]), Scan::Partial, "fragment {fragment}");
        }
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        let mut bytes = hello("a.example");
        bytes.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17]);
        assert_eq!(sni_of(&bytes), Scan::Done(Some("a.example".into())));
    }

    #[test]
    fn hello_without_sni_or_without_extensions() {
        let no_sni = records(&hello_message(&[(10, vec![0, 2, 0, 29])], 1), MAX_FRAGMENT);
        assert_eq!(sni_of(&no_sni), Scan::Done(None));
        // An SSLv3-style hello that ends after the compression methods.
        let mut msg = hello_message(&[], 1);
        msg.truncate(msg.len() - 2);
        msg[3] -= 2;
        assert_eq!(sni_of(&records(&msg, MAX_FRAGMENT)), Scan::Done(None));
    }

    #[test]
    fn ill_formed_names_are_no_name() {
        for bad in ["a b.example", "a..example", "\u{e9}.example"] {
            assert_eq!(sni_of(&hello(bad)), Scan::Done(None), "{bad:?}");
        }
        assert_eq!(sni_of(&hello("trailing.dot.")), Scan::Done(Some("trailing.dot".into())));
    }

    #[test]
    fn first_bytes_decide_whether_it_is_tls() {
        assert_eq!(starts_like_tls(b""), Scan::Partial);
        assert_eq!(starts_like_tls(&[0x16]), Scan::Partial);
        assert_eq!(starts_like_tls(&[0x16, 0x03]), Scan::Partial);
        for minor in 0..=4 {
            assert_eq!(starts_like_tls(&[0x16, 0x03, minor]), Scan::Done(()));
        }
        assert_eq!(starts_like_tls(&[0x16, 0x03, 0x05]), Scan::Invalid);
        assert_eq!(starts_like_tls(&[0x16, 0x02]), Scan::Invalid);
        assert_eq!(sni_of(b"G"), Scan::Invalid);
        assert_eq!(sni_of(b"SSH-2.0-x\r\n"), Scan::Invalid);
        // An SSLv2-compatible hello (0x80 length byte) is not taken for TLS.
        assert_eq!(sni_of(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Scan::Invalid);
    }

    #[test]
    fn malformed_records_are_invalid_at_once() {
        let good = hello("x.example");
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            v
        };
        // Zero-length record, oversized record, a non-handshake record, a ServerHello.
        assert_eq!(sni_of(&[0x16, 0x03, 0x01, 0x00, 0x00]), Scan::Invalid);
        assert_eq!(sni_of(&[0x16, 0x03, 0x01, 0x40, 0x01]), Scan::Invalid);
        assert_eq!(sni_of(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]), Scan::Invalid);
        assert_eq!(sni_of(&with(5, 2)[..6]), Scan::Invalid);
        // A handshake length below any ClientHello's, or one that cannot fit the peek limit.
        assert_eq!(sni_of(&[0x16, 0x03, 0x01, 0x00, 0x30, 1, 0, 0, 10]), Scan::Invalid);
        assert_eq!(sni_of(&[0x16, 0x03, 0x01, 0x40, 0x00, 1, 0, 0x40, 0x00]), Scan::Invalid);
        assert_eq!(sni_of(&[0x16, 0x03, 0x01, 0x40, 0x00, 1, 0, 0x3f, 0xf0]), Scan::Partial);
        // A second record of another type in the middle of the message.
        let msg = hello_message(&[sni_ext(&["x.example"])], 1);
        let mut split = records(&msg[..50], 50);
        split.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x10]);
        assert_eq!(sni_of(&split), Scan::Invalid);
    }

    #[test]
    fn malformed_hellos_are_invalid_once_complete() {
        let sni = sni_ext(&["x.example"]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("two SNI extensions", hello_message(&[sni.clone(), sni.clone()], 1)),
            (
                "two host names",
                hello_message(&[sni_ext(&["a.example", "b.example"])], 1),
            ),
            ("empty SNI", hello_message(&[(0, vec![])], 1)),
            ("empty SNI list", hello_message(&[(0, vec![0, 0])], 1)),
            (
                "SNI list longer than its extension",
                hello_message(&[(0, vec![0, 9, 0, 0, 1, b'a'])], 1),
            ),
            ("SNI entry cut", hello_message(&[(0, vec![0, 5, 0, 0, 1, b'a', 0])], 1)),
            ("no cipher suite", hello_message(std::slice::from_ref(&sni), 0)),
        ];
        for (what, msg) in cases {
            assert_eq!(sni_of(&records(&msg, MAX_FRAGMENT)), Scan::Invalid, "{what}");
        }
        // Extensions block length one too long and one too short.
        let msg = hello_message(std::slice::from_ref(&sni), 1);
        let ext_len_at = msg.len() - sni.1.len() - 4 - 2;
        for delta in [1u8, 0xff] {
            let mut bad = msg.clone();
            bad[ext_len_at + 1] = bad[ext_len_at + 1].wrapping_add(delta);
            assert_eq!(sni_of(&records(&bad, MAX_FRAGMENT)), Scan::Invalid, "delta {delta}");
        }
        // Session id longer than 32.
        let mut bad = msg.clone();
        bad[4 + 34] = 33;
        assert_eq!(sni_of(&records(&bad, MAX_FRAGMENT)), Scan::Invalid);
        // Truncated: the handshake length claims one byte more than the body has, and the
        // record says the message goes on; then another record brings a stray byte.
        let mut bad = msg.clone();
        bad[3] += 1;
        let mut bytes = records(&bad, MAX_FRAGMENT);
        assert_eq!(sni_of(&bytes), Scan::Partial);
        bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x00]);
        assert_eq!(sni_of(&bytes), Scan::Invalid);
    }
}
