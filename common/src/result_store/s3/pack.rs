//! Packs: small results written together. A `put` of a small object under `results/`
//! joins the next pack of its store: the packer uploads what waits as one object of its
//! own, `PREFIX/packs/<uuid>.pack`, a name used once (so written without a HEAD, with
//! `If-None-Match: *`, never overwritten), made of records `[key len u32][key][data len
//! u32][data]` as the local store's segments are. Each object is then addressed by its
//! pack and byte range: `s3://BUCKET/PREFIX/packs/<uuid>.pack#OFFSET+LEN`.
//!
//! Group commit: a pack starts as soon as an upload slot is free, with everything waiting
//! then, so that a lone result costs one PUT and a burst of them one PUT per pack, up to
//! [`IN_FLIGHT`] packs uploading at once. A pack that cannot be written fails every put in
//! it (each attempt is then retried on its own); a crash before the scheduler commits what
//! a pack holds leaves that pack unreferenced, never a referenced byte changed.

use super::failure::retrying;
use super::S3Store;
use crate::{Error, Result};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Packs uploading at once, per store.
pub const IN_FLIGHT: usize = 8;
/// Most objects in one pack.
pub const MAX_OBJECTS: usize = 4096;
/// A pack is closed once it holds this many bytes (so that with its last record it stays
/// under the size that goes up in parts).
pub const MAX_PACK_BYTES: usize = 4 << 20;
/// The folder of packs, under the store's prefix.
pub const FOLDER: &str = "packs/";
/// Puts waiting for a pack, at most (more wait to be queued).
const QUEUE: usize = 65_536;

struct Waiting {
    key: String,
    data: Bytes,
    done: oneshot::Sender<Result<String>>,
}

/// The packer of one store: puts go in, locations come back.
#[derive(Debug)]
pub(super) struct Packer {
    tx: mpsc::Sender<Waiting>,
}

impl Packer {
    /// Starts the packer of `store` (whose own packing is not used: it only uploads).
    pub(super) fn start(store: S3Store) -> Packer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx));
        Packer { tx }
    }

    /// Writes `data` (stored under `key`, the full key in the bucket) into a pack; answers
    /// its location once the pack is written.
    pub(super) async fn put(&self, key: String, data: Bytes, location: &str) -> Result<String> {
        let (done, answer) = oneshot::channel();
        let gone = || Error::Io {
            location: location.to_string(),
            source: std::io::Error::other("the result store's packer has stopped"),
        };
        self.tx
            .send(Waiting { key, data, done })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes what waits as packs, one per free upload slot, until every sender has gone.
async fn run(store: S3Store, mut rx: mpsc::Receiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = record_len(&first);
        let mut pack = vec![first];
        while pack.len() < MAX_OBJECTS && bytes < MAX_PACK_BYTES {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += record_len(&w);
                    pack.push(w);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            upload(&store, pack).await;
            drop(slot);
        });
    }
}

fn record_len(w: &Waiting) -> usize {
    8 + w.key.len() + w.data.len()
}

/// Writes one pack and answers each of its puts.
async fn upload(store: &S3Store, pack: Vec<Waiting>) {
    let name = format!("{FOLDER}{}.pack", uuid::Uuid::new_v4().simple());
    let key = match store.full_key(&name) {
        Ok(k) => k,
        Err(e) => return fail(pack, &e.to_string()),
    };
    let uri = format!("s3://{}/{key}", store.bucket);
    let mut body = BytesMut::with_capacity(pack.iter().map(record_len).sum());
    let mut ranges = Vec::with_capacity(pack.len());
    for w in &pack {
        body.put_u32_le(w.key.len() as u32);
        body.put_slice(w.key.as_bytes());
        body.put_u32_le(w.data.len() as u32);
        ranges.push((body.len(), w.data.len()));
        body.put_slice(&w.data);
    }
    let body = body.freeze();
    let sum = super::checksum(&body);
    let written = retrying(store.retry_for, &uri, |retried| {
        store.put_new(&key, &body, "application/x-baton-pack", &sum, retried)
    })
    .await;
    match written {
        Ok(()) => {
            for (w, (offset, len)) in pack.into_iter().zip(ranges) {
                let _ = w.done.send(Ok(format!("{uri}#{offset}+{len}")));
            }
        }
        Err(e) => fail(pack, &e.to_string()),
    }
}

fn fail(pack: Vec<Waiting>, why: &str) {
    for w in pack {
        let _ = w.done.send(Err(Error::Io {
            location: w.key,
            source: std::io::Error::other(format!("the pack holding it was not written: {why}")),
        }));
    }
}
