//! What the email kinds (`sendgrid`, `smtp`) share: telling an HTML body from plain text, the
//! plain-text alternative of an HTML body, and how attachment URLs are carried.
//!
//! Attachments arrive as URLs. Neither email kind fetches them (fetching arbitrary URLs from
//! inside the service would let any client make it reach internal addresses): each URL is
//! appended to the body as a link, under an "Attachments:" line.

/// Whether a body is HTML: it has a closing tag, a self-closing tag, or a `<br>`/`<!DOCTYPE`.
pub(crate) fn looks_like_html(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("</") || lower.contains("/>") || lower.contains("<br") || lower.contains("<!doctype")
}

/// A readable plain-text version of an HTML body: scripts, styles and comments dropped, tags
/// dropped (a line break before `<br>`, `<p>`, `<div>`, `<li>`, `<tr>` and headings), the
/// common and numeric entities decoded, blank runs collapsed.
pub(crate) fn text_from_html(html: &str) -> String {
    let html = without_blocks(html);
    let mut text = String::with_capacity(html.len());
    let mut rest = html.as_str();
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            text.push_str(&rest[open..]);
            rest = "";
            break;
        };
        // A line starts at each opening block tag (closing ones would double the breaks).
        let tag = rest[open + 1..open + close].to_ascii_lowercase();
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if matches!(name.as_str(), "br" | "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6")
        {
            text.push('\n');
        }
        rest = &rest[open + close + 1..];
    }
    text.push_str(rest);
    let decoded = decode_entities(&text);
    let mut out = String::with_capacity(decoded.len());
    let mut blank_lines = 0;
    for line in decoded.lines().map(str::trim) {
        if line.is_empty() {
            blank_lines += 1;
            if blank_lines > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_lines = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// `html` without `<script>…</script>`, `<style>…</style>` and `<!-- … -->` (an unclosed one
/// runs to the end).
fn without_blocks(html: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut at = 0;
    loop {
        let next = [("<script", "</script>"), ("<style", "</style>"), ("<!--", "-->")]
            .iter()
            .filter_map(|(open, close)| lower[at..].find(open).map(|i| (at + i, *close)))
            .min_by_key(|(i, _)| *i);
        let Some((start, close)) = next else { break };
        out.push_str(&html[at..start]);
        at = match lower[start..].find(close) {
            Some(end) => start + end + close.len(),
            None => html.len(),
        };
    }
    out.push_str(&html[at..]);
    out
}

/// The named entities HTML bodies commonly use, and numeric ones (`&#38;`, `&#x26;`), decoded
/// in one pass (`&amp;lt;` is `&lt;`); anything else is left as it is.
fn decode_entities(text: &str) -> String {
    const NAMED: [(&str, char); 6] =
        [("nbsp", ' '), ("lt", '<'), ("gt", '>'), ("quot", '"'), ("apos", '\''), ("amp", '&')];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let entity = rest[1..].find(';').filter(|end| *end <= 10).map(|end| &rest[1..=end]);
        let decoded = entity.and_then(|name| {
            let numeric = match name.strip_prefix('#') {
                Some(hex) if hex.starts_with(['x', 'X']) => u32::from_str_radix(&hex[1..], 16).ok(),
                Some(decimal) => decimal.parse().ok(),
                None => None,
            };
            numeric
                .and_then(char::from_u32)
                .or_else(|| NAMED.iter().find(|(n, _)| *n == name).map(|(_, c)| *c))
                .map(|c| (c, name.len() + 2))
        });
        match decoded {
            Some((c, length)) => {
                out.push(c);
                rest = &rest[length..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The body with the attachment URLs appended as links (HTML links in an HTML body).
pub(crate) fn with_attachment_links(body: &str, attachments: &[String], html: bool) -> String {
    if attachments.is_empty() {
        return body.to_owned();
    }
    let mut out = body.to_owned();
    if html {
        out.push_str("\n<p>Attachments:</p>\n<ul>\n");
        for url in attachments {
            let url = escape_html(url);
            out.push_str(&format!("<li><a href=\"{url}\">{url}</a></li>\n"));
        }
        out.push_str("</ul>\n");
    } else {
        out.push_str("\n\nAttachments:\n");
        for url in attachments {
            out.push_str(url);
            out.push('\n');
        }
    }
    out
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_told_from_text() {
        for (body, html) in [
            ("<b>hi</b>", true),
            ("line<br>next", true),
            ("<img src=x />", true),
            ("<!DOCTYPE html><html></html>", true),
            ("plain text", false),
            ("2 < 3 and 4 > 1", false),
            ("", false),
        ] {
            assert_eq!(looks_like_html(body), html, "{body:?}");
        }
    }

    #[test]
    fn text_alternative() {
        for (html, text) in [
            ("<b>hi</b>", "hi"),
            ("<p>Hello</p><p>World &amp; you</p>", "Hello\nWorld & you"),
            ("a<br>b<br/>c", "a\nb\nc"),
            ("<ul><li>one</li><li>two</li></ul>", "one\ntwo"),
            ("x &lt;y&gt; <unclosed", "x <y> <unclosed"),
            ("&amp;lt;", "&lt;"),
            ("a &#38; b &#x41; &#X42; &apos;c&apos; &bogus; & &#xZZ;", "a & b A B 'c' &bogus; & &#xZZ;"),
            ("<style>p { x: 1 }</style><p>kept</p><script>alert(1)</SCRIPT>!<!-- gone -->", "kept!"),
            ("before<script>never closed", "before"),
        ] {
            assert_eq!(text_from_html(html), text, "{html:?}");
        }
    }

    #[test]
    fn attachments_become_links() {
        let urls = vec!["https://x.org/a.pdf".to_owned(), "https://x.org/b?c=1&d=\"2\"".to_owned()];
        assert_eq!(with_attachment_links("Hi", &[], false), "Hi");
        assert_eq!(
            with_attachment_links("Hi", &urls, false),
            "Hi\n\nAttachments:\nhttps://x.org/a.pdf\nhttps://x.org/b?c=1&d=\"2\"\n"
        );
        let html = with_attachment_links("<b>Hi</b>", &urls, true);
        assert!(html.contains("<a href=\"https://x.org/b?c=1&amp;d=&quot;2&quot;\">"), "{html}");
    }
}
