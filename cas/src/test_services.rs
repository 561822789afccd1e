//! The real servers the tests use, started by `scripts/services.sh`: an
//! S3-compatible server (moto), PostgreSQL and Redis. A test that needs one
//! that is not there fails and says how to start it; none is ever mocked.
//! Each caller gets its own bucket, schema or key prefix.
#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::TcpStream;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;

use crate::{S3Settings, S3Store};

fn service(var: &str, default: &str, what: &str) -> String {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let address = url.split("://").nth(1).unwrap_or(&url);
    let address = address.rsplit('@').next().unwrap_or(address);
    let address = address.split('/').next().unwrap_or(address);
    let reachable =
        address.parse().ok().and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()).is_some();
    assert!(
        reachable,
        "{what} is not answering at {url} (set {var} or run `bash scripts/services.sh`, which starts it)"
    );
    url
}

pub fn s3_endpoint() -> String {
    service("MEMOBUILD_TEST_S3", "http://127.0.0.1:9455", "the S3-compatible test server (moto)")
}

pub fn postgres_url() -> String {
    service("MEMOBUILD_TEST_POSTGRES", "postgres://postgres:postgres@127.0.0.1:5432/test", "PostgreSQL")
}

pub fn redis_url() -> String {
    service("MEMOBUILD_TEST_REDIS", "redis://127.0.0.1:6379", "Redis")
}

/// A name no other test uses: for buckets, schemas and key prefixes.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A store on a fresh bucket of its own.
pub async fn s3_store(settings: S3Settings) -> S3Store {
    s3_store_on(&unique("t-"), S3Settings { create_bucket: true, ..settings }).await
}

/// A store on `bucket`, created only if `settings` say so.
pub async fn s3_store_on(bucket: &str, settings: S3Settings) -> S3Store {
    let settings =
        S3Settings { endpoint: Some(s3_endpoint()), region: Some("us-east-1".into()), path_style: true, ..settings };
    let credentials = Credentials::new("memobuild-test", "memobuild-test", None, None, "tests");
    S3Store::connect_with(bucket.to_string(), settings, Some(credentials)).await.unwrap()
}
