//! Result caching: a task with a `cache` spec reuses the committed result of an earlier task
//! run with the same key (project, flow, task, cache version and resolved inputs) instead of
//! being dispatched, until the entry expires. Entries live in the state store under `cache/`.

use super::model::{CacheEntry, TrRef, INLINE_VALUE_LIMIT};
use super::tables;
use super::Engine;
use super::RunKey;
use baton_common::result_store::{checksum, ResultRef};
use serde_json::Value;
use std::sync::Arc;

impl Engine {
    /// The cache key of a task run of node `node` of run `slot` with resolved `inputs` (JSON
    /// text); `None` when the task is not cached.
    pub(super) fn cache_key(&self, slot: RunKey, node: usize, inputs: &str) -> Option<String> {
        let run = &self.runs[slot];
        let task = run.flow.task(node);
        let cache = task.cache.as_ref()?;
        let material = serde_json::to_vec(&(
            &run.flow.spec.project,
            &run.flow.spec.name,
            &task.name,
            &cache.version,
            inputs,
        ))
        .ok()?;
        let sum = checksum(&material);
        Some(sum.strip_prefix("sha256:").unwrap_or(&sum).to_string())
    }

    /// A reusable committed result for a task run of node `node` of run `slot` with
    /// `inputs`, unless the run bypasses the cache. An expired entry is dropped.
    pub(super) fn cache_hit(
        &mut self,
        slot: RunKey,
        node: usize,
        inputs: &str,
        now: i64,
    ) -> Option<(ResultRef, Arc<Value>)> {
        if self.runs[slot].no_cache {
            return None;
        }
        let key = self.cache_key(slot, node, inputs)?;
        let (entry, value) = self.cache.get(&key)?;
        if entry.expires_ms > 0 && now >= entry.expires_ms {
            self.cache.remove(&key);
            self.ops.push(tables::cache::delete(&key));
            return None;
        }
        Some((entry.result.clone(), value.clone()?))
    }

    /// Records the committed result of task run `t` (just completed by a worker) when its
    /// task is cached.
    pub(super) fn cache_record(&mut self, t: TrRef, now: i64) {
        let run = &self.runs[t.run];
        let node = t.node as usize;
        let task = run.flow.task(node);
        let Some(spec) = task.cache.as_ref() else {
            return;
        };
        let tr = &run.nodes[node].runs[t.index as usize];
        let (Some(result), Some(value)) = (tr.result.as_deref().cloned(), tr.value.clone()) else {
            return;
        };
        let Some(inputs) = tr.inputs.as_ref().map(|i| i.json_for(t.index as usize)) else {
            return;
        };
        let Some(key) = self.cache_key(t.run, node, &inputs) else {
            return;
        };
        let entry = CacheEntry {
            value: (result.size as usize <= INLINE_VALUE_LIMIT).then(|| (*value).clone()),
            result,
            expires_ms: if spec.expire_ms > 0 {
                now.saturating_add(spec.expire_ms as i64)
            } else {
                0
            },
            run: run.id.0.clone(),
            task: task.name.clone(),
        };
        self.write(tables::cache::put(&key, &entry));
        self.cache.insert(key, (entry, Some(value)));
    }
}
