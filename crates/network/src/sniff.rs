//! Reading the destination name out of the first bytes a client sends, without any I/O: the
//! server name (SNI) of a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), possibly split over
//! several TLS records, and the `Host` header of an HTTP/1.x request. The egress proxy (see
//! `egress`) feeds these parsers the bytes received so far and asks again when they say
//! [`Sniff::Incomplete`].

/// What the bytes received so far say about the destination name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// More bytes are needed to decide.
    Incomplete,
    /// The name the client asked for (lowercase, no port, no trailing dot).
    Name(String),
    /// A well-formed message without a name (a ClientHello without SNI, an HTTP/1.0 request
    /// without `Host`), or bytes of another protocol: only IP rules can apply.
    NoName,
}

/// TLS record type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension number of `server_name`.
const SERVER_NAME: u16 = 0;
/// `NameType` of a host name in the `server_name` extension.
const HOST_NAME: u8 = 0;
/// Largest TLS record payload (2^14 plus the allowed expansion).
const MAX_RECORD: usize = 16384 + 2048;

/// Parses the SNI of the TLS ClientHello at the start of `buf`.
pub(crate) fn tls_sni(buf: &[u8]) -> Sniff {
    // Reassemble the handshake message from consecutive handshake records.
    let mut msg = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Sniff::Incomplete;
        }
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return Sniff::NoName;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Sniff::NoName;
        }
        if rest.len() < 5 + len {
            // A wrong message type is known from the first bytes; a name only from the whole
            // message.
            msg.extend_from_slice(&rest[5..]);
            return client_hello(&msg);
        }
        msg.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        match client_hello(&msg) {
            Sniff::Incomplete => continue,
            decided => return decided,
        }
    }
}

/// A cursor over a byte slice; every read fails with `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a (possibly partial) handshake message that should be a ClientHello.
fn client_hello(msg: &[u8]) -> Sniff {
    if msg.len() < 4 {
        return Sniff::Incomplete;
    }
    if msg[0] != CLIENT_HELLO {
        return Sniff::NoName;
    }
    let mut r = Reader { buf: msg };
    let _ = r.u8();
    let Some(len) = r.u24() else {
        return Sniff::Incomplete;
    };
    if r.buf.len() < len {
        return Sniff::Incomplete;
    }
    let mut body = Reader { buf: &r.buf[..len] };
    // A complete message that does not parse is not a ClientHello we understand.
    hello_body(&mut body).unwrap_or(Sniff::NoName)
}

fn hello_body(r: &mut Reader<'_>) -> Option<Sniff> {
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.buf.is_empty() {
        return Some(Sniff::NoName); // no extensions at all
    }
    let mut exts = Reader { buf: r.vec16()? };
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind == SERVER_NAME {
            return server_name(data);
        }
    }
    Some(Sniff::NoName)
}

/// The `server_name` extension: a list of (type, name); the host name entry counts.
fn server_name(data: &[u8]) -> Option<Sniff> {
    let mut r = Reader { buf: data };
    let mut list = Reader { buf: r.vec16()? };
    while !list.buf.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == HOST_NAME {
            return Some(name_from(name));
        }
    }
    Some(Sniff::NoName)
}

/// A host name from the wire: printable ASCII, normalised; anything else has no usable name.
fn name_from(raw: &[u8]) -> Sniff {
    if raw.is_empty()
        || raw.len() > 255
        || !raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Sniff::NoName;
    }
    let name = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    if name.is_empty() {
        Sniff::NoName
    } else {
        Sniff::Name(name)
    }
}

/// Parses the `Host` header of the HTTP/1.x request at the start of `buf`. Decided once the
/// header block is complete (`\r\n\r\n`), or early when the bytes cannot be HTTP.
pub(crate) fn http_host(buf: &[u8]) -> Sniff {
    // The request line starts with a method token; anything else is not HTTP.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == buf.len() {
        return if method_len > 20 {
            Sniff::NoName
        } else {
            Sniff::Incomplete
        };
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Sniff::NoName;
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Sniff::Incomplete;
    };
    let head = &buf[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return Sniff::NoName;
    };
    if !request_line.ends_with(b" HTTP/1.1") && !request_line.ends_with(b" HTTP/1.0") {
        return Sniff::NoName;
    }
    let mut host = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Sniff::NoName;
        };
        if line[..colon].eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Sniff::NoName; // two Host headers: ambiguous, trust neither
            }
            host = Some(line[colon + 1..].trim_ascii());
        }
    }
    match host {
        Some(value) => name_from(strip_port(value)),
        None => Sniff::NoName,
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]` (which then has no usable name).
fn strip_port(value: &[u8]) -> &[u8] {
    if value.starts_with(b"[") {
        return value;
    }
    match value.iter().rposition(|&b| b == b':') {
        Some(i) if value[i + 1..].iter().all(u8::is_ascii_digit) => &value[..i],
        _ => value,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello sent by `openssl s_client -servername api.example.com` (OpenSSL
    /// 3.0.19), captured with `socat -u TCP-LISTEN:… OPEN:…`.
    const OPENSSL_HELLO: &[u8] = include_bytes!("../tests/data/clienthello-openssl.bin");
    /// The same client with `-noservername`: a ClientHello without SNI.
    const OPENSSL_HELLO_NO_SNI: &[u8] =
        include_bytes!("../tests/data/clienthello-openssl-nosni.bin");

    #[test]
    fn sni_of_a_real_client_hello() {
        assert_eq!(
            tls_sni(OPENSSL_HELLO),
            Sniff::Name("api.example.com".into())
        );
        // Trailing application data after the hello does not matter.
        let mut more = OPENSSL_HELLO.to_vec();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(tls_sni(&more), Sniff::Name("api.example.com".into()));
        assert_eq!(tls_sni(OPENSSL_HELLO_NO_SNI), Sniff::NoName);
    }

    #[test]
    fn sni_needs_the_whole_client_hello() {
        for n in 0..OPENSSL_HELLO.len() {
            assert_eq!(
                tls_sni(&OPENSSL_HELLO[..n]),
                Sniff::Incomplete,
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn sni_across_records() {
        // The same handshake message split into two records (legal TLS fragmentation).
        let msg = &OPENSSL_HELLO[5..];
        let (a, b) = msg.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(tls_sni(&split[..60]), Sniff::Incomplete);
        assert_eq!(tls_sni(&split), Sniff::Name("api.example.com".into()));
    }

    #[test]
    fn malformed_tls() {
        assert_eq!(tls_sni(b"GET / HTTP/1.1\r\n"), Sniff::NoName);
        assert_eq!(tls_sni(&[22, 3, 1, 0, 0]), Sniff::NoName); // empty record
        assert_eq!(tls_sni(&[22, 3, 1, 0xff, 0xff]), Sniff::NoName); // oversized record
        assert_eq!(tls_sni(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Sniff::NoName); // ServerHello
                                                                           // A handshake length that overruns its content: the lengths inside lie.
        let mut lying = OPENSSL_HELLO.to_vec();
        lying[5 + 4 + 2 + 32] = 0xff; // session id length past the end of the message
        assert_eq!(tls_sni(&lying), Sniff::NoName);
        // A name with bytes no host name has.
        let mut odd = OPENSSL_HELLO.to_vec();
        let at = find(&odd, b"api.example.com").expect("name in the capture");
        odd[at + 3] = b'/';
        assert_eq!(tls_sni(&odd), Sniff::NoName);
        // Random garbage of every length never panics.
        let mut x: u32 = 0x1234_5678;
        for len in 0..600 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let mut with_header = vec![22, 3, 1];
            with_header.extend_from_slice(&(len as u16).to_be_bytes());
            with_header.extend_from_slice(&junk);
            let _ = tls_sni(&with_header);
            let _ = http_host(&junk);
        }
    }

    #[test]
    fn http_host_header() {
        let req = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  Allowed.Test:8080 \r\n\r\nbody";
        assert_eq!(http_host(req), Sniff::Name("allowed.test".into()));
        assert_eq!(
            http_host(b"POST / HTTP/1.0\r\nHost: a.b.\r\n\r\n"),
            Sniff::Name("a.b".into())
        );
        // Every strict prefix of the header block is undecided.
        let end = find(req, b"\r\n\r\n").expect("end of headers") + 4;
        for n in 0..end {
            assert_eq!(http_host(&req[..n]), Sniff::Incomplete, "prefix {n}");
        }
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Sniff::NoName);
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            Sniff::NoName
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Sniff::NoName
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            Sniff::NoName
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"),
            Sniff::NoName
        );
        assert_eq!(http_host(b"SSH-2.0-OpenSSH\r\n"), Sniff::NoName);
        assert_eq!(http_host(&[22, 3, 1, 0, 10]), Sniff::NoName);
        assert_eq!(http_host(b"GE"), Sniff::Incomplete);
        assert_eq!(http_host(b"GET / HTTP/2\r\n\r\n"), Sniff::NoName);
    }
}
