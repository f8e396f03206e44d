//! Listing a bucket's objects under the store's prefix (ListObjectsV2, page by page), for
//! garbage collection.

use super::failure::{retrying, Failure, Try};
use super::S3Store;
use crate::result_store::{Listed, MAX_LISTED};
use crate::{Error, Result};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use std::time::SystemTime;

impl S3Store {
    /// Every object whose key (under the store's prefix) starts with `prefix`.
    pub(super) async fn list_objects(&self, prefix: &str) -> Result<Vec<Listed>> {
        let folder = prefix.trim_end_matches('/');
        let mut full = self.full_key(folder)?;
        if prefix.ends_with('/') {
            full.push('/');
        }
        let location = format!("s3://{}/{full}", self.bucket);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = retrying(self.retry_for, &location, |_| {
                self.list_page(&full, token.clone())
            })
            .await?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                // A time the server does not give (or that cannot be read) counts as now:
                // the object then looks new, and is kept.
                let written = o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok());
                out.push(Listed {
                    uri: format!("s3://{}/{key}", self.bucket),
                    size: o.size().unwrap_or_default().max(0) as u64,
                    modified: written.unwrap_or_else(SystemTime::now),
                    // Written whole, once: its first byte is as old as its last.
                    created: written,
                });
            }
            if out.len() > MAX_LISTED {
                return Err(Error::InvalidArgument(format!(
                    "more than {MAX_LISTED} objects under {location}"
                )));
            }
            // A token means more pages, whatever `IsTruncated` says; a truncated page without
            // one cannot be followed, and a listing that stops short is not a listing.
            match (page.next_continuation_token(), page.is_truncated()) {
                (Some(next), _) if !next.is_empty() => token = Some(next.to_string()),
                (_, Some(true)) => {
                    return Err(Error::Io {
                        location,
                        source: std::io::Error::other(
                            "the listing is truncated but names no continuation token",
                        ),
                    })
                }
                _ => return Ok(out),
            }
        }
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> Try<ListObjectsV2Output> {
        self.client
            .get()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(Failure::from_sdk)
    }
}
