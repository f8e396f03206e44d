//! Text helpers shared by the services.

/// Cuts `s` to at most `max` bytes on a character boundary, then appends `marker` (only when
/// something was cut).
pub fn cut(s: &mut String, max: usize, marker: &str) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(marker);
}

/// Percent-encodes `s` for a URL's query (every byte but the unreserved ones).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_on_a_character_boundary_and_marks_only_a_cut() {
        let mut s = "é".repeat(3);
        super::cut(&mut s, 3, "…");
        assert_eq!(s, "é…");
        let mut short = "ab".to_string();
        super::cut(&mut short, 2, "…");
        assert_eq!(short, "ab");
    }
}
