//! The `quorrent:` link: one file and the network that serves it, as a
//! URI a person can paste (format, parse, the CA fingerprint, and the
//! errors that name the bad field).
//!
//! ```text
//! quorrent:?v=1&id=<64 hex>&name=<percent-encoded>&size=<bytes>&proxy=<HOST:PORT>[&proxy=...]&ca=sha256:<64 hex>
//! ```
//!
//! - `v`: the format's version, `1`. Optional when parsing (absent means
//!   1); any other value is refused, so a link of a later format is never
//!   half understood.
//! - `id`: the file id (BLAKE3 of the manifest), 64 hex digits.
//! - `name`: the file name, UTF-8, percent-encoded; it must pass
//!   [`check_file_name`](crate::ids::check_file_name).
//! - `size`: the file's size in bytes, decimal digits only.
//! - `proxy`: one per proxy, in the order they are tried, `HOST:PORT`
//!   (an IP address, IPv6 in brackets, or a DNS name; port 1-65535),
//!   percent-encoded (`[`, `]` become `%5B`, `%5D`); 1 to
//!   [`MAX_PROXIES`] of them.
//! - `ca`: `sha256:` and the SHA-256 of the cluster CA certificate's DER
//!   encoding (not of the PEM text, not of the public key), 64 hex digits.
//!
//! Parsing is strict about the fields it knows and lenient about the rest:
//! a link is at most [`MAX_LINK_LEN`] bytes (checked first); the scheme
//! (`quorrent:`, any case) must be followed by `?`; surrounding white
//! space is trimmed and a `#fragment` dropped; each known field appears
//! once (`proxy` once or more); unknown parameters are ignored, so a later
//! version may add optional fields that this one skips. Values use RFC
//! 3986 percent-encoding: `%` and two hex digits, `+` is a plus sign (not
//! a space). Every refusal is a [`LinkError`] that names the field.

use std::fmt;

use crate::ids::{check_file_name, FileId};

/// The longest link accepted, in bytes (8 KiB).
pub const MAX_LINK_LEN: usize = 8 * 1024;
/// The most proxies a link carries.
pub const MAX_PROXIES: usize = 16;
/// The scheme, with its colon.
pub const SCHEME: &str = "quorrent:";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// The SHA-256 of a CA certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint(pub [u8; 32]);

impl CaFingerprint {
    /// The fingerprint of a certificate given as DER.
    pub fn of_der(der: &[u8]) -> CaFingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        CaFingerprint(out)
    }
}

/// `sha256:<64 lower-case hex>`, as in a link.
impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A parsed link: every field has passed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    /// `HOST:PORT`, tried in order.
    pub proxies: Vec<String>,
    pub ca: CaFingerprint,
}

/// Why a link was refused: the field (`link` for the whole, `scheme`,
/// `v`, `id`, `name`, `size`, `proxy`, `ca`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad link: field `{field}`: {message}")]
pub struct LinkError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> LinkError {
    LinkError {
        field,
        message: message.into(),
    }
}

/// At most 80 characters of untrusted text, quoted, for an error message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Whether `text` is meant as a link, so that a command taking "an id, a
/// name or a link" knows which it got: it starts with a URI scheme
/// (`quorrent:`, or another such as `magnet:` or `https:`, which
/// [`Link::parse`] then refuses naming the scheme) followed by `?` or `/`.
/// A file name of that form is named by its id instead.
pub fn looks_like_link(text: &str) -> bool {
    let t = text.trim_start();
    if t.len() >= SCHEME.len() && t.as_bytes()[..SCHEME.len()].eq_ignore_ascii_case(SCHEME.as_bytes()) {
        return true;
    }
    let Some((scheme, rest)) = t.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && (rest.starts_with('?') || rest.starts_with('/'))
}

fn has_scheme(text: &str) -> bool {
    text.len() >= SCHEME.len() && text.as_bytes()[..SCHEME.len()].eq_ignore_ascii_case(SCHEME.as_bytes())
}

/// Bytes kept as they are in a value: RFC 3986 unreserved characters, and
/// `:` (a `pchar`, so `HOST:PORT` stays readable).
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
}

/// Percent-encodes `s` for a query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes an RFC 3986 percent-encoded value into UTF-8 text.
fn decode_component(field: &'static str, s: &str) -> Result<String, LinkError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = bytes.get(i + 1..i + 3).filter(|p| p.iter().all(u8::is_ascii_hexdigit));
            let Some(pair) = pair else {
                return Err(bad(
                    field,
                    format!("bad percent-encoding at byte {i}: `%` must be followed by two hex digits"),
                ));
            };
            // Two hex digits: always valid.
            let hi = (pair[0] as char).to_digit(16).unwrap_or(0) as u8;
            let lo = (pair[1] as char).to_digit(16).unwrap_or(0) as u8;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(field, "the percent-decoded value is not UTF-8"))
}

/// Checks one proxy address: `HOST:PORT` with a port that can be dialled.
fn check_proxy(addr: &str) -> Result<(), LinkError> {
    let (_, port) = crate::net::split_host_port(addr).map_err(|e| bad("proxy", e))?;
    if port == 0 {
        return Err(bad("proxy", format!("{}: port 0 cannot be dialled", excerpt(addr))));
    }
    Ok(())
}

/// Refuses a second value of a field that takes one.
fn once<T>(field: &'static str, slot: &Option<T>) -> Result<(), LinkError> {
    match slot {
        Some(_) => Err(bad(field, "given more than once")),
        None => Ok(()),
    }
}

fn parse_fingerprint(value: &str) -> Result<CaFingerprint, LinkError> {
    let Some((algo, digits)) = value.split_once(':') else {
        return Err(bad("ca", "expected sha256:<64 hex digits>"));
    };
    if !algo.eq_ignore_ascii_case("sha256") {
        return Err(bad(
            "ca",
            format!(
                "unknown fingerprint algorithm {} (this quorrent knows sha256)",
                excerpt(algo)
            ),
        ));
    }
    let mut out = [0u8; 32];
    if digits.len() != 64 || hex::decode_to_slice(digits, &mut out).is_err() {
        return Err(bad("ca", format!("{} is not 64 hex digits", excerpt(digits))));
    }
    Ok(CaFingerprint(out))
}

impl Link {
    /// Parses and checks a link (see the module's documentation for the
    /// rules); the error names the first bad field.
    pub fn parse(text: &str) -> Result<Link, LinkError> {
        if text.len() > MAX_LINK_LEN {
            return Err(bad(
                "link",
                format!("{} bytes, over the limit of {MAX_LINK_LEN}", text.len()),
            ));
        }
        let text = text.trim();
        if !has_scheme(text) {
            let scheme = text.split_once(':').map_or(text, |(s, _)| s);
            return Err(bad(
                "scheme",
                format!("a link starts with `quorrent:`, not {}", excerpt(scheme)),
            ));
        }
        let rest = &text[SCHEME.len()..];
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let Some(query) = rest.strip_prefix('?') else {
            return Err(bad("scheme", "`quorrent:` must be followed by `?` and the fields"));
        };
        let (mut version, mut id, mut name, mut size, mut ca) = (None, None, None, None, None);
        let mut proxies = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let field: &'static str = match key {
                "v" => "v",
                "id" => "id",
                "name" => "name",
                "size" => "size",
                "proxy" => "proxy",
                "ca" => "ca",
                // Forward compatibility: a later version's optional fields.
                _ => continue,
            };
            if value.is_empty() {
                return Err(bad(field, "empty value"));
            }
            let value = decode_component(field, value)?;
            match field {
                "v" => {
                    once(field, &version)?;
                    if value != VERSION.to_string() {
                        return Err(bad(
                            "v",
                            format!(
                                "version {} is not one this quorrent reads (it reads {VERSION}); upgrade quorrent",
                                excerpt(&value)
                            ),
                        ));
                    }
                    version = Some(VERSION);
                }
                "id" => {
                    once(field, &id)?;
                    if value.len() != 64 {
                        return Err(bad("id", format!("{} is not 64 hex digits", excerpt(&value))));
                    }
                    let parsed = value
                        .parse::<FileId>()
                        .map_err(|_| bad("id", format!("{} is not 64 hex digits", excerpt(&value))))?;
                    id = Some(parsed);
                }
                "name" => {
                    once(field, &name)?;
                    check_file_name(&value).map_err(|e| bad("name", e.to_string()))?;
                    name = Some(value);
                }
                "size" => {
                    once(field, &size)?;
                    if !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad("size", format!("{} is not a number of bytes", excerpt(&value))));
                    }
                    let n = value
                        .parse::<u64>()
                        .map_err(|_| bad("size", format!("{} is too large", excerpt(&value))))?;
                    size = Some(n);
                }
                "proxy" => {
                    if proxies.len() == MAX_PROXIES {
                        return Err(bad("proxy", format!("more than {MAX_PROXIES} proxies")));
                    }
                    check_proxy(&value)?;
                    proxies.push(value);
                }
                _ => {
                    once(field, &ca)?;
                    ca = Some(parse_fingerprint(&value)?);
                }
            }
        }
        let missing = |field: &'static str| bad(field, "missing");
        if proxies.is_empty() {
            return Err(bad("proxy", "missing: the link names no proxy to reach the network"));
        }
        Ok(Link {
            id: id.ok_or_else(|| missing("id"))?,
            name: name.ok_or_else(|| missing("name"))?,
            size: size.ok_or_else(|| missing("size"))?,
            proxies,
            ca: ca.ok_or_else(|| missing("ca"))?,
        })
    }
}

impl std::str::FromStr for Link {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Link, LinkError> {
        Link::parse(s)
    }
}

/// The link's text, fields in the documented order; what [`Link::parse`]
/// reads back as the same link.
impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}?v={VERSION}&id={}&name={}&size={}",
            self.id,
            encode_component(&self.name),
            self.size
        )?;
        for p in &self.proxies {
            write!(f, "&proxy={}", encode_component(p))?;
        }
        write!(f, "&ca={}", self.ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuzzkit::proptest::prelude::*;

    fn sample() -> Link {
        Link {
            id: FileId([0xab; 32]),
            name: "My Song (live) & 100% ü+.mp3".into(),
            size: 12_345_678,
            proxies: vec![
                "127.0.0.1:7400".into(),
                "[::1]:7400".into(),
                "proxy-1.example.org:7400".into(),
            ],
            ca: CaFingerprint([0x5c; 32]),
        }
    }

    #[test]
    fn formats_and_parses_back() {
        let link = sample();
        let text = link.to_string();
        assert!(text.starts_with("quorrent:?v=1&id=abab"), "{text}");
        assert!(
            text.contains("&name=My%20Song%20%28live%29%20%26%20100%25%20%C3%BC%2B.mp3&"),
            "{text}"
        );
        assert!(text.contains("&proxy=%5B::1%5D:7400&"), "{text}");
        assert!(text.ends_with(&format!("&ca=sha256:{}", "5c".repeat(32))), "{text}");
        assert_eq!(Link::parse(&text).unwrap(), link);
        // Pasted with white space, a fragment, upper-case scheme and hex,
        // raw brackets, no version, unknown fields: the same link.
        let loose = format!(
            "  QUORRENT:?x-later=1&id={}&name=My%20Song%20%28live%29%20%26%20100%25%20%c3%bc%2b.mp3&size=12345678\
             &proxy=127.0.0.1:7400&proxy=[::1]:7400&proxy=proxy-1.example.org:7400&&ca=SHA256:{}&tr=zzz#frag \n",
            "AB".repeat(32),
            "5C".repeat(32)
        );
        assert_eq!(Link::parse(&loose).unwrap(), link);
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256("abc"), FIPS 180-2.
        assert_eq!(
            CaFingerprint::of_der(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Each refusal names its field.
    #[test]
    fn refusals_name_the_field() {
        let good = sample().to_string();
        let id = format!("id={}", "ab".repeat(32));
        let ca = format!("ca=sha256:{}", "5c".repeat(32));
        let cases: Vec<(String, &str)> = vec![
            (good.replace(&id, "id=xyz"), "id"),
            (good.replace(&id, &format!("id={}", "zz".repeat(32))), "id"),
            (good.replace(&id, &format!("id={}", "ab".repeat(33))), "id"),
            (good.replace(&format!("{id}&"), ""), "id"),
            (good.replace("size=12345678", "size=12kB"), "size"),
            (good.replace("size=12345678", "size=-1"), "size"),
            (good.replace("size=12345678", "size=99999999999999999999999"), "size"),
            (good.replace("size=12345678", "size="), "size"),
            (good.replace("&size=12345678", ""), "size"),
            (good.replace("name=My%20", "name=My%2"), "name"),
            (good.replace("name=My%20", "name=My%zz"), "name"),
            (good.replace("name=My%20", "name=%FF"), "name"),
            (good.replace("name=My%20", "name=a%2Fb"), "name"),
            (good.replace("name=My%20", "name=a%0Ab"), "name"),
            (good.replace("quorrent:", "magnet:"), "scheme"),
            (good.replace("quorrent:?", "quorrent:"), "scheme"),
            ("https://example.org/".into(), "scheme"),
            ("".into(), "scheme"),
            (good.replace("proxy=127.0.0.1:7400", "proxy=127.0.0.1"), "proxy"),
            (good.replace("proxy=127.0.0.1:7400", "proxy=127.0.0.1:0"), "proxy"),
            (good.replace("proxy=127.0.0.1:7400", "proxy=bad_host:1"), "proxy"),
            (good.replace("proxy=127.0.0.1:7400", "proxy=1.2.3.4:70000"), "proxy"),
            (
                format!(
                    "quorrent:?{id}&name=a&size=1&{ca}{}",
                    "&proxy=h:1".repeat(MAX_PROXIES + 1)
                ),
                "proxy",
            ),
            (format!("quorrent:?{id}&name=a&size=1&{ca}"), "proxy"),
            (good.replace("ca=sha256:", "ca=md5:"), "ca"),
            (good.replace("ca=sha256:5c", "ca=sha256:"), "ca"),
            (good.replace("ca=sha256:", "ca="), "ca"),
            (good.replace(&format!("&{ca}"), ""), "ca"),
            (format!("{good}&{ca}"), "ca"),
            (good.replace("v=1", "v=2"), "v"),
            (format!("{good}&pad={}", "x".repeat(MAX_LINK_LEN)), "link"),
        ];
        for (text, field) in cases {
            let e = Link::parse(&text).expect_err(&text);
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
            assert!(e.to_string().len() < 400, "{e}");
        }
        for (text, meant) in [
            ("magnet:?xt=urn:btih:00", true),
            ("https://example.org/x", true),
            ("QuOrRent:whatever", true),
            ("song.mp3", false),
            ("a:b.txt", false),
            ("1:?x", false),
            (":?x", false),
        ] {
            assert_eq!(looks_like_link(text), meant, "{text}");
        }
        // Unknown fields are ignored, even malformed ones.
        Link::parse(&format!("{good}&later=%zz&flag")).unwrap();
    }

    fn arb_host() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
            "[a-z][a-z0-9-]{0,20}[a-z0-9](\\.[a-z][a-z0-9]{0,10}){0,3}",
        ]
    }

    fn arb_link() -> impl Strategy<Value = Link> {
        (
            any::<[u8; 32]>(),
            "[^/\\\\\\p{Cc}]{1,60}".prop_filter("a file name", |n| check_file_name(n).is_ok()),
            any::<u64>(),
            prop::collection::vec((arb_host(), 1u16..), 1..=MAX_PROXIES),
            any::<[u8; 32]>(),
        )
            .prop_map(|(id, name, size, proxies, ca)| Link {
                id: FileId(id),
                name,
                size,
                proxies: proxies.into_iter().map(|(h, p)| format!("{h}:{p}")).collect(),
                ca: CaFingerprint(ca),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_link_round_trips(link in arb_link()) {
            let text = link.to_string();
            prop_assert!(text.len() <= MAX_LINK_LEN);
            prop_assert!(text.is_ascii());
            prop_assert_eq!(Link::parse(&text).unwrap(), link);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}", tail in "[a-z%=&?:0-9\\[\\]]{0,100}") {
            let _ = Link::parse(&text);
            let _ = Link::parse(&format!("quorrent:?{text}{tail}"));
        }
    }
}
