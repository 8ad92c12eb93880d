//! Recipient and sender formats, shared by the send API's validation and the kinds' settings
//! checks so that both accept exactly the same addresses.

/// E.164 (`+` and 2–15 digits) or a short code (3–8 digits).
pub fn is_phone(value: &str) -> bool {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match value.strip_prefix('+') {
        Some(digits) => all_digits(digits) && (2..=15).contains(&digits.len()),
        None => all_digits(value) && (3..=8).contains(&value.len()),
    }
}

/// A plain address `local@domain.tld`: no display name, no spaces or control characters.
pub fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    local_ok && is_domain(domain) && value.len() <= 254
}

/// A host name with at least two labels (`example.org`): letters, digits and inner hyphens.
pub fn is_domain(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An alphanumeric sender ID as SMS carriers accept it: 1–11 of `A–Z a–z 0–9 space`, at least
/// one letter, not starting or ending with a space.
pub fn is_alphanumeric_sender(value: &str) -> bool {
    (1..=11).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && value.bytes().any(|b| b.is_ascii_alphabetic())
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}
