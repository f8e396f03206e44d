//! Concurrency limits on task tags as text and JSON (`baton limit`).

use super::table;
use baton_proto as pb;
use serde_json::{json, Value};

/// The table of `baton limit ls`.
pub fn limits_table(limits: &[pb::ConcurrencyLimit]) -> String {
    let rows: Vec<Vec<String>> = limits
        .iter()
        .map(|l| vec![l.tag.clone(), l.limit.to_string(), l.in_use.to_string()])
        .collect();
    table(&["TAG", "LIMIT", "IN_USE"], &rows)
}

/// One limit as JSON.
pub fn limit_json(l: &pb::ConcurrencyLimit) -> Value {
    json!({ "tag": l.tag, "limit": l.limit, "in_use": l.in_use })
}

/// What `baton limit set` prints: `TAG: limit N (M in use)`.
pub fn limit_line(l: &pb::ConcurrencyLimit) -> String {
    format!("{}: limit {} ({} in use)", l.tag, l.limit, l.in_use)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_table_has_a_row_per_tag() {
        let limits = vec![
            pb::ConcurrencyLimit {
                tag: "gpu".into(),
                limit: 2,
                in_use: 1,
            },
            pb::ConcurrencyLimit {
                tag: "warehouse-db".into(),
                limit: 10,
                in_use: 0,
            },
        ];
        assert_eq!(
            limits_table(&limits),
            "TAG           LIMIT  IN_USE\n\
             gpu           2      1\n\
             warehouse-db  10     0\n"
        );
        assert_eq!(limits_table(&[]), "TAG  LIMIT  IN_USE\n");
        assert_eq!(limit_line(&limits[0]), "gpu: limit 2 (1 in use)");
        assert_eq!(limit_json(&limits[1])["limit"], 10);
    }
}
