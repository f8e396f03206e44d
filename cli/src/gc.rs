//! `baton gc`: delete the result store's packs that nothing references any more.

use baton_cli::Client;
use clap::Args;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only packs last written at least this long ago: seconds, or a number with `s`, `m`,
    /// `h` or `d` (at least 10m; default 1h).
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<u64>,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `90`, `90s`, `10m`, `1h`, `2d` → seconds.
fn parse_age(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a number of seconds, or a number with s, m, h or d".to_string())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("the unit must be s, m, h or d".to_string()),
    };
    n.checked_mul(scale)
        .ok_or_else(|| "too long a time".to_string())
}

pub async fn execute(client: &Client, args: GcArgs) -> anyhow::Result<i32> {
    let r = client
        .collect_garbage(args.older_than.unwrap_or(0), args.dry_run)
        .await?;
    if args.json {
        let report = serde_json::json!({
            "packs": r.packs,
            "old_packs": r.old_packs,
            "referenced": r.referenced,
            "unreferenced": r.unreferenced,
            "unreferenced_bytes": r.unreferenced_bytes,
            "deleted": r.deleted,
            "archives_read": r.archives_read,
            "dry_run": r.dry_run,
            "unreferenced_uris": r.unreferenced_uris,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "{} packs, {} old enough: {} referenced (kept), {} unreferenced ({} bytes); {} archives read",
        r.packs, r.old_packs, r.referenced, r.unreferenced, r.unreferenced_bytes, r.archives_read
    );
    for uri in &r.unreferenced_uris {
        println!("  {uri}");
    }
    if r.dry_run {
        println!("dry run: nothing deleted");
    } else {
        println!("{} deleted", r.deleted);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_age;

    #[test]
    fn ages_read_with_units() {
        assert_eq!(parse_age("600"), Ok(600));
        assert_eq!(parse_age("90s"), Ok(90));
        assert_eq!(parse_age("10m"), Ok(600));
        assert_eq!(parse_age("1h"), Ok(3600));
        assert_eq!(parse_age("2d"), Ok(172_800));
        assert!(parse_age("1w").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
