//! The S3 result store: objects in a bucket under a prefix, through `aws-sdk-s3`, on AWS or
//! on any S3-compatible server.
//!
//! A store is named `s3://BUCKET/PREFIX`; `put(key)` writes `PREFIX/KEY` and answers the
//! location `s3://BUCKET/PREFIX/KEY`. `get`, `exists` and `delete` accept any
//! `s3://BUCKET/KEY`, also outside this store's prefix or bucket.
//!
//! Configuration, as [`open_store`](super::open_store) reads it ([`S3Options::from_env`]):
//! - Credentials come from the standard AWS chain: `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`), the shared profile files
//!   (`AWS_PROFILE`), web identity, the ECS container endpoint, EC2 instance metadata. They
//!   are never logged nor stored by baton.
//! - Region: `AWS_REGION` / `AWS_DEFAULT_REGION`, the profile, instance metadata; `us-east-1`
//!   when none is configured.
//! - `BATON_S3_ENDPOINT`: the URL of an S3-compatible server (`http://127.0.0.1:9000`). The
//!   standard `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` are honoured too (aws-config reads
//!   them); `BATON_S3_ENDPOINT` wins over them.
//! - `BATON_S3_PATH_STYLE`: `true` for path-style addressing (`http://host/bucket/key`),
//!   `false` for virtual-hosted style (`http://bucket.host/key`). Default: `true` when an
//!   endpoint is overridden by any of the variables above, else `false`.
//!
//! Writes never overwrite: `put` first asks for the object (HEAD) and fails with
//! [`Error::AlreadyExists`] when it is there, and also sends `If-None-Match: *`, which the
//! servers that support conditional writes honour (the HEAD covers those that do not, bar a
//! race). Objects over [`PART_BYTES`] go up as multipart uploads of parts of that size; a
//! failed upload is aborted. Every object carries its `sha256:` checksum as the metadata
//! `x-amz-meta-baton-checksum`.
//!
//! Transient failures (timeouts, connections refused or cut, HTTP 5xx, throttling) are
//! retried by the SDK and then by this module, with backoff, for up to
//! [`S3Options::retry_for`] (30 s by default). A `put` retried after a failure whose outcome
//! is unknown accepts an object already at its key when it holds the same bytes. Other
//! failures are [`Error::Io`] naming `s3://bucket/key`.

mod failure;
mod list;
mod live;
mod options;
mod pack;

pub use options::{S3Options, StaticCredentials};

use super::segment::PACK_LIMIT;
use super::{checksum, Listed, ResultRef, ResultStore};
use crate::{Error, Result};
use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use failure::{retrying, Failure, Try};
use std::io::ErrorKind;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Objects larger than this are uploaded in parts of this size.
pub const PART_BYTES: usize = 8 << 20;
/// The metadata entry holding an object's checksum.
const CHECKSUM_META: &str = "baton-checksum";

/// Splits `s3://bucket/rest` into the bucket and the rest (without leading or trailing `/`).
fn split_uri(uri: &str) -> Result<(&str, &str)> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| Error::InvalidArgument(format!("`{uri}` is not an s3:// location")))?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::InvalidArgument(format!("`{uri}` names no bucket")));
    }
    Ok((bucket, path.trim_matches('/')))
}

/// Checks a key or prefix: no empty, `.` or `..` segments.
fn check_key(key: &str, what: &str) -> Result<()> {
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Error::InvalidArgument(format!(
            "invalid object {what} `{key}`"
        )));
    }
    Ok(())
}

/// A result store in an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: live::LiveClient,
    bucket: String,
    prefix: String,
    retry_for: Duration,
    /// Packs small results (see [`pack`]); started on the first such put.
    packer: Arc<OnceLock<pack::Packer>>,
    /// Whether the server refuses a conditional write over an object (`If-None-Match: *`):
    /// then a put sends no HEAD first. Probed on the first put that needs to know.
    conditional: Arc<tokio::sync::OnceCell<bool>>,
}

impl S3Store {
    /// A store at `uri` (`s3://bucket/prefix`) with options from the environment.
    pub async fn open(uri: &str) -> Result<Self> {
        Self::connect(uri, S3Options::from_env()?).await
    }

    /// A store at `uri` (`s3://bucket/prefix`) with explicit options.
    pub async fn connect(uri: &str, options: S3Options) -> Result<Self> {
        let (bucket, prefix) = split_uri(uri)?;
        if !prefix.is_empty() {
            check_key(prefix, "prefix")?;
        }
        Ok(S3Store {
            retry_for: options.retry_for,
            client: live::LiveClient::new(options).await?,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            packer: Arc::default(),
            conditional: Arc::default(),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, configured as above, for tools and tests.
    pub async fn client(&self) -> Client {
        self.client.get().await
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key, "key")?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    async fn head(&self, bucket: &str, key: &str) -> Try<Option<(u64, Option<String>)>> {
        match self
            .client
            .get()
            .await
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some((
                h.content_length().unwrap_or_default().max(0) as u64,
                h.metadata().and_then(|m| m.get(CHECKSUM_META)).cloned(),
            ))),
            Err(e) => match Failure::from_sdk(e) {
                Failure::NotFound => Ok(None),
                f => Err(f),
            },
        }
    }

    /// Reads an object of at most `max` bytes.
    async fn read(&self, bucket: &str, key: &str, max: u64) -> Try<Vec<u8>> {
        self.fetch(bucket, key, None, max).await
    }

    /// Reads an object, or the byte `range` of it (`bytes=A-B`), if what is read is at most
    /// `max` bytes.
    async fn fetch(
        &self,
        bucket: &str,
        key: &str,
        range: Option<String>,
        max: u64,
    ) -> Try<Vec<u8>> {
        let out = self
            .client
            .get()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
            .map_err(Failure::from_sdk)?;
        let size = out.content_length().map_or(0, |n| n.max(0) as u64);
        if size > max {
            return Err(Failure::TooLarge { size, max });
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| Failure::Transient(format!("reading the body: {e}")))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Whether the object at `key` holds exactly `data` (checksum `sum`).
    async fn holds(&self, key: &str, data: &Bytes, sum: &str) -> Try<bool> {
        match self.head(&self.bucket, key).await? {
            None => Ok(false),
            Some((size, _)) if size != data.len() as u64 => Ok(false),
            Some((_, Some(stored))) => Ok(stored == sum),
            Some((_, None)) => Ok(checksum(&self.read(&self.bucket, key, u64::MAX).await?) == sum),
        }
    }

    async fn put_once(
        &self,
        key: &str,
        data: &Bytes,
        content_type: &str,
        sum: &str,
        retried: bool,
    ) -> Try<()> {
        // A server that honours `If-None-Match` refuses the PUT itself: no HEAD first.
        if !self.honours_conditional_writes().await && self.head(&self.bucket, key).await?.is_some()
        {
            return Err(Failure::Exists);
        }
        self.put_new(key, data, content_type, sum, retried).await
    }

    /// Writes `data` at `key` with `If-None-Match: *` (no HEAD first: for a name used once,
    /// or a server that honours the condition).
    async fn put_new(
        &self,
        key: &str,
        data: &Bytes,
        content_type: &str,
        sum: &str,
        retried: bool,
    ) -> Try<()> {
        let written = if data.len() > PART_BYTES {
            self.put_multipart(key, data, content_type, sum).await
        } else {
            self.client
                .get()
                .await
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .metadata(CHECKSUM_META, sum)
                .if_none_match("*")
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .map(drop)
                .map_err(Failure::from_sdk)
        };
        match written {
            // An earlier try whose answer was lost may have written it.
            Err(Failure::Exists) if retried => match self.holds(key, data, sum).await? {
                true => Ok(()),
                false => Err(Failure::Exists),
            },
            other => other,
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        data: &Bytes,
        content_type: &str,
        sum: &str,
    ) -> Try<()> {
        let created = self
            .client
            .get()
            .await
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .metadata(CHECKSUM_META, sum)
            .send()
            .await
            .map_err(Failure::from_sdk)?;
        let upload_id = created.upload_id().ok_or_else(|| {
            Failure::Fatal(ErrorKind::InvalidData, "no upload id in the answer".into())
        })?;
        let result = self.upload_parts(key, upload_id, data).await;
        if result.is_err() {
            let aborted = self
                .client
                .get()
                .await
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(e) = aborted {
                tracing::warn!(
                    location = %format!("s3://{}/{key}", self.bucket),
                    error = %DisplayErrorContext(&e),
                    "cannot abort a failed multipart upload"
                );
            }
        }
        result
    }

    async fn upload_parts(&self, key: &str, upload_id: &str, data: &Bytes) -> Try<()> {
        let mut parts = Vec::with_capacity(data.len().div_ceil(PART_BYTES));
        for (i, start) in (0..data.len()).step_by(PART_BYTES).enumerate() {
            let number = i as i32 + 1;
            let end = (start + PART_BYTES).min(data.len());
            let out = self
                .client
                .get()
                .await
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(data.slice(start..end)))
                .send()
                .await
                .map_err(Failure::from_sdk)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        self.client
            .get()
            .await
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .if_none_match("*")
            .send()
            .await
            .map(drop)
            .map_err(Failure::from_sdk)
    }
}

impl S3Store {
    /// Whether the server refuses `If-None-Match: *` over an existing object, found once by
    /// writing a probe object twice (and deleting it); a server that does not answer counts
    /// as not honouring it, and is asked again on the next put. When it does, a put sends
    /// no HEAD before its PUT.
    pub async fn honours_conditional_writes(&self) -> bool {
        let probed = self
            .conditional
            .get_or_try_init(|| async {
                let key = self.full_key(&format!(
                    ".baton/conditional-probe-{}",
                    uuid::Uuid::new_v4().simple()
                ))?;
                let data = Bytes::from_static(b"probe");
                let sum = checksum(&data);
                let first = self.put_new(&key, &data, "text/plain", &sum, false).await;
                let second = self.put_new(&key, &data, "text/plain", &sum, false).await;
                let _ = self
                    .client
                    .get()
                    .await
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await;
                match (first, second) {
                    (Ok(()), Err(Failure::Exists)) => Ok(true),
                    (Ok(()), Ok(())) => Ok(false),
                    _ => Err(Error::InvalidArgument("the probe was not answered".into())),
                }
            })
            .await;
        probed.is_ok_and(|honoured| *honoured)
    }

    /// The packer of this store, started on first use.
    fn packer(&self) -> &pack::Packer {
        self.packer.get_or_init(|| {
            // The packer's own store only uploads: it has a packer of its own, never used.
            pack::Packer::start(S3Store {
                packer: Arc::default(),
                ..self.clone()
            })
        })
    }
}

/// `key#OFFSET+LEN` of an object in a pack: the pack's key and the range (at most
/// [`PACK_LIMIT`] long).
fn packed(key: &str) -> Result<Option<(&str, u64, u64)>> {
    if !key.contains('#') {
        return Ok(None);
    }
    match super::segment::parse_packed(key) {
        Some((pack, offset, len)) if len <= PACK_LIMIT as u64 => Ok(Some((pack, offset, len))),
        _ => Err(Error::InvalidArgument(format!(
            "`{key}` is not a location in a pack (KEY#OFFSET+LEN, at most {PACK_LIMIT} bytes)"
        ))),
    }
}

#[async_trait]
impl ResultStore for S3Store {
    fn root_uri(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn put(&self, key: &str, data: Bytes, content_type: &str) -> Result<ResultRef> {
        let packs = data.len() <= PACK_LIMIT && key.starts_with("results/");
        let key = self.full_key(key)?;
        let uri = format!("s3://{}/{key}", self.bucket);
        let sum = checksum(&data);
        let size = data.len() as u64;
        if packs {
            let uri = self.packer().put(key, data, &uri).await?;
            return Ok(ResultRef {
                uri,
                size,
                checksum: sum,
                content_type: content_type.to_string(),
            });
        }
        retrying(self.retry_for, &uri, |retried| {
            self.put_once(&key, &data, content_type, &sum, retried)
        })
        .await?;
        Ok(ResultRef {
            uri,
            size,
            checksum: sum,
            content_type: content_type.to_string(),
        })
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>> {
        self.get_at_most(uri, u64::MAX).await
    }

    async fn get_at_most(&self, uri: &str, max: u64) -> Result<Vec<u8>> {
        let (bucket, key) = split_uri(uri)?;
        check_key(key, "key")?;
        if let Some((pack, offset, len)) = packed(key)? {
            if len > max {
                return Err(Error::TooLarge { size: len, max });
            }
            if len == 0 {
                return Ok(Vec::new());
            }
            let range = format!("bytes={offset}-{}", offset + len - 1);
            return retrying(self.retry_for, uri, |_| {
                self.fetch(bucket, pack, Some(range.clone()), len)
            })
            .await;
        }
        retrying(self.retry_for, uri, |_| self.read(bucket, key, max)).await
    }

    async fn get_range(&self, uri: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64)> {
        let (bucket, key) = split_uri(uri)?;
        check_key(key, "key")?;
        if packed(key)?.is_some() {
            // A packed object is small: read whole, then cut.
            let all = self.get(uri).await?;
            let size = all.len() as u64;
            let start = offset.min(size) as usize;
            let end = offset.saturating_add(len).min(size) as usize;
            return Ok((all[start..end].to_vec(), size));
        }
        retrying(self.retry_for, uri, move |_| async move {
            let Some((size, _)) = self.head(bucket, key).await? else {
                return Err(Failure::NotFound);
            };
            if offset >= size || len == 0 {
                return Ok((Vec::new(), size));
            }
            let last = offset.saturating_add(len).min(size) - 1;
            let range = Some(format!("bytes={offset}-{last}"));
            Ok((self.fetch(bucket, key, range, len).await?, size))
        })
        .await
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let (bucket, key) = split_uri(uri)?;
        check_key(key, "key")?;
        let key = packed(key)?.map_or(key, |(pack, _, _)| pack);
        retrying(self.retry_for, uri, move |_| async move {
            Ok(self.head(bucket, key).await?.is_some())
        })
        .await
    }

    async fn delete(&self, uri: &str) -> Result<()> {
        let (bucket, key) = split_uri(uri)?;
        check_key(key, "key")?;
        if packed(key)?.is_some() {
            // Its pack holds other objects: it goes when the pack is reclaimed.
            return Ok(());
        }
        self.delete_object(bucket, key, uri).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.list_objects(prefix).await
    }

    async fn closed_packs(&self) -> Result<Vec<Listed>> {
        self.list_objects(pack::FOLDER).await
    }
}

impl S3Store {
    /// Deletes one whole object; a missing one is not an error.
    async fn delete_object(&self, bucket: &str, key: &str, uri: &str) -> Result<()> {
        retrying(self.retry_for, uri, move |_| async move {
            match self
                .client
                .get()
                .await
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(Failure::from_sdk)
            {
                Ok(_) | Err(Failure::NotFound) => Ok(()),
                Err(f) => Err(f),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_keys() {
        assert_eq!(split_uri("s3://b/p/q/").unwrap(), ("b", "p/q"));
        assert_eq!(split_uri("s3://b").unwrap(), ("b", ""));
        assert!(split_uri("s3:///k").is_err());
        assert!(split_uri("file:///k").is_err());
        assert!(check_key("a/../b", "key").is_err());
        assert!(check_key("a//b", "key").is_err());
        assert!(check_key("", "key").is_err());
        assert!(check_key("results/r/t/attempt-1.json", "key").is_ok());
        assert_eq!(options::parse_bool(" TRUE "), Some(true));
        assert_eq!(options::parse_bool("0"), Some(false));
        assert_eq!(options::parse_bool("maybe"), None);
        let secret = StaticCredentials {
            access_key_id: "AK".into(),
            secret_access_key: "SECRET".into(),
        };
        assert!(!format!("{secret:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn layout_of_keys() {
        let options = S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
            }),
            retry_for: Duration::from_millis(300),
            ..S3Options::default()
        };
        let store = S3Store::connect("s3://bkt/base/", options).await.unwrap();
        assert_eq!(store.root_uri(), "s3://bkt/base");
        assert_eq!(store.full_key("a/b.json").unwrap(), "base/a/b.json");
        assert!(store.full_key("../x").is_err());
        // Nothing listens on port 1: a transient failure, retried, then an i/o error.
        let err = store.get("s3://other/k").await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { location, .. } if location == "s3://other/k"),
            "{err}"
        );
    }
}
