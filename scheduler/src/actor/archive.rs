//! Finished runs: written to the result store as one archive object, then dropped from
//! the live state.

use super::{Actor, Command};
use baton_proto as pb;

impl Actor {
    /// Writes a finished run's archive to the result store, then has the engine drop the
    /// run from the live state.
    pub(super) fn archive(&self, run: &baton_common::ids::RunId) {
        let archive = match (
            self.engine.get_run(&run.0),
            self.engine.task_runs(&run.0, true),
        ) {
            (Ok(r), Ok(trs)) => pb::RunArchive {
                run: Some(r),
                task_runs: trs,
            },
            _ => return,
        };
        let store = self.results.clone();
        let tx = self.self_tx.clone();
        let id = run.0.clone();
        tokio::spawn(async move {
            let bytes = prost::Message::encode_to_vec(&archive);
            let key = crate::engine::keys::archive(&id);
            let mut delay = std::time::Duration::from_millis(200);
            for _ in 0..10 {
                match store
                    .put(&key, bytes.clone(), "application/x-protobuf")
                    .await
                {
                    Ok(_) | Err(baton_common::Error::AlreadyExists(_)) => {
                        let _ = tx.send(Command::Archived(id)).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(run = %id, error = %e, "cannot archive a finished run; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
            tracing::error!(run = %id, "giving up archiving a finished run; it stays in the live state");
        });
    }
}
