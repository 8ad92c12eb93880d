//! "Did you mean …?" for misspelled names.

/// The candidate closest to `input`, if one is close enough to be a likely typo.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normalized = normalize(input);
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(&normalized, &normalize(candidate)), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.chars().count() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `Some("did you mean `x`?")` for the closest candidate.
pub fn did_you_mean<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(input, candidates).map(|c| format!("did you mean `{c}`?"))
}

fn normalize(name: &str) -> String {
    name.to_lowercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<&str>) {
        let candidates = ["timeout_ms", "breaker", "retry", "rate_limit", "sms-primary", "mock"];
        assert_eq!(closest(input, candidates), expected, "{input}");
    }

    #[test]
    fn suggestions() {
        check("timout_ms", Some("timeout_ms"));
        check("timeout-ms", Some("timeout_ms"));
        check("TIMEOUT_MS", Some("timeout_ms"));
        check("braker", Some("breaker"));
        check("ratelimit", Some("rate_limit"));
        check("sms_primary", Some("sms-primary"));
        check("mokc", Some("mock"));
        check("twilio", None);
        check("x", None);
    }
}
