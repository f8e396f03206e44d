//! The worker's secrets: where they come from (`BATON_SECRET_<NAME>` variables, taken out of
//! the environment at start, and a secrets file or folder read when a task needs one), how a
//! task's `{secret: NAME}` inputs get their values, and the redaction of those values from
//! what leaves the worker (log lines, error messages) and the refusal of results that hold
//! them. A secret's value never goes through the scheduler.

use crate::task::TaskError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The environment variables a worker reads secrets from: `BATON_SECRET_<NAME>`.
pub const ENV_PREFIX: &str = "BATON_SECRET_";
/// What a secret's value becomes in log lines and error messages.
pub const MASK: &str = "***";
/// The largest secrets file, or file in a secrets folder, read.
const MAX_FILE: u64 = 1 << 20;

/// The `BATON_SECRET_*` variables, taken out of the environment before any thread started.
static TAKEN: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// Takes every `BATON_SECRET_<NAME>` variable out of this process's environment (so that no
/// task inherits them) and keeps them for [`Secrets::from_env`]. Call before any other
/// thread starts; later calls do nothing.
pub fn take_env() {
    let mut taken = BTreeMap::new();
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        if let Some(secret) = name.strip_prefix(ENV_PREFIX) {
            taken.insert(secret.to_string(), value.to_string());
        }
    }
    for name in taken.keys() {
        std::env::remove_var(format!("{ENV_PREFIX}{name}"));
    }
    let _ = TAKEN.set(taken);
}

/// Where a worker finds secrets. `Debug` shows names, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    env: Arc<BTreeMap<String, String>>,
    /// A file of `NAME=VALUE` lines, or a folder with one file per secret (as Docker and
    /// Kubernetes mount them); read at each lookup, so a changed secret needs no restart.
    source: Option<PathBuf>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

/// A task's secrets, resolved: what its process gets in its environment, and what to mask.
#[derive(Debug, Default)]
pub struct Resolved {
    /// `BATON_SECRET_<NAME>` → value, for a process task's environment.
    pub env: BTreeMap<String, String>,
    pub redactor: Redactor,
}

impl Secrets {
    /// The secrets taken from the environment by [`take_env`], and `source` if given.
    pub fn from_env(source: Option<PathBuf>) -> Secrets {
        Secrets {
            env: Arc::new(TAKEN.get().cloned().unwrap_or_default()),
            source,
        }
    }

    /// Secrets given as they are (tests, embedding).
    pub fn new(env: BTreeMap<String, String>, source: Option<PathBuf>) -> Secrets {
        Secrets {
            env: Arc::new(env),
            source,
        }
    }

    /// The value of secret `name`: the secrets file or folder first, then the environment.
    pub fn lookup(&self, name: &str) -> Result<Option<String>, TaskError> {
        if let Some(source) = &self.source {
            if let Some(v) = read_source(source, name)? {
                return Ok(Some(v));
            }
        }
        Ok(self.env.get(name).cloned())
    }

    /// Puts the value of each secret in `wanted` (input name → secret name) into `inputs`.
    /// A secret this worker does not have fails the attempt, naming it.
    pub fn resolve(
        &self,
        wanted: &BTreeMap<String, String>,
        inputs: &mut Value,
    ) -> Result<Resolved, TaskError> {
        let mut resolved = Resolved::default();
        if wanted.is_empty() {
            return Ok(resolved);
        }
        let Value::Object(map) = inputs else {
            return Err(TaskError::fatal("the task's inputs must be a JSON object"));
        };
        for (input, name) in wanted {
            if !baton_common::flow::valid_secret_name(name) {
                return Err(TaskError::fatal("the task names a secret with a bad name"));
            }
            let value = self.lookup(name)?.ok_or_else(|| {
                TaskError::fatal(format!(
                    "secret `{name}` is not set on this worker (set {ENV_PREFIX}{name} or add it \
                     to its secrets file)"
                ))
            })?;
            map.insert(input.clone(), Value::String(value.clone()));
            resolved.redactor.add(name, &value);
            resolved.env.insert(format!("{ENV_PREFIX}{name}"), value);
        }
        Ok(resolved)
    }
}

/// Reads secret `name` from a `NAME=VALUE` file or a folder of files named by secret.
fn read_source(source: &Path, name: &str) -> Result<Option<String>, TaskError> {
    let unreadable = |e: std::io::Error| {
        TaskError::retryable(format!("cannot read the worker's secrets: {}", e.kind()))
    };
    let meta = std::fs::metadata(source).map_err(unreadable)?;
    if meta.is_dir() {
        let path = source.join(name);
        return match read_bounded(&path) {
            Ok(text) => Ok(Some(text.strip_suffix('\n').unwrap_or(&text).to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unreadable(e)),
        };
    }
    let text = read_bounded(source).map_err(unreadable)?;
    Ok(parse_file(&text).remove(name))
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `NAME=VALUE` lines; blank lines and `#` comments skipped; the value is taken as written
/// up to the end of its line.
pub fn parse_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Masks a task's secret values.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// (secret name, the forms its value takes: as is and JSON-escaped), longest first.
    values: Vec<(String, String)>,
}

impl Redactor {
    fn add(&mut self, name: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped
            .strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or_default();
        for form in [value, escaped] {
            if !form.is_empty() && !self.values.iter().any(|(_, v)| v == form) {
                self.values.push((name.to_string(), form.to_string()));
            }
        }
        self.values.sort_by_key(|v| std::cmp::Reverse(v.1.len()));
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact(&self, text: String) -> String {
        if self.values.iter().all(|(_, v)| !text.contains(v.as_str())) {
            return text;
        }
        let mut out = text;
        for (_, v) in &self.values {
            out = out.replace(v.as_str(), MASK);
        }
        out
    }

    /// The name of a secret whose value `bytes` (a serialized result) holds, if any.
    pub fn found_in(&self, bytes: &[u8]) -> Option<&str> {
        self.values
            .iter()
            .find(|(_, v)| bytes.windows(v.len()).any(|w| w == v.as_bytes()))
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_get_values_from_the_file_then_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secrets");
        std::fs::write(
            &file,
            "# comment\nAPI_KEY=from-file=with-equals\n\nOTHER=x\n",
        )
        .expect("write");
        let env = BTreeMap::from([
            ("API_KEY".to_string(), "from-env".to_string()),
            ("DB".to_string(), "db-pass".to_string()),
        ]);
        let secrets = Secrets::new(env.clone(), Some(file));
        let mut inputs = json!({"key": null, "db": null, "n": 1});
        let wanted = BTreeMap::from([
            ("key".to_string(), "API_KEY".to_string()),
            ("db".to_string(), "DB".to_string()),
        ]);
        let r = secrets.resolve(&wanted, &mut inputs).expect("resolved");
        assert_eq!(
            inputs,
            json!({"key": "from-file=with-equals", "db": "db-pass", "n": 1})
        );
        assert_eq!(r.env["BATON_SECRET_DB"], "db-pass");
        assert_eq!(r.env["BATON_SECRET_API_KEY"], "from-file=with-equals");
        // A folder of files, one per secret, as Docker and Kubernetes mount them.
        let folder = dir.path().join("run-secrets");
        std::fs::create_dir(&folder).expect("mkdir");
        std::fs::write(folder.join("API_KEY"), "from-folder\n").expect("write");
        let secrets = Secrets::new(env, Some(folder));
        assert_eq!(
            secrets.lookup("API_KEY").expect("lookup").as_deref(),
            Some("from-folder")
        );
        assert_eq!(
            secrets.lookup("DB").expect("lookup").as_deref(),
            Some("db-pass")
        );
        assert_eq!(secrets.lookup("NONE").expect("lookup"), None);
        let err = secrets
            .resolve(
                &BTreeMap::from([("k".to_string(), "NONE".to_string())]),
                &mut json!({}),
            )
            .expect_err("a missing secret");
        assert!(err.message.contains("`NONE`"), "{}", err.message);
        assert!(!err.retryable);
        assert!(!format!("{secrets:?}").contains("db-pass"));
    }

    #[test]
    fn values_are_masked_in_text_and_found_in_results() {
        let secrets = Secrets::new(
            BTreeMap::from([("Q".to_string(), "pa\"ss word".to_string())]),
            None,
        );
        let mut inputs = json!({"q": null});
        let wanted = BTreeMap::from([("q".to_string(), "Q".to_string())]);
        let r = secrets.resolve(&wanted, &mut inputs).expect("resolved");
        let red = &r.redactor;
        assert_eq!(
            red.redact("the key is pa\"ss word!".into()),
            "the key is ***!"
        );
        assert_eq!(
            red.redact(serde_json::to_string(&inputs).expect("json")),
            "{\"q\":\"***\"}"
        );
        assert_eq!(red.redact("nothing here".into()), "nothing here");
        let result = serde_json::to_vec(&json!({"echo": "pa\"ss word"})).expect("json");
        assert_eq!(red.found_in(&result), Some("Q"));
        assert_eq!(red.found_in(b"{\"n\": 1}"), None);
    }
}
