//! Where things live in etcd: everything of one cluster under `/<namespace>/`.

/// The key layout of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    ns: String,
}

impl Keys {
    /// Keys under `/<namespace>/`.
    pub fn new(namespace: &str) -> Self {
        let ns = namespace.trim_matches('/');
        Keys {
            ns: format!("/{ns}/"),
        }
    }

    /// The election's name (its keys are `<name>/<lease>`).
    pub fn election(&self) -> String {
        format!("{}election", self.ns)
    }

    pub fn election_prefix(&self) -> String {
        format!("{}election/", self.ns)
    }

    /// Where live replicas register.
    pub fn replicas(&self) -> String {
        format!("{}replicas/", self.ns)
    }

    pub fn replica(&self, id: &str) -> String {
        format!("{}replicas/{id}", self.ns)
    }

    /// The etcd key of a state key.
    pub fn state(&self, key: &str) -> String {
        format!("{}state/{key}", self.ns)
    }

    /// The state key of an etcd key under [`Keys::state`].
    pub fn strip<'a>(&self, etcd_key: &'a str) -> Option<&'a str> {
        etcd_key
            .strip_prefix(&self.ns)
            .and_then(|k| k.strip_prefix("state/"))
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn state_keys_round_trip() {
        let k = Keys::new("/baton/");
        assert_eq!(k.state("run/1"), "/baton/state/run/1");
        assert_eq!(k.strip("/baton/state/run/1"), Some("run/1"));
        assert_eq!(k.strip("/other/state/run/1"), None);
        assert_eq!(k.election_prefix(), "/baton/election/");
    }
}
