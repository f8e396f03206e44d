//! Protocol constants shared by every side of the wire: metadata names and message size
//! limits. The scheduler, the worker and the clients use these and never their own copies.

/// Metadata on a refusal by a replica that does not lead: the leader's address, when known.
pub const LEADER_METADATA: &str = "baton-leader";

/// Metadata on a refusal by a replica that does not lead, whether or not it knows the
/// leader: the call was not acted on, so any call (even one that is not idempotent) may be
/// retried elsewhere.
pub const REFUSED_METADATA: &str = "baton-refused";

/// The largest gRPC message any baton service or client accepts (each side bounds what it
/// receives; a server refuses a larger request with a clear status). A run's parameters, a
/// flow, a page of task runs and an assignment's inputs all fit in it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
