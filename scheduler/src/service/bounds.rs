//! Sizes of what clients send, bounded at the edge: a request over a limit is refused with
//! INVALID_ARGUMENT naming the field and the limit (quoting at most a short prefix of the
//! value) before anything reaches the engine or the state store. A run's record must fit
//! one state-store transaction (etcd takes 1.5 MiB by default), so that no request can make
//! a commit fail and depose the leader.

use std::collections::BTreeMap;
use tonic::Status;

pub use baton_proto::limits::{
    MAX_FLOW_SOURCE_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_LOCATION_BYTES, MAX_NAME_BYTES,
    MAX_PARAMETERS, MAX_PARAMETERS_BYTES, MAX_RUN_ID_BYTES,
};
/// How much of an offending value an error quotes.
const QUOTE_CHARS: usize = 24;

/// Refuses `value` of field `field` when it is longer than `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() <= max {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "`{field}` is {} bytes, over the limit of {max} bytes (it starts with \"{}\")",
        value.len(),
        quote(value)
    )))
}

/// Refuses anything that cannot be a run id (1-64 letters, digits, `-` or `_`) before it
/// is looked up anywhere: ids name files and keys in the stores.
pub fn run_id(value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument("missing field `run_id`"));
    }
    let ok = value.len() <= MAX_RUN_ID_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "`run_id` \"{}\" is not a run id (1-{MAX_RUN_ID_BYTES} letters, digits, `-` or `_`)",
        quote(value)
    )))
}

/// The first characters of `value`, for an error message.
pub fn quote(value: &str) -> String {
    let mut q: String = value
        .chars()
        .take(QUOTE_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > QUOTE_CHARS {
        q.push('…');
    }
    q
}

/// The parameters as a map, refused when over [`MAX_PARAMETERS`], with a name over
/// [`MAX_NAME_BYTES`], or with values together over [`MAX_PARAMETERS_BYTES`].
pub fn bounded_parameters(
    raw: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, Status> {
    let map: BTreeMap<String, String> = raw.into_iter().collect();
    if map.len() > MAX_PARAMETERS {
        return Err(Status::invalid_argument(format!(
            "`parameters` has {} entries, over the limit of {MAX_PARAMETERS}",
            map.len()
        )));
    }
    let mut total = 0usize;
    for (name, value) in &map {
        check_len("parameters: a name", name, MAX_NAME_BYTES)?;
        total = total.saturating_add(name.len() + value.len());
    }
    if total > MAX_PARAMETERS_BYTES {
        return Err(Status::invalid_argument(format!(
            "`parameters` are {total} bytes together, over the limit of {MAX_PARAMETERS_BYTES} bytes: \
             pass large data as a location in the result store instead"
        )));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_a_limit_is_refused_naming_the_field_and_quoting_little() {
        assert!(check_len("idempotency_key", "abc", 3).is_ok());
        let long = "k".repeat(2 << 20);
        let e = check_len("idempotency_key", &long, MAX_IDEMPOTENCY_KEY_BYTES).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("`idempotency_key`"), "{}", e.message());
        assert!(e.message().contains("512 bytes"), "{}", e.message());
        assert!(e.message().len() < 200, "{}", e.message());
        assert_eq!(quote("a\nb"), "a?b");
    }

    #[test]
    fn parameters_are_bounded_in_number_name_and_total_size() {
        let value = "\"x\"".to_string();
        let many: Vec<(String, String)> = (0..=MAX_PARAMETERS)
            .map(|i| (format!("p{i}"), value.clone()))
            .collect();
        assert!(bounded_parameters(many).is_err());
        let big = vec![("a".to_string(), "1".repeat(MAX_PARAMETERS_BYTES))];
        let e = bounded_parameters(big).unwrap_err();
        assert!(e.message().contains("`parameters`"), "{}", e.message());
        let long_name = vec![("n".repeat(300), value.clone())];
        assert!(bounded_parameters(long_name).is_err());
        assert!(bounded_parameters(vec![("alpha".into(), "0.5".into())]).is_ok());
    }
}
