//! A committed result as a task run holds it in memory: the facts of a [`ResultRef`] in
//! fewer bytes and allocations (the SHA-256 as its 32 bytes rather than 71 characters of
//! text, the usual content type without a copy of its name). A fan-out of a million tasks
//! holds a million of them until its run finishes.

use baton_common::result_store::ResultRef;

const SHA256_PREFIX: &str = "sha256:";
const JSON: &str = "application/json";

/// See the module docs; [`HeldResult::to_ref`] gives the [`ResultRef`] back, unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldResult {
    uri: Box<str>,
    size: u64,
    checksum: Checksum,
    content_type: ContentType,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Checksum {
    /// `sha256:` and 64 lowercase hex digits.
    Sha256([u8; 32]),
    /// Anything else, as it was.
    Text(Box<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ContentType {
    Json,
    Text(Box<str>),
}

/// The 32 bytes of `sha256:` and 64 lowercase hex digits (the form
/// [`baton_common::result_store::checksum`] writes), or `None` for any other text.
pub(crate) fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix(SHA256_PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

impl Checksum {
    fn parse(text: &str) -> Checksum {
        match parse_sha256(text) {
            Some(d) => Checksum::Sha256(d),
            None => Checksum::Text(text.into()),
        }
    }

    fn text(&self) -> String {
        match self {
            Checksum::Sha256(d) => {
                let mut s = String::with_capacity(SHA256_PREFIX.len() + 64);
                s.push_str(SHA256_PREFIX);
                for b in d {
                    s.push(HEX[(b >> 4) as usize] as char);
                    s.push(HEX[(b & 15) as usize] as char);
                }
                s
            }
            Checksum::Text(t) => t.to_string(),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A lowercase hex digit's value (uppercase would not give the same text back).
fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl From<ResultRef> for HeldResult {
    fn from(r: ResultRef) -> Self {
        HeldResult {
            checksum: Checksum::parse(&r.checksum),
            content_type: if r.content_type == JSON {
                ContentType::Json
            } else {
                ContentType::Text(r.content_type.into())
            },
            uri: r.uri.into(),
            size: r.size,
        }
    }
}

impl HeldResult {
    /// Where the result lies.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The result reference, as it was given.
    pub fn to_ref(&self) -> ResultRef {
        ResultRef {
            uri: self.uri.to_string(),
            size: self.size,
            checksum: self.checksum.text(),
            content_type: match &self.content_type {
                ContentType::Json => JSON.to_string(),
                ContentType::Text(t) => t.to_string(),
            },
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_common::result_store::checksum;

    fn reference(checksum: &str, content_type: &str) -> ResultRef {
        ResultRef {
            uri: "file:///s/segments/w.seg#10+4".into(),
            size: 4,
            checksum: checksum.into(),
            content_type: content_type.into(),
        }
    }

    #[test]
    fn every_reference_comes_back_unchanged() {
        let sum = checksum(b"null");
        for r in [
            reference(&sum, JSON),
            reference(&sum.to_uppercase(), JSON),
            reference("sha256:abc", "text/plain"),
            reference("md5:00", ""),
            reference(&format!("{sum}0"), JSON),
            reference(&sum.replace('a', "g"), JSON),
        ] {
            let held = HeldResult::from(r.clone());
            assert_eq!(held.to_ref(), r);
            assert_eq!(held.size(), 4);
        }
        assert!(matches!(
            HeldResult::from(reference(&sum, JSON)).checksum,
            Checksum::Sha256(_)
        ));
    }

    #[test]
    fn it_holds_one_allocation_where_a_reference_holds_three() {
        assert!(std::mem::size_of::<HeldResult>() <= std::mem::size_of::<ResultRef>());
        let r = reference(&checksum(b"null"), JSON);
        let held = HeldResult::from(r.clone());
        // On the heap: the URI only, against the URI, the checksum text and the content
        // type's name.
        let heap = |h: &HeldResult| {
            h.uri.len()
                + match &h.checksum {
                    Checksum::Sha256(_) => 0,
                    Checksum::Text(t) => t.len(),
                }
                + match &h.content_type {
                    ContentType::Json => 0,
                    ContentType::Text(t) => t.len(),
                }
        };
        assert_eq!(heap(&held), r.uri.len());
        assert_eq!(
            r.uri.len() + r.checksum.len() + r.content_type.len(),
            heap(&held) + 71 + 16
        );
    }
}
