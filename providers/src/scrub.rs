//! A provider's answer made fit to keep. What a provider says back — its error codes and
//! texts, its message id — is hostile input: a gateway may echo the request (credentials,
//! recipient) or answer with a whole HTML page. The dispatcher passes every answer through
//! [`SentCredentials::clean_error`] or [`SentCredentials::clean_message_id`] before anything
//! logs, stores or returns it; nothing else scrubs.
//!
//! Cleaning a text:
//! 1. every credential the provider sends ([`crate::Provider::credentials_sent`]) is replaced
//!    by `<redacted>`, in each form it may come back in: as sent, JSON-escaped, HTML-escaped,
//!    URL-encoded (form and component style, either hex case), base64 (standard and URL-safe,
//!    with or without padding, and inside a longer base64 text) and those forms' own encodings;
//! 2. HTML is reduced to its text (tags, scripts, styles and comments dropped, entities
//!    decoded), control characters become spaces and whitespace runs one space;
//! 3. the message's recipient (as given, without `+`, URL-encoded; email case-insensitively)
//!    and any other E.164-looking number (`+` and 8–15 digits) are masked with
//!    [`crate::mask_recipient`];
//! 4. in an error's code and text, the message's body (as sent, JSON-, URL- or HTML-escaped) is
//!    replaced by `<body>`: bodies are never logged;
//! 5. the text is cut to [`MAX_TEXT_BYTES`] (codes to [`MAX_CODE_BYTES`], message ids to
//!    [`MAX_MESSAGE_ID_BYTES`]) on a character boundary, a cut marked with `…`.

use std::collections::BTreeSet;
use std::fmt;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::email::{looks_like_html, text_from_html};
use crate::{mask_recipient, OutboundMessage, SendError};

/// What a credential is replaced with.
pub const REDACTED: &str = "<redacted>";
/// What the message's body is replaced with in a provider's answer.
pub const BODY: &str = "<body>";
/// Bodies shorter than this are not searched for: they would match everywhere.
const MIN_BODY_BYTES: usize = 4;
/// The most of a provider's error text that is kept, in bytes.
pub const MAX_TEXT_BYTES: usize = 512;
/// The most of a provider's error code that is kept, in bytes.
pub const MAX_CODE_BYTES: usize = 64;
/// The most of a provider's message id that is kept, in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 256;
/// Stands for [`REDACTED`] until the text is reduced (HTML reduction would take it for a tag).
const MARK: char = '\u{E000}';
/// Marks a cut text.
const CUT: &str = "…";
/// Credentials shorter than this are not searched for: they would match everywhere (and a
/// kind refuses them as settings anyway).
const MIN_CREDENTIAL_BYTES: usize = 4;
/// A piece of base64 shorter than this, found inside a longer base64 text, is not redacted.
const MIN_BASE64_CORE: usize = 8;

/// The credentials a provider puts on the wire, with every form they may come back in derived
/// once (when the provider is built), and the matcher that finds them all in one pass.
pub struct SentCredentials {
    /// Longest first.
    forms: Vec<String>,
    /// `None` without forms (or, should building it fail, searched for one by one).
    matcher: Option<AhoCorasick>,
}

static NONE: SentCredentials = SentCredentials { forms: Vec::new(), matcher: None };

impl SentCredentials {
    /// From the exact strings the provider sends that carry a credential (a token, the
    /// `user:password` pair of a Basic header, a secret-bearing URL, …).
    pub fn new<S: AsRef<str>>(sent: impl IntoIterator<Item = S>) -> SentCredentials {
        let mut forms = BTreeSet::new();
        for credential in sent {
            let credential = credential.as_ref();
            if credential.len() >= MIN_CREDENTIAL_BYTES {
                forms.extend(forms_of(credential));
            }
        }
        let mut forms: Vec<String> = forms.into_iter().collect();
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        let matcher = if forms.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&forms).ok()
        };
        SentCredentials { forms, matcher }
    }

    /// A provider that sends no credential.
    pub fn none() -> &'static SentCredentials {
        &NONE
    }

    /// How many forms are searched for (for tests and debugging).
    pub fn forms(&self) -> usize {
        self.forms.len()
    }

    /// The error with its code and text cleaned (see the module doc); its class and
    /// Retry-After unchanged.
    pub fn clean_error(&self, error: SendError, message: &OutboundMessage) -> SendError {
        let body = BodyForms::of(&message.body);
        let recipient = message.to.as_str();
        let text = |reason: String| self.clean_text(&body.remove(&reason), recipient, MAX_TEXT_BYTES, true);
        let code = |code: String| self.clean_text(&body.remove(&code), recipient, MAX_CODE_BYTES, false);
        match error {
            SendError::NotSent { reason } => SendError::NotSent { reason: text(reason) },
            SendError::Ambiguous { code: c, reason } => {
                SendError::Ambiguous { code: code(c), reason: text(reason) }
            }
            SendError::Rejected { code: c, reason } => {
                SendError::Rejected { code: code(c), reason: text(reason) }
            }
            SendError::Misconfigured { code: c, reason } => {
                SendError::Misconfigured { code: code(c), reason: text(reason) }
            }
            other @ (SendError::RateLimited { .. } | SendError::Timeout) => other,
        }
    }

    /// A provider message id cleaned like an error code, at most [`MAX_MESSAGE_ID_BYTES`];
    /// `None` when nothing is left.
    pub fn clean_message_id(&self, id: Option<String>, recipient: &str) -> Option<String> {
        let id = self.clean_text(&id?, recipient, MAX_MESSAGE_ID_BYTES, false);
        (!id.is_empty()).then_some(id)
    }

    /// One text cleaned: credentials, HTML (when `html`), control characters and whitespace,
    /// recipients, length.
    pub fn clean_text(&self, text: &str, recipient: &str, max_bytes: usize, html: bool) -> String {
        let mut text = self.redact(text);
        if html && looks_like_html(&text) {
            text = text_from_html(&text);
        }
        // Again: decoding HTML entities may have spelled a credential out.
        let text = self.redact(&one_line(&text)).replace(MARK, REDACTED);
        cut(&mask_recipients(&text, recipient), max_bytes)
    }

    fn redact(&self, text: &str) -> String {
        match &self.matcher {
            Some(matcher) => {
                let mut out = String::with_capacity(text.len());
                matcher.replace_all_with(text, &mut out, |_, _, out| {
                    out.push(MARK);
                    true
                });
                out
            }
            None => {
                let mark = MARK.to_string();
                self.forms.iter().fold(text.to_owned(), |text, form| text.replace(form.as_str(), &mark))
            }
        }
    }
}

/// The forms the message's body may come back in (as sent, JSON-, URL- and HTML-escaped),
/// longest first: an answer that echoes the request keeps none of them.
struct BodyForms(Vec<String>);

impl BodyForms {
    fn of(body: &str) -> BodyForms {
        if body.len() < MIN_BODY_BYTES {
            return BodyForms(Vec::new());
        }
        let mut forms: BTreeSet<String> = url_forms(body).into_iter().chain(json_forms(body)).collect();
        forms.insert(html_escaped(body));
        forms.insert(body.to_owned());
        let mut forms: Vec<String> = forms.into_iter().collect();
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        BodyForms(forms)
    }

    fn remove(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, form| text.replace(form.as_str(), BODY))
    }
}

impl fmt::Debug for SentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SentCredentials({} forms, <redacted>)", self.forms.len())
    }
}

/// Every form `credential` may come back in.
fn forms_of(credential: &str) -> BTreeSet<String> {
    let mut bases = vec![credential.to_owned()];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        bases.push(engine.encode(credential));
    }
    bases.extend(base64_cores(credential.as_bytes()));
    let mut forms = BTreeSet::new();
    for base in bases {
        forms.extend(url_forms(&base));
        forms.extend(json_forms(&base));
        forms.insert(html_escaped(&base));
        forms.insert(base);
    }
    forms.retain(|form| form.len() >= MIN_CREDENTIAL_BYTES);
    forms
}

/// The part of the base64 of any text containing `bytes` that depends on `bytes` alone, for
/// each of the three alignments (and both alphabets): a credential inside a larger base64
/// payload (an echoed request body, an `AUTH PLAIN` of user and password).
fn base64_cores(bytes: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for shift in 0..3usize {
        let mut padded = vec![0u8; shift];
        padded.extend_from_slice(bytes);
        // Characters mixing in the bytes before: none, 2 or 3; the last one mixes in what follows
        // unless the text ends on a group boundary.
        let skip_start = [0, 2, 3][shift];
        let skip_end = usize::from(padded.len() % 3 != 0);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&padded);
            if encoded.len() >= skip_start + skip_end + MIN_BASE64_CORE {
                cores.push(encoded[skip_start..encoded.len() - skip_end].to_owned());
            }
        }
    }
    cores
}

/// Percent-encoded as a form value (space as `+`), as a URI component, and with every byte
/// but letters and digits encoded; each with upper- and lower-case hex.
fn url_forms(text: &str) -> Vec<String> {
    let form = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
    let component = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let alphanumeric = |b: u8| b.is_ascii_alphanumeric();
    let mut forms = Vec::new();
    for (keep, plus_for_space) in
        [(&form as &dyn Fn(u8) -> bool, true), (&component, false), (&alphanumeric, false)]
    {
        for upper in [true, false] {
            let mut out = String::with_capacity(text.len() * 3);
            for byte in text.bytes() {
                if keep(byte) {
                    out.push(char::from(byte));
                } else if byte == b' ' && plus_for_space {
                    out.push('+');
                } else if upper {
                    out.push_str(&format!("%{byte:02X}"));
                } else {
                    out.push_str(&format!("%{byte:02x}"));
                }
            }
            forms.push(out);
        }
    }
    forms
}

/// As inside a JSON string: serde's escaping, with `/` escaped too (`\/`), with non-ASCII as
/// `\uXXXX` (either hex case), and with `<`, `>`, `&` as `\u003c`… (HTML-safe encoders).
fn json_forms(text: &str) -> Vec<String> {
    let plain = serde_json::to_string(text).unwrap_or_default();
    let plain = plain.get(1..plain.len().saturating_sub(1)).unwrap_or_default().to_owned();
    let ascii = |upper: bool| {
        let mut out = String::with_capacity(plain.len());
        for c in plain.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if upper {
                        out.push_str(&format!("\\u{unit:04X}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        }
        out
    };
    let html_safe = plain.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026");
    vec![plain.replace('/', "\\/"), ascii(false), ascii(true), html_safe, plain]
}

fn html_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Control and bidirectional-formatting characters as spaces, whitespace runs as one space.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        let blank = c.is_whitespace()
            || c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}');
        if blank {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

/// The recipient in its forms, and any other E.164-looking number, masked.
fn mask_recipients(text: &str, recipient: &str) -> String {
    let recipient = recipient.trim();
    let mut text = text.to_owned();
    if recipient.len() >= MIN_CREDENTIAL_BYTES {
        let masked = mask_recipient(recipient);
        let mut forms = vec![recipient.to_owned()];
        if let Some(digits) = recipient.strip_prefix('+') {
            forms.push(format!("%2B{digits}"));
            forms.push(digits.to_owned());
        }
        if let Some((local, domain)) = recipient.rsplit_once('@') {
            forms.push(format!("{local}%40{domain}"));
        }
        // Longest first: the other forms of a number are parts of `%2B…`.
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        for form in forms.iter().filter(|f| f.len() >= MIN_CREDENTIAL_BYTES) {
            text = replace_ignoring_ascii_case(&text, form, &masked);
        }
    }
    mask_phone_numbers(&text)
}

/// Every occurrence of `needle`, ASCII case ignored, replaced by `with`.
fn replace_ignoring_ascii_case(text: &str, needle: &str, with: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let (lower, needle) = (text.to_ascii_lowercase(), needle.to_ascii_lowercase());
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in lower.match_indices(&needle) {
        out.push_str(&text[copied..at]);
        out.push_str(with);
        copied = at + needle.len();
    }
    out.push_str(&text[copied..]);
    out
}

/// `+` (or `%2B`) and 8 to 15 digits, not part of a longer digit run: masked.
fn mask_phone_numbers(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let plus = if bytes[i] == b'+' {
            1
        } else if bytes[i] == b'%'
            && bytes.get(i + 1) == Some(&b'2')
            && matches!(bytes.get(i + 2), Some(b'B' | b'b'))
        {
            3
        } else {
            0
        };
        if plus == 0 {
            i += 1;
            continue;
        }
        let start = i + plus;
        let digits = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        if (8..=15).contains(&digits) {
            out.push_str(&text[copied..i]);
            out.push_str(&mask_recipient(&format!("+{}", &text[start..start + digits])));
            copied = start + digits;
        }
        i = start + digits;
    }
    out.push_str(&text[copied..]);
    out
}

/// At most `max` bytes, cut on a character boundary and marked with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(CUT.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", text[..end].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "tok/en+secret=42";
    const TO: &str = "+18005550400";

    fn twilio() -> SentCredentials {
        SentCredentials::new([TOKEN.to_owned(), format!("{SID}:{TOKEN}")])
    }

    /// `input`, cleaned as an error text for a message to `TO`, is `expected`.
    fn check(credentials: &SentCredentials, input: &str, expected: &str) {
        assert_eq!(credentials.clean_text(input, TO, MAX_TEXT_BYTES, true), expected, "{input:?}");
    }

    #[test]
    fn every_encoding_of_a_credential_is_redacted() {
        let sent = twilio();
        let pair = format!("{SID}:{TOKEN}");
        let cases = [
            (TOKEN.to_owned(), "<redacted>"),
            (format!("Basic {}", STANDARD.encode(&pair)), "Basic <redacted>"),
            (format!("Basic {}", STANDARD_NO_PAD.encode(&pair)), "Basic <redacted>"),
            (format!("Basic {}", URL_SAFE.encode(&pair)), "Basic <redacted>"),
            (format!("Basic {}", URL_SAFE_NO_PAD.encode(&pair)), "Basic <redacted>"),
            // URL-encoded, either hex case; as a form value.
            ("a=tok%2Fen%2Bsecret%3D42&b".to_owned(), "a=<redacted>&b"),
            ("a=tok%2fen%2bsecret%3d42".to_owned(), "a=<redacted>"),
            // JSON-escaped `/`.
            (r#"{"t":"tok\/en+secret=42"}"#.to_owned(), r#"{"t":"<redacted>"}"#),
            // The base64 of the pair, itself URL-encoded.
            (
                format!(
                    "auth={}",
                    STANDARD.encode(&pair).replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
                ),
                "auth=<redacted>",
            ),
            // HTML-escaped in an HTML page: reduced to text, then found.
            ("<p>token tok/en+secret=42</p>".to_owned(), "token <redacted>"),
            ("twice tok/en+secret=42 tok/en+secret=42".to_owned(), "twice <redacted> <redacted>"),
            ("nothing secret here".to_owned(), "nothing secret here"),
        ];
        for (input, expected) in cases {
            check(&sent, &input, expected);
        }
    }

    #[test]
    fn without_a_matcher_the_forms_are_searched_one_by_one() {
        let fallback = SentCredentials { matcher: None, ..twilio() };
        let pair = format!("{SID}:{TOKEN}");
        check(
            &fallback,
            &format!("Basic {} and {TOKEN}", STANDARD.encode(&pair)),
            "Basic <redacted> and <redacted>",
        );
    }

    #[test]
    fn a_credential_inside_a_longer_base64_text_is_redacted() {
        for prefix in ["", "x", "xy", "To=%2B1&Body=hi&token="] {
            let payload = format!("{prefix}{TOKEN}&rest");
            let encoded = STANDARD.encode(&payload);
            let cleaned = twilio().clean_text(&encoded, TO, 4096, true);
            assert!(cleaned.contains(REDACTED), "{payload:?}: {cleaned}");
            for core in base64_cores(TOKEN.as_bytes()) {
                assert!(!cleaned.contains(&core), "{payload:?}: {cleaned}");
            }
        }
    }

    #[test]
    fn smtp_auth_payloads_and_json_escapes() {
        let password = "pässword\"42";
        let sent = SentCredentials::new([
            password.to_owned(),
            format!("\0mailer\0{password}"),
            format!("user=mailer\x01auth=Bearer {password}\x01\x01"),
        ]);
        let plain = STANDARD.encode(format!("\0mailer\0{password}"));
        let login = STANDARD.encode(password);
        let check = |input: &str, expected: &str| check(&sent, input, expected);
        check(&format!("535 AUTH PLAIN {plain} refused"), "535 AUTH PLAIN <redacted> refused");
        check(&format!("334 {login}"), "334 <redacted>");
        check(r#"{"p":"pässword\"42"}"#, r#"{"p":"<redacted>"}"#);
        check(r#"{"p":"p\u00e4ssword\"42"}"#, r#"{"p":"<redacted>"}"#);
        check(r#"{"p":"p\u00E4ssword\"42"}"#, r#"{"p":"<redacted>"}"#);
        check("p=p%C3%A4ssword%2242", "p=<redacted>");
    }

    #[test]
    fn a_secret_bearing_url_is_redacted_whole_and_in_parts() {
        let url = "https://gw.example.com/send?token=gw-token-123456&x=1";
        let sent = SentCredentials::new([url, "/send?token=gw-token-123456&x=1", "gw-token-123456"]);
        let check = |input: &str, expected: &str| check(&sent, input, expected);
        check(&format!("POST {url} failed"), "POST <redacted> failed");
        check("Cannot POST /send?token=gw-token-123456&x=1", "Cannot POST <redacted>");
        check("token gw-token-123456 expired", "token <redacted> expired");
        check("url=https%3A%2F%2Fgw.example.com%2Fsend%3Ftoken%3Dgw-token-123456%26x%3D1", "url=<redacted>");
        check(
            r#"{"url":"https:\/\/gw.example.com\/send?token=gw-token-123456&x=1"}"#,
            r#"{"url":"<redacted>"}"#,
        );
        check(
            r#"{"url":"https://gw.example.com/send?token=gw-token-123456\u0026x=1"}"#,
            r#"{"url":"<redacted>"}"#,
        );
    }

    #[test]
    fn short_credentials_and_none_change_nothing_but_the_rest() {
        check(&SentCredentials::new(["abc"]), "abc abc", "abc abc");
        check(SentCredentials::none(), "a\tb\n\nc\u{202E}d", "a b c d");
        assert_eq!(SentCredentials::none().forms(), 0);
        assert!(!format!("{:?}", twilio()).contains("tok"));
    }

    #[test]
    fn recipients_are_masked() {
        let none = SentCredentials::none();
        let cases = [
            (
                "The 'To' number +18005550400 is not a valid phone number.",
                "The 'To' number +1800****400 is not a valid phone number.",
            ),
            ("To=%2B18005550400&Body=hi", "To=+1800****400&Body=hi"),
            ("to=%2b18005550400", "to=+1800****400"),
            ("number 18005550400 unknown", "number +1800****400 unknown"),
            ("also +447700900123 and +4477009001234567", "also +4477*****123 and +4477009001234567"),
            ("short +1234567 stays", "short +1234567 stays"),
            ("from %2B12016661234", "from +1201****234"),
        ];
        for (input, expected) in cases {
            check(none, input, expected);
        }
        let email = |input: &str| none.clean_text(input, "User.Name@Example.org", MAX_TEXT_BYTES, true);
        assert_eq!(email("bad user.name@example.org!"), "bad U***@Example.org!");
        assert_eq!(email("bad USER.NAME%40EXAMPLE.ORG"), "bad U***@Example.org");
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let none = SentCredentials::none();
        let text = "é".repeat(400);
        let cleaned = none.clean_text(&text, TO, MAX_TEXT_BYTES, true);
        assert!(cleaned.len() <= MAX_TEXT_BYTES, "{}", cleaned.len());
        assert!(cleaned.ends_with("é…") && cleaned.len() > MAX_TEXT_BYTES - 8, "{cleaned}");
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abc…");
        assert_eq!(cut("ab", 0), "…");
    }

    #[test]
    fn html_is_reduced_to_text() {
        let page = "<!DOCTYPE html><html><head><title>501 Not Implemented</title>\
            <style>body { color: red }</style><script>var t = 'x';</script></head>\
            <body><h1>Not&nbsp;Implemented</h1><!-- +18005550400 --><p>Try &lt;later&gt; &#38; &#x41;gain</p></body></html>";
        check(SentCredentials::none(), page, "501 Not Implemented Not Implemented Try <later> & Again");
        // Not HTML: angle brackets stay.
        check(SentCredentials::none(), "2 < 3 and <x>", "2 < 3 and <x>");
    }

    /// Generated texts from pieces that stress every step (entities, tags, percent signs,
    /// pluses and digits, multi-byte characters, pieces of the credential): no panic, never
    /// over the limit, never the credential.
    #[test]
    fn any_text_is_cleaned_within_bounds() {
        const PIECES: [&str; 24] = [
            "<",
            ">",
            "&",
            ";",
            "#",
            "x",
            "%",
            "2",
            "B",
            "+",
            "1",
            "8005550400",
            "é",
            "€",
            "\u{1F600}",
            " ",
            "\n",
            "<script>",
            "</p>",
            "&#",
            "&amp",
            "tok/en",
            "+secret=42",
            "\u{202E}",
        ];
        let sent = twilio();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..600 {
            let mut text = String::new();
            for _ in 0..(round % 300) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            for max in [0, 1, 3, 4, MAX_CODE_BYTES, MAX_TEXT_BYTES] {
                let cleaned = sent.clean_text(&text, TO, max, true);
                assert!(cleaned.len() <= max.max(CUT.len()), "{max}: {cleaned:?}");
                assert!(!cleaned.contains(TOKEN), "{text:?} → {cleaned:?}");
            }
        }
    }

    fn sent_to(to: &str, body: &str) -> OutboundMessage {
        OutboundMessage {
            id: "m".into(),
            channel: crate::Channel::SMS,
            from: "+15550001111".into(),
            to: to.into(),
            subject: None,
            body: body.into(),
            attachments: vec![],
            tags: vec![],
        }
    }

    #[test]
    fn echoed_bodies_are_removed() {
        let sent = twilio();
        let body = "Your code is 493021 & <b>expires</b> \"soon\"/é";
        let message = sent_to(TO, body);
        let json = serde_json::to_string(body).unwrap_or_default();
        let form: String = url_forms(body).into_iter().next().unwrap_or_default();
        for echoed in [body.to_owned(), json.clone(), form, html_escaped(body), json.replace('/', "\\/")] {
            let error = SendError::Rejected { code: "x".into(), reason: format!("you sent: {echoed}") };
            let cleaned = sent.clean_error(error, &message).to_string();
            assert!(!cleaned.contains("493021"), "{echoed} → {cleaned}");
            assert!(cleaned.contains(BODY), "{echoed} → {cleaned}");
        }
        // A body too short to look for is left alone (it would match everywhere).
        let error = SendError::Rejected { code: "x".into(), reason: "ok".into() };
        assert_eq!(
            sent.clean_error(error, &sent_to(TO, "ok")).to_string(),
            "rejected by the provider (x): ok"
        );
    }

    #[test]
    fn errors_and_message_ids() {
        let sent = twilio();
        let message = sent_to(TO, "hello there");
        let error =
            SendError::Misconfigured { code: format!("c{TOKEN}"), reason: format!("bad {TOKEN}\nfor {TO}") };
        assert_eq!(
            sent.clean_error(error, &message).to_string(),
            "provider refused the credentials (c<redacted>): bad <redacted> for +1800****400"
        );
        let limited = SendError::RateLimited { retry_after: Some(std::time::Duration::from_secs(3)) };
        assert_eq!(sent.clean_error(limited.clone(), &message), limited);
        let long = SendError::Rejected { code: "x".repeat(100), reason: "y".repeat(10_000) };
        let SendError::Rejected { code, reason } = sent.clean_error(long, &message) else {
            panic!("class changed")
        };
        assert!(code.len() <= MAX_CODE_BYTES && reason.len() <= MAX_TEXT_BYTES, "{code} {reason}");
        assert_eq!(sent.clean_message_id(Some("SM123".into()), TO), Some("SM123".into()));
        assert_eq!(sent.clean_message_id(Some(" \n\u{7}".into()), TO), None);
        assert_eq!(sent.clean_message_id(None, TO), None);
        assert_eq!(sent.clean_message_id(Some(format!("id-{TOKEN}\r\n")), TO), Some("id-<redacted>".into()));
        let long_id = sent.clean_message_id(Some("i".repeat(1000)), TO).unwrap_or_default();
        assert!(long_id.len() <= MAX_MESSAGE_ID_BYTES, "{}", long_id.len());
    }
}
