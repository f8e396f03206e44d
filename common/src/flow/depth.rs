//! How deeply a flow file's text nests its collections, measured by one linear scan before
//! the YAML parser sees it: a parser's time (and stack) can grow much faster than the text
//! with the depth, so a deeply nested definition is refused up front.

/// The deepest nesting of collections a flow file may have (a real flow needs about 6).
pub use baton_proto::limits::MAX_FLOW_NESTING;

/// The deepest nesting in `source`: flow collections (`[`, `{`), block entries (`- ` and
/// `? ` at the start of a line's content) and indentation levels. Brackets count wherever
/// they are, in quoted text and comments too: the scan may only overcount (a real flow is
/// far from the limit), so no quoting trick can hide nesting from it. Stops once past
/// `limit` and returns what it reached.
pub fn nesting_depth(source: &str, limit: usize) -> usize {
    let mut deepest = 0;
    let mut flow = 0usize;
    // Indentations of the open block levels.
    let mut indents: Vec<usize> = Vec::new();
    for line in source.lines() {
        let mut block = 0;
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = &line[indent..];
        if flow == 0 && !content.is_empty() && !content.starts_with('#') {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // `- - - x`: each entry marker opens a level of its own.
            let mut rest = content;
            while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
                block += 1;
                rest = r.trim_start_matches(' ');
            }
        }
        for c in content.bytes() {
            match c {
                b'[' | b'{' => {
                    flow += 1;
                    deepest = deepest.max(indents.len() + block + flow);
                    if deepest > limit {
                        return deepest;
                    }
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
        deepest = deepest.max(indents.len() + block + flow);
        if deepest > limit {
            return deepest;
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_flow_is_shallow() {
        let flow = r#"
name: ridge   # a comment with [ { brackets
tasks:
  - name: fit
    builtin: "fit [not a list"
    inputs:
      alpha: {param: alpha}
      rows: [1, 2, [3, 4]]
    note: 'it''s [ fine'
"#;
        let d = nesting_depth(flow, MAX_FLOW_NESTING);
        assert!((3..=8).contains(&d), "{d}");
    }

    #[test]
    fn deep_nesting_in_every_style_is_measured_and_the_scan_stops_early() {
        let flow_style = format!(
            "name: x\ntasks: {}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(nesting_depth(&flow_style, 64), 65);
        let dashes = format!("name: x\ntasks:\n{}x\n", "- ".repeat(100));
        assert!(nesting_depth(&dashes, 64) > 64);
        let indented: String = (0..80)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(nesting_depth(&indented, 64) > 64);
        let json = format!("{}1{}", "{\"a\":".repeat(70), "}".repeat(70));
        assert!(nesting_depth(&json, 64) > 64);
        // Quotes and comments hide nothing.
        let hidden = format!("a: [ \"x #\", '{}' ]", "[".repeat(70));
        assert!(nesting_depth(&hidden, 64) > 64);
    }
}
