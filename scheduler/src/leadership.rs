//! Leadership as a state machine shared with the services: `Follower`, `Starting { epoch }`
//! (elected, loading state) or `Leader { epoch, handle }`. Only a leader's services reach
//! the engine; every other replica answers `Unavailable` naming the leader's address in the
//! `baton-leader` metadata, so that clients and workers follow it.

use crate::actor::Handle;
use crate::store::{ClusterView, Epoch, StateStore};
use baton_proto as pb;
use std::sync::{Arc, RwLock};
use tonic::metadata::MetadataValue;
use tonic::Status;

/// Metadata key naming the leader's address in a refusal.
pub use baton_proto::limits::LEADER_METADATA;
/// Metadata key present on every refusal by a replica that does not lead (yet): the
/// request was not carried out, so any client may retry it.
pub use baton_proto::limits::REFUSED_METADATA;

fn refused(mut s: Status) -> Status {
    s.metadata_mut()
        .insert(REFUSED_METADATA, MetadataValue::from_static("not-leader"));
    s
}

/// What this replica is now.
#[derive(Clone)]
pub enum Role {
    Follower,
    Starting { epoch: Epoch },
    Leader { epoch: Epoch, handle: Handle },
}

/// This replica's role, with what is needed to tell others where the leader is.
pub struct Roles {
    role: RwLock<Role>,
    state: Arc<dyn StateStore>,
    replica_id: String,
    address: String,
}

impl Roles {
    pub fn new(state: Arc<dyn StateStore>, replica_id: String, address: String) -> Self {
        Roles {
            role: RwLock::new(Role::Follower),
            state,
            replica_id,
            address,
        }
    }

    pub fn set(&self, role: Role) {
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = role;
    }

    pub fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The engine's handle if this replica leads; otherwise the refusal to send.
    pub fn leader(&self) -> Result<Handle, Status> {
        match self.role() {
            Role::Leader { handle, .. } => Ok(handle),
            Role::Starting { epoch } => Err(refused(Status::unavailable(format!(
                "this replica was elected (epoch {epoch}) and is loading its state; retry shortly"
            )))),
            Role::Follower => Err(refused(self.not_leader())),
        }
    }

    fn view(&self) -> ClusterView {
        self.state.view().unwrap_or_else(|| ClusterView {
            leader: Some(self.address.clone()),
            epoch: 0,
            replicas: vec![(self.replica_id.clone(), self.address.clone())],
        })
    }

    fn not_leader(&self) -> Status {
        let view = self.view();
        match view.leader.filter(|l| *l != self.address) {
            Some(leader) => {
                crate::metrics::get().redirected();
                let mut s =
                    Status::unavailable(format!("not the leader; the leader is at {leader}"));
                if let Ok(v) = MetadataValue::try_from(leader.as_str()) {
                    s.metadata_mut().insert(LEADER_METADATA, v);
                }
                s
            }
            None => Status::unavailable("not the leader; no leader is known yet (election)"),
        }
    }

    /// The answer to `GetLeader`.
    pub fn leader_info(&self) -> pb::GetLeaderResponse {
        let view = self.view();
        let (leader, epoch) = match self.role() {
            Role::Leader { epoch, .. } => (Some(self.address.clone()), epoch),
            _ => (view.leader.clone(), view.epoch),
        };
        let leader_address = leader.unwrap_or_default();
        pb::GetLeaderResponse {
            replicas: view
                .replicas
                .iter()
                .map(|(id, address)| pb::Replica {
                    id: id.clone(),
                    address: address.clone(),
                    leader: *address == leader_address,
                })
                .collect(),
            leader_address,
            epoch,
            answered_by: self.replica_id.clone(),
        }
    }
}
