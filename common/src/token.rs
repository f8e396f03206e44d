//! A bearer token as clients and workers hold it: read from a file (`--token-file`) or
//! taken out of the environment, and never shown by `Debug`.

use std::io::Read;
use std::path::Path;

/// A bearer token; `Debug` shows no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into())
    }

    /// The token itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Reads `var` and removes it from this process's environment, so that no process it
/// starts inherits the token. Call before any other thread starts.
pub fn take_env(var: &str) -> Option<Token> {
    let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    std::env::remove_var(var);
    value.map(|v| Token::new(v.trim()))
}

/// Largest token file read.
const MAX_FILE: u64 = 4096;

/// A token file that cannot be used; the message never shows the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the token file {0} holds no token on its first line")]
    Empty(String),
}

/// The token on the first line of `path`, trimmed.
pub fn read_file(path: &Path) -> Result<String, TokenFileError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty(path.display().to_string()));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_token() {
        let t = Token::new("baton_secret");
        assert!(!format!("{t:?}").contains("secret"));
        assert_eq!(t.expose(), "baton_secret");
    }

    #[test]
    fn the_first_line_is_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "  baton_abc \nrest\n").unwrap();
        assert_eq!(read_file(&path).unwrap(), "baton_abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(read_file(&path), Err(TokenFileError::Empty(_))));
        assert!(read_file(&dir.path().join("missing")).is_err());
    }
}
