//! Which callback URLs and addresses Switchboard may call (server-side request forgery guard).
//!
//! The same address rule applies twice: to the URL when a message is accepted ([`check_url`]),
//! and to every address a host name resolves to when a callback is delivered (the client's
//! resolver), so a name that later resolves to an internal address (DNS rebinding) is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest callback URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// A kind of address a callback is never sent to (loopback only without the
/// `--allow-loopback-callbacks` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1, `localhost` and `*.localhost`.
    Loopback,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 (RFC 1918).
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// 169.254.0.0/16 and fe80::/10 (cloud metadata services live here).
    LinkLocal,
    /// fc00::/7, IPv6 unique local addresses.
    UniqueLocal,
    /// 0.0.0.0/8 and ::.
    Unspecified,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Special-purpose ranges no receiver lives in: 192.0.0.0/24, the documentation ranges
    /// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), benchmarking
    /// (198.18.0.0/15), 240.0.0.0/4, and the IPv6 discard prefix 100::/64.
    Reserved,
}

impl AddressClass {
    /// The kind of address in words, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private network address",
            Self::SharedCgnat => "a carrier-grade NAT address",
            Self::LinkLocal => "a link-local address",
            Self::UniqueLocal => "an IPv6 unique local address",
            Self::Unspecified => "an unspecified address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Reserved => "a reserved (special-purpose) address",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// The class of a non-public address; `None` for an address callbacks may go to. An IPv6
/// address embedding an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is
/// judged by the IPv4 address.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

/// The class of `ip` if a callback must not go there: [`classify`], except that loopback is
/// allowed when `allow_loopback`.
pub fn refused(ip: IpAddr, allow_loopback: bool) -> Option<AddressClass> {
    classify(ip).filter(|class| !(allow_loopback && *class == AddressClass::Loopback))
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        (127, _) => AddressClass::Loopback,
        (10, _) | (172, 16..=31) | (192, 168) => AddressClass::Private,
        (100, 64..=127) => AddressClass::SharedCgnat,
        (169, 254) => AddressClass::LinkLocal,
        (0, _) => AddressClass::Unspecified,
        (224..=239, _) => AddressClass::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => AddressClass::Broadcast,
        (240..=255, _) | (198, 18 | 19) => AddressClass::Reserved,
        (192, 0) if c == 0 || c == 2 => AddressClass::Reserved,
        (198, 51) if c == 100 => AddressClass::Reserved,
        (203, 0) if c == 113 => AddressClass::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form (::a.b.c.d) end with an IPv4
    // address; 6to4 (2002::/16) carries one after its prefix.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || (segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified())
    {
        let [.., a, b, c, d] = ip.octets();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2002 {
        let [_, _, a, b, c, d, ..] = ip.octets();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match segments[0] {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_loopback() => AddressClass::Loopback,
        s if s & 0xff00 == 0xff00 => AddressClass::Multicast,
        s if s & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        s if s & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        0x2001 if segments[1] == 0x0db8 => AddressClass::Reserved,
        0x0100 if segments[1..4] == [0, 0, 0] => AddressClass::Reserved,
        _ => return None,
    })
}

/// Why a callback URL was refused. Each message is a sentence for the API caller (a 400 on
/// field `status_callback`); none repeats the URL, which may carry a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL_LEN`].
    #[error("the URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    /// Not an absolute URL.
    #[error("not an absolute URL ({0}); write one such as https://example.com/callbacks")]
    Invalid(url::ParseError),
    /// A scheme other than https and http.
    #[error("the scheme must be https, not `{0}`")]
    Scheme(String),
    /// Plain http to a host that is not loopback, or to loopback without the flag.
    #[error("the URL must use https (plain http is allowed only to loopback hosts, and only when the server runs with --allow-loopback-callbacks)")]
    PlainHttp,
    /// A user name or password in the URL.
    #[error("the URL must not contain a user name or password")]
    Credentials,
    /// No host (`https:///path` is parsed as such by some clients; `url` refuses it).
    #[error("the URL has no host")]
    NoHost,
    /// A loopback host while loopback callbacks are not allowed.
    #[error("the host is a loopback address; callbacks go to loopback only when the server runs with --allow-loopback-callbacks")]
    Loopback,
    /// An IP address host of a refused class (private, link-local, …).
    #[error("the host is {0}; callbacks go only to public addresses")]
    Address(AddressClass),
}

/// Checks a callback URL when a message is accepted and gives it parsed. Allowed: an absolute
/// https URL (at most [`MAX_URL_LEN`] bytes, no user name or password) whose host is a name or a
/// public IP address. Loopback hosts (127.0.0.0/8, ::1, `localhost`, `*.localhost`) only when
/// `allow_loopback`, and then with http or https. IP addresses in any form the URL standard
/// accepts (`0x7f000001`, `017700000001`, `[::ffff:10.0.0.1]`) are judged by the address they
/// stand for. A name is judged again, by what it resolves to, when the callback is sent.
pub fn check_url(url: &str, allow_loopback: bool) -> Result<Url, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let parsed = Url::parse(url).map_err(UrlError::Invalid)?;
    let https = match parsed.scheme() {
        "https" => true,
        "http" => false,
        other => {
            // Bounded: a scheme is a short token in practice, but the input is the caller's.
            let shown: String = other.chars().take(32).collect();
            return Err(UrlError::Scheme(shown));
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let class = match parsed.host() {
        None => return Err(UrlError::NoHost),
        Some(Host::Ipv4(ip)) => classify_v4(ip),
        Some(Host::Ipv6(ip)) => classify_v6(ip),
        Some(Host::Domain(name)) => is_loopback_name(name).then_some(AddressClass::Loopback),
    };
    match class {
        Some(AddressClass::Loopback) if allow_loopback => Ok(parsed),
        Some(AddressClass::Loopback) if !https => Err(UrlError::PlainHttp),
        Some(AddressClass::Loopback) => Err(UrlError::Loopback),
        Some(class) => Err(UrlError::Address(class)),
        None if !https => Err(UrlError::PlainHttp),
        None => Ok(parsed),
    }
}

/// `localhost` and any name under it (RFC 6761), with or without a final dot.
pub(super) fn is_loopback_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    /// `expected`: `Ok(normalised URL)` or `Err(error)`.
    fn check(url: &str, allow_loopback: bool, expected: Result<&str, UrlError>) {
        let got = check_url(url, allow_loopback);
        match (&got, &expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.as_str(), *want, "{url} (loopback {allow_loopback})"),
            (Err(got), Err(want)) => assert_eq!(got, want, "{url} (loopback {allow_loopback})"),
            _ => panic!("{url} (loopback {allow_loopback}): got {got:?}, expected {expected:?}"),
        }
    }

    fn ok(url: &str) -> Result<&str, UrlError> {
        Ok(url)
    }

    #[test]
    fn public_https_urls_pass() {
        for flag in [false, true] {
            check("https://example.com/cb", flag, ok("https://example.com/cb"));
            check("https://EXAMPLE.com:8443/cb?t=1#x", flag, ok("https://example.com:8443/cb?t=1#x"));
            check("https://93.184.216.34/", flag, ok("https://93.184.216.34/"));
            check("https://[2606:2800:220:1::1]/", flag, ok("https://[2606:2800:220:1::1]/"));
            check("https://172.32.0.1/", flag, ok("https://172.32.0.1/"));
            check("https://100.128.0.1/", flag, ok("https://100.128.0.1/"));
            check("https://192.169.0.1/", flag, ok("https://192.169.0.1/"));
            check("https://[fec0::1]/", flag, ok("https://[fec0::1]/"));
            check("https://[::ffff:8.8.8.8]/", flag, ok("https://[::ffff:808:808]/"));
            // A name is judged when it is resolved, not here.
            check("https://intranet/", flag, ok("https://intranet/"));
            check("https://localhost.example.com/", flag, ok("https://localhost.example.com/"));
            check("https://notlocalhost/", flag, ok("https://notlocalhost/"));
            check("https://localhost.example/", flag, ok("https://localhost.example/"));
        }
    }

    #[test]
    fn internal_addresses_are_refused() {
        for flag in [false, true] {
            check("https://10.0.0.1/", flag, Err(UrlError::Address(Private)));
            check("https://10.1/", flag, Err(UrlError::Address(Private)));
            check("https://172.16.0.1/", flag, Err(UrlError::Address(Private)));
            check("https://172.31.255.255/", flag, Err(UrlError::Address(Private)));
            check("https://192.168.1.1:8443/", flag, Err(UrlError::Address(Private)));
            check("https://0xc0.0xa8.1.1/", flag, Err(UrlError::Address(Private)));
            check("https://100.64.0.1/", flag, Err(UrlError::Address(SharedCgnat)));
            check("https://100.127.255.254/", flag, Err(UrlError::Address(SharedCgnat)));
            check("https://169.254.169.254/latest", flag, Err(UrlError::Address(LinkLocal)));
            check("https://2852039166/", flag, Err(UrlError::Address(LinkLocal)));
            check("https://[fe80::1]/", flag, Err(UrlError::Address(LinkLocal)));
            check("https://[febf::1]/", flag, Err(UrlError::Address(LinkLocal)));
            check("https://[fc00::1]/", flag, Err(UrlError::Address(UniqueLocal)));
            check("https://[fd00:ec2::254]/", flag, Err(UrlError::Address(UniqueLocal)));
            check("https://0.0.0.0/", flag, Err(UrlError::Address(Unspecified)));
            check("https://0/", flag, Err(UrlError::Address(Unspecified)));
            check("https://0.1.2.3/", flag, Err(UrlError::Address(Unspecified)));
            check("https://[::]/", flag, Err(UrlError::Address(Unspecified)));
            check("https://224.0.0.1/", flag, Err(UrlError::Address(Multicast)));
            check("https://239.255.255.250/", flag, Err(UrlError::Address(Multicast)));
            check("https://[ff02::1]/", flag, Err(UrlError::Address(Multicast)));
            check("https://255.255.255.255/", flag, Err(UrlError::Address(Broadcast)));
            for reserved in [
                "https://198.18.0.1/",
                "https://198.19.255.1/",
                "https://192.0.0.1/",
                "https://192.0.2.1/",
                "https://198.51.100.7/",
                "https://203.0.113.9/",
                "https://240.0.0.1/",
                "https://[2001:db8::1]/",
                "https://[100::1]/",
            ] {
                check(reserved, flag, Err(UrlError::Address(Reserved)));
            }
            check("https://[2002:a00:1::]/", flag, Err(UrlError::Address(Private)));
            check("https://[::10.0.0.1]/", flag, Err(UrlError::Address(Private)));
            check("https://192.0.1.1/", flag, Ok("https://192.0.1.1/"));
            check("https://[2002:808:808::]/", flag, Ok("https://[2002:808:808::]/"));
            // IPv4 inside IPv6.
            check("https://[::ffff:10.0.0.1]/", flag, Err(UrlError::Address(Private)));
            check("https://[::ffff:a9fe:a9fe]/", flag, Err(UrlError::Address(LinkLocal)));
            check("https://[64:ff9b::192.168.0.1]/", flag, Err(UrlError::Address(Private)));
            // Private and plain http: the address is the problem named.
            check("http://10.0.0.1/", flag, Err(UrlError::Address(Private)));
        }
    }

    #[test]
    fn loopback_only_with_the_flag() {
        let cases = [
            ("http://127.0.0.1:9/", "http://127.0.0.1:9/"),
            ("https://127.0.0.1:9/", "https://127.0.0.1:9/"),
            ("https://0x7f000001/", "https://127.0.0.1/"),
            ("https://017700000001/", "https://127.0.0.1/"),
            ("https://2130706433/", "https://127.0.0.1/"),
            ("https://127.1/", "https://127.0.0.1/"),
            ("https://127.255.255.254/", "https://127.255.255.254/"),
            ("http://[::1]:8080/cb", "http://[::1]:8080/cb"),
            ("https://[::ffff:127.0.0.1]/", "https://[::ffff:7f00:1]/"),
            ("http://localhost:3000/cb", "http://localhost:3000/cb"),
            ("http://LOCALHOST./", "http://localhost./"),
            ("https://app.localhost/", "https://app.localhost/"),
        ];
        for (url, normalised) in cases {
            check(url, true, ok(normalised));
            let refusal = if url.starts_with("http:") { UrlError::PlainHttp } else { UrlError::Loopback };
            check(url, false, Err(refusal));
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for flag in [false, true] {
            check("http://example.com/cb", flag, Err(UrlError::PlainHttp));
            check("http://93.184.216.34/", flag, Err(UrlError::PlainHttp));
            check("ftp://example.com/x", flag, Err(UrlError::Scheme("ftp".into())));
            check("file:///etc/passwd", flag, Err(UrlError::Scheme("file".into())));
            check("javascript:alert(1)", flag, Err(UrlError::Scheme("javascript".into())));
            check("gopher://127.0.0.1:25/", flag, Err(UrlError::Scheme("gopher".into())));
            check("https://user:pw@example.com/", flag, Err(UrlError::Credentials));
            check("https://user@example.com/", flag, Err(UrlError::Credentials));
            check("https://:pw@example.com/", flag, Err(UrlError::Credentials));
            check("/relative/path", flag, Err(UrlError::Invalid(url::ParseError::RelativeUrlWithoutBase)));
            check("example.com/cb", flag, Err(UrlError::Invalid(url::ParseError::RelativeUrlWithoutBase)));
            check("", flag, Err(UrlError::Invalid(url::ParseError::RelativeUrlWithoutBase)));
            check("https://", flag, Err(UrlError::Invalid(url::ParseError::EmptyHost)));
            check("https://[::1/", flag, Err(UrlError::Invalid(url::ParseError::InvalidIpv6Address)));
            check("https://256.0.0.1/", flag, Err(UrlError::Invalid(url::ParseError::InvalidIpv4Address)));
            check("https://exa mple.com/", flag, Err(UrlError::Invalid(url::ParseError::IdnaError)));
        }
    }

    #[test]
    fn length_is_bounded() {
        let path = "a".repeat(MAX_URL_LEN - "https://example.com/".len());
        let longest = format!("https://example.com/{path}");
        check(&longest, false, Ok(&longest));
        check(&format!("{longest}b"), false, Err(UrlError::TooLong));
        check(&"x".repeat(1_000_000), false, Err(UrlError::TooLong));
    }

    #[test]
    fn messages_do_not_echo_the_url() {
        let url = "https://user:tok_SECRET@10.0.0.1/?token=tok_SECRET";
        for flag in [false, true] {
            let message = check_url(url, flag).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!message.is_empty() && !message.contains("tok_SECRET"), "{message}");
        }
        let long_scheme = format!("{}://x", "a".repeat(500));
        let message = check_url(&long_scheme, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.len() < 100, "{message}");
    }

    fn check_ip(ip: &str, allow_loopback: bool, expected: Option<AddressClass>) {
        let parsed: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
        assert_eq!(refused(parsed, allow_loopback), expected, "{ip} (loopback {allow_loopback})");
    }

    #[test]
    fn resolved_addresses() {
        for flag in [false, true] {
            check_ip("8.8.8.8", flag, None);
            check_ip("2001:4860:4860::8888", flag, None);
            check_ip("10.255.255.255", flag, Some(Private));
            check_ip("172.15.255.255", flag, None);
            check_ip("172.16.0.0", flag, Some(Private));
            check_ip("100.63.255.255", flag, None);
            check_ip("100.64.0.0", flag, Some(SharedCgnat));
            check_ip("169.254.0.1", flag, Some(LinkLocal));
            check_ip("fe80::abcd", flag, Some(LinkLocal));
            check_ip("fdff::1", flag, Some(UniqueLocal));
            check_ip("0.0.0.0", flag, Some(Unspecified));
            check_ip("::", flag, Some(Unspecified));
            check_ip("239.0.0.1", flag, Some(Multicast));
            check_ip("ff05::2", flag, Some(Multicast));
            check_ip("255.255.255.255", flag, Some(Broadcast));
            check_ip("::ffff:192.168.0.1", flag, Some(Private));
            check_ip("64:ff9b::a00:1", flag, Some(Private));
            check_ip("64:ff9b::808:808", flag, None);
            check_ip("64:ff9b:1::a00:1", flag, None);
        }
        let loopback = ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"];
        for ip in loopback {
            check_ip(ip, false, Some(Loopback));
            check_ip(ip, true, None);
        }
    }
}
