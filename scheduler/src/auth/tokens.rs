//! The token table: who may call the scheduler, as `ROLE NAME sha256:HEX` entries (only the
//! SHA-256 of each token is kept, never the token), read from a file or the environment, and
//! reloaded when the file changes.

use super::{Identity, Role};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Longest name of a token's holder.
pub const MAX_NAME: usize = 128;
/// Most entries in a table.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest token a request may present (longer ones are refused before hashing).
pub const MAX_TOKEN: usize = 512;
/// How often a token file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A token table that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("tokens, line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("tokens: more than {MAX_ENTRIES} entries")]
    TooMany,
    #[error("tokens: no entries")]
    Empty,
    #[error("cannot read the tokens file: {0}")]
    Read(std::io::Error),
}

/// The SHA-256 of `token`, as kept in a table.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token: `baton_` and 64 hex digits (256 bits).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("baton_{hex}")
}

/// The table entry for `token` held by `name` in `role`.
pub fn entry(role: Role, name: &str, token: &str) -> String {
    let digest = baton_common::result_store::checksum(token.as_bytes());
    format!("{} {name} {digest}", role.as_str())
}

/// Whether `name` may name a token's holder: letters, digits, `.`, `_`, `-`, and for a
/// worker a trailing `*` (any worker id with that prefix).
pub fn valid_name(name: &str) -> bool {
    let body = name.strip_suffix('*').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Token hashes and whom they identify.
#[derive(Debug, Default, Clone)]
pub struct Table {
    by_hash: HashMap<[u8; 32], Identity>,
}

impl Table {
    /// Parses entries, one per line (or separated by `;`); `#` starts a comment.
    pub fn parse(text: &str) -> Result<Table, TokenError> {
        let mut by_hash = HashMap::new();
        let lines = text.split(['\n', ';']).enumerate();
        for (i, raw) in lines {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| TokenError::Line {
                line: i + 1,
                why: why.to_string(),
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [role, name, digest] = parts[..] else {
                return Err(bad("expected `ROLE NAME sha256:HEX`"));
            };
            let role = Role::parse(role).ok_or_else(|| {
                bad("the role must be `admin`, `client` or `worker` (`baton token new` makes entries)")
            })?;
            if !valid_name(name) || (name.ends_with('*') && role != Role::Worker) {
                return Err(bad(
                    "a name is 1-128 letters, digits, `.`, `_` or `-` (a worker's may end in `*`)",
                ));
            }
            let digest = crate::engine::held::parse_sha256(digest).ok_or_else(|| {
                    bad("the token must be given as sha256: and 64 lowercase hex digits, never in plain text")
                })?;
            if by_hash.len() >= MAX_ENTRIES {
                return Err(TokenError::TooMany);
            }
            by_hash.insert(
                digest,
                Identity {
                    role,
                    name: Arc::from(name),
                },
            );
        }
        if by_hash.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(Table { by_hash })
    }

    /// Whom `token` identifies.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return None;
        }
        self.by_hash.get(&hash(token)).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Where a table comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Entries given inline (`--tokens` / `BATON_TOKENS`).
    Inline(String),
    /// A file, reloaded when it changes.
    File(PathBuf),
}

/// The table in force, swapped whole when its file changes.
pub struct Tokens {
    table: RwLock<Arc<Table>>,
    source: Source,
    /// The file's stamp taken before it was read (a change after it is seen by `watch`).
    loaded: Option<(SystemTime, u64)>,
}

impl Tokens {
    /// Loads the table; fails on a bad or empty one (the scheduler does not start).
    pub fn load(source: Source) -> Result<Arc<Tokens>, TokenError> {
        let (table, loaded) = match &source {
            Source::Inline(text) => (Table::parse(text)?, None),
            Source::File(path) => {
                let loaded = stamp(path);
                (read(path)?, loaded)
            }
        };
        Ok(Arc::new(Tokens {
            table: RwLock::new(Arc::new(table)),
            source,
            loaded,
        }))
    }

    /// Whom `token` identifies under the table in force.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        table.identify(token)
    }

    fn replace(&self, table: Table) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    /// Reloads a token file whenever it changes, until `stop`; a bad new file is reported and
    /// the table in force is kept.
    pub fn watch(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Source::File(path) = self.source.clone() else {
            return;
        };
        let tokens = self.clone();
        tokio::spawn(async move {
            let mut seen = tokens.loaded;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                let (t, p) = (tokens.clone(), path.clone());
                match tokio::task::spawn_blocking(move || t.check(&p, seen)).await {
                    Ok(now) => seen = now,
                    Err(e) => tracing::error!(error = %e, "token file not checked"),
                }
            }
        });
    }

    /// One check of the token file: when its stamp differs from `seen`, reads it and puts
    /// it in force, or keeps the table in force if it is bad. Returns the stamp now seen.
    fn check(&self, path: &Path, seen: Option<(SystemTime, u64)>) -> Option<(SystemTime, u64)> {
        let now = stamp(path);
        if now == seen {
            return seen;
        }
        match read(path) {
            Ok(table) => {
                tracing::info!(entries = table.len(), "token file reloaded");
                self.replace(table);
            }
            Err(e) => {
                tracing::error!(error = %e, "token file not reloaded; the tokens in force stay")
            }
        }
        now
    }
}

/// A file's modification time and length (a change of either is a change).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads a token file (at most 4 MiB).
fn read(path: &Path) -> Result<Table, TokenError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4 << 20).read_to_string(&mut text))
        .map_err(TokenError::Read)?;
    Table::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_identify_their_tokens_and_nothing_else() {
        let text = format!(
            "# who may call\n{}\n{} ; {}\n",
            entry(Role::Admin, "ops", "t-admin"),
            entry(Role::Client, "alice", "t-alice"),
            entry(Role::Worker, "gpu-*", "t-gpu"),
        );
        let table = Table::parse(&text).unwrap();
        assert_eq!(table.len(), 3);
        let alice = table.identify("t-alice").unwrap();
        assert_eq!((alice.role, &*alice.name), (Role::Client, "alice"));
        assert_eq!(table.identify("t-gpu").unwrap().role, Role::Worker);
        assert!(table.identify("t-alic").is_none());
        assert!(table.identify("").is_none());
        assert!(table.identify(&"x".repeat(MAX_TOKEN + 1)).is_none());
        // The table holds no token in plain text.
        assert!(!text.contains("t-alice"));
    }

    #[test]
    fn bad_entries_name_their_line_and_never_echo_a_secret() {
        for (text, want) in [
            ("admin ops", "line 1: expected"),
            ("\nroot ops sha256:00", "line 2: the role"),
            ("client a* sha256:00", "a name is"),
            ("client alice plain-token", "never in plain text"),
            ("client alice sha256:zz", "never in plain text"),
            ("# nothing\n", "no entries"),
        ] {
            let e = Table::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("plain-token"), "{e}");
        }
    }

    #[test]
    fn generated_tokens_are_distinct_and_long() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), "baton_".len() + 64);
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, entry(Role::Client, "a", "one")).unwrap();
        let tokens = Tokens::load(Source::File(path.clone())).unwrap();
        assert!(tokens.identify("one").is_some());
        let seen = tokens.check(&path, tokens.loaded);
        assert_eq!(seen, tokens.loaded, "unchanged: nothing read");
        // A longer name: the length changes even where the clock is coarse.
        std::fs::write(&path, entry(Role::Client, "bb", "two")).unwrap();
        let seen = tokens.check(&path, seen);
        assert!(tokens.identify("two").is_some(), "reloaded");
        assert!(tokens.identify("one").is_none(), "the old token is gone");
        std::fs::write(&path, "garbage that is not an entry").unwrap();
        let seen_bad = tokens.check(&path, seen);
        assert_ne!(seen_bad, seen, "the bad file was read");
        assert!(
            tokens.identify("two").is_some(),
            "a bad file changes nothing"
        );
    }

    #[tokio::test]
    async fn the_watch_reloads_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, entry(Role::Client, "a", "one")).unwrap();
        let tokens = Tokens::load(Source::File(path.clone())).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokens.watch(stop.clone());
        std::fs::write(&path, entry(Role::Client, "bb", "two")).unwrap();
        let deadline = std::time::Instant::now() + RELOAD_EVERY * 10;
        while tokens.identify("two").is_none() {
            assert!(std::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
    }
}
