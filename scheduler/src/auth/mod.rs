//! Authentication and roles: bearer tokens (a [`tokens::Table`] of hashes), the role each
//! gRPC method needs, and the tower layer ([`layer::AuthLayer`]) that checks every call
//! before it reaches a service.

pub mod layer;
pub mod tokens;

use std::sync::Arc;
use tonic::Status;

pub use layer::AuthLayer;
pub use tokens::{Source, Tokens};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only `WorkerService`: connect as the worker(s) the token names.
    Worker,
    /// Submit runs and read everything.
    Client,
    /// Everything a client does, and register flows, switch schedules, set concurrency
    /// limits, cancel runs.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "worker" => Some(Role::Worker),
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// Who made a call: put in the request's extensions by the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// The holder's name; for a worker, the worker id it may register as (a trailing `*`:
    /// any id with that prefix).
    pub name: Arc<str>,
}

impl Identity {
    /// Whether this identity may register as worker `id`.
    pub fn may_be_worker(&self, id: &str) -> bool {
        self.role == Role::Worker
            && match self.name.strip_suffix('*') {
                Some(prefix) => id.starts_with(prefix),
                None => *self.name == *id,
            }
    }
}

/// Who may call a method, by its gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, without a token: health checks, and leader discovery (`GetLeader`: which
    /// replica leads and the replicas' addresses, which every client needs first).
    Open,
    /// Any valid token (reflection).
    AnyRole,
    Roles(&'static [Role]),
}

/// `FlowService` methods that change the cluster's configuration or other people's runs.
const ADMIN_METHODS: &[&str] = &[
    "RegisterFlow",
    "SetSchedule",
    "SetConcurrencyLimit",
    "DeleteConcurrencyLimit",
    "CancelRun",
    "CollectGarbage",
];

/// Who may call a method, by its gRPC path (`/SERVICE/METHOD`).
fn access(path: &str) -> Access {
    use baton_proto::{flow_service_server as flow, worker_service_server as worker};
    use tonic_health::pb::health_server as health;
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    match service {
        health::SERVICE_NAME => Access::Open,
        worker::SERVICE_NAME => Access::Roles(&[Role::Worker]),
        flow::SERVICE_NAME if method == "GetLeader" => Access::Open,
        flow::SERVICE_NAME if ADMIN_METHODS.contains(&method) => Access::Roles(&[Role::Admin]),
        flow::SERVICE_NAME => Access::Roles(&[Role::Client, Role::Admin]),
        _ => Access::AnyRole,
    }
}

/// Checks a call's `authorization` header against `tokens`: the caller's identity, or the
/// status to answer with (never echoing the token or the path beyond a short prefix).
pub fn check(
    tokens: &Tokens,
    path: &str,
    authorization: Option<&[u8]>,
) -> Result<Option<Identity>, Status> {
    let need = access(path);
    if need == Access::Open {
        return Ok(None);
    }
    let presented = authorization
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented else {
        return Err(Status::unauthenticated(
            "this scheduler requires a token: send `authorization: Bearer <token>` (baton: \
             --token or BATON_TOKEN)",
        ));
    };
    let Some(identity) = tokens.identify(token) else {
        return Err(Status::unauthenticated("the token is not valid"));
    };
    match need {
        Access::Roles(roles) if !roles.contains(&identity.role) => {
            Err(Status::permission_denied(format!(
                "a {} token may not call {}",
                identity.role.as_str(),
                crate::service::bounds::quote(path.rsplit('/').next().unwrap_or(path))
            )))
        }
        _ => Ok(Some(identity)),
    }
}

#[cfg(test)]
mod tests {
    use super::tokens::{entry, Source};
    use super::*;

    fn tokens() -> Arc<Tokens> {
        let text = [
            entry(Role::Admin, "ops", "a"),
            entry(Role::Client, "alice", "c"),
            entry(Role::Worker, "w1", "w"),
        ]
        .join("\n");
        Tokens::load(Source::Inline(text)).unwrap()
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn each_role_reaches_its_methods_only() {
        let t = tokens();
        let flow = |m: &str| format!("/baton.v1.FlowService/{m}");
        let worker = "/baton.v1.WorkerService/Connect".to_string();
        let code = |path: &str, token: Option<&str>| {
            let h = token.map(bearer);
            check(&t, path, h.as_deref())
                .map(|_| ())
                .map_err(|s| s.code())
        };
        use tonic::Code::{PermissionDenied, Unauthenticated};
        assert_eq!(code(&flow("CreateRun"), None), Err(Unauthenticated));
        assert_eq!(code(&flow("CreateRun"), Some("nope")), Err(Unauthenticated));
        assert_eq!(code(&flow("CreateRun"), Some("c")), Ok(()));
        assert_eq!(code(&flow("GetRun"), Some("a")), Ok(()));
        assert_eq!(
            code(&flow("RegisterFlow"), Some("c")),
            Err(PermissionDenied)
        );
        assert_eq!(code(&flow("RegisterFlow"), Some("a")), Ok(()));
        assert_eq!(code(&flow("CancelRun"), Some("c")), Err(PermissionDenied));
        assert_eq!(code(&flow("CreateRun"), Some("w")), Err(PermissionDenied));
        assert_eq!(code(&flow("GetLeader"), None), Ok(()));
        assert_eq!(code(&worker, Some("c")), Err(PermissionDenied));
        assert_eq!(code(&worker, Some("a")), Err(PermissionDenied));
        assert_eq!(code(&worker, Some("w")), Ok(()));
        assert_eq!(code("/grpc.health.v1.Health/Check", None), Ok(()));
        assert_eq!(
            code(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            ),
            Err(Unauthenticated)
        );
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let t = tokens();
        let secret = "s3cr3t-token-value";
        let h = bearer(secret);
        let e = check(&t, "/baton.v1.FlowService/GetRun", Some(&h)).unwrap_err();
        assert!(!e.message().contains(secret));
        let h = bearer("c");
        let long = format!("/baton.v1.WorkerService/Connect{}", "x".repeat(10_000));
        let e = check(&t, &long, Some(&h)).unwrap_err();
        assert!(e.message().len() < 200, "{}", e.message());
    }

    #[test]
    fn a_worker_token_names_the_workers_it_may_be() {
        let one = Identity {
            role: Role::Worker,
            name: Arc::from("w1"),
        };
        assert!(one.may_be_worker("w1"));
        assert!(!one.may_be_worker("w10"));
        let many = Identity {
            role: Role::Worker,
            name: Arc::from("gpu-*"),
        };
        assert!(many.may_be_worker("gpu-3"));
        assert!(!many.may_be_worker("cpu-3"));
        let client = Identity {
            role: Role::Client,
            name: Arc::from("w1"),
        };
        assert!(!client.may_be_worker("w1"));
    }
}
