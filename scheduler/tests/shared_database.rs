//! The scheduler's state and the CAS metadata in one database and one
//! schema, as platform teams deploy them: either may start first, both
//! restart, and a schema migrated by an earlier MemoBuild (sqlx's own
//! `_sqlx_migrations`) keeps its data and gains the other component.
//! Real PostgreSQL (`MEMOBUILD_TEST_POSTGRES`, default
//! `postgres://postgres:postgres@127.0.0.1:5432/test`), a schema per test.
#![allow(clippy::unwrap_used)]

use memobuild_cas::{connect_postgres, BlobMetadata, PostgresMetadata, SqliteMetadata};
use memobuild_proto::reapi::ExecuteResponse;
use memobuild_proto::{Digest, DigestFunction};
use memobuild_scheduler::{
    BuildStore, OperationRecord, OperationStore, PostgresBuildStore, PostgresOperationStore, SqliteOperationStore,
    Stage,
};

fn postgres_url() -> String {
    std::env::var("MEMOBUILD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_string())
}

fn schema() -> String {
    format!("shared_test_{}", uuid::Uuid::new_v4().simple())
}

async fn drop_schema(schema: &str) {
    let pool = connect_postgres(&postgres_url(), None, 1, "cleanup").await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}

fn blob(name: &str) -> Digest {
    Digest::of(DigestFunction::Sha256, name.as_bytes())
}

fn operation(name: &str) -> OperationRecord {
    OperationRecord {
        name: name.to_string(),
        instance_name: String::new(),
        action_digest: blob(name),
        client: "test".into(),
        priority: 0,
        skip_cache_lookup: false,
        stage: Stage::Completed,
        attempts: 1,
        worker: Some("w".into()),
        queued_at_ms: 1,
        updated_at_ms: 2,
        response: Some(ExecuteResponse::default()),
    }
}

/// Both components open in `schema`, in the order given, and each finds
/// what it wrote before (`written` names the blobs and operations so far),
/// then writes one more.
async fn open_both(schema: &str, cas_first: bool, written: &mut Vec<String>) {
    let url = postgres_url();
    let (metadata, operations, builds) = if cas_first {
        let metadata = PostgresMetadata::connect(&url, Some(schema)).await.unwrap();
        let operations = PostgresOperationStore::connect(&url, Some(schema)).await.unwrap();
        let builds = PostgresBuildStore::connect(&url, Some(schema)).await.unwrap();
        (metadata, operations, builds)
    } else {
        let operations = PostgresOperationStore::connect(&url, Some(schema)).await.unwrap();
        let builds = PostgresBuildStore::connect(&url, Some(schema)).await.unwrap();
        let metadata = PostgresMetadata::connect(&url, Some(schema)).await.unwrap();
        (metadata, operations, builds)
    };
    let mut blobs: Vec<Digest> = written.iter().map(|name| blob(name)).collect();
    let mut found = metadata.find_stored(&blobs).await.unwrap();
    blobs.sort();
    found.sort();
    assert_eq!(found, blobs, "the CAS metadata kept its blobs");
    let mut names: Vec<String> = operations.load().await.unwrap().into_iter().map(|o| o.name).collect();
    names.sort();
    assert_eq!(&names, written, "the scheduler kept its operations");
    assert!(builds.list("", 10).await.unwrap().is_empty());
    let next = format!("item-{}", written.len());
    metadata.mark_stored(&blob(&next), "", 1).await.unwrap();
    operations.save(&[operation(&next)]).await.unwrap();
    written.push(next);
}

#[tokio::test]
async fn cas_first_then_scheduler_then_both_restart() {
    let schema = schema();
    let mut written = Vec::new();
    open_both(&schema, true, &mut written).await;
    open_both(&schema, true, &mut written).await;
    open_both(&schema, false, &mut written).await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn scheduler_first_then_cas_then_both_restart() {
    let schema = schema();
    let mut written = Vec::new();
    open_both(&schema, false, &mut written).await;
    open_both(&schema, false, &mut written).await;
    open_both(&schema, true, &mut written).await;
    drop_schema(&schema).await;
}

/// Replicas of both roles starting at once on an empty schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_roles_starting_together_migrate_once() {
    let schema = schema();
    let url = postgres_url();
    let cas = (0..4).map(|_| {
        let (url, schema) = (url.clone(), schema.clone());
        tokio::spawn(async move { PostgresMetadata::connect(&url, Some(&schema)).await.map(drop) })
    });
    let scheduler = (0..4).map(|_| {
        let (url, schema) = (url.clone(), schema.clone());
        tokio::spawn(async move { PostgresOperationStore::connect(&url, Some(&schema)).await.map(drop) })
    });
    for started in futures::future::join_all(cas.chain(scheduler)).await {
        started.unwrap().unwrap();
    }
    let mut written = Vec::new();
    open_both(&schema, true, &mut written).await;
    drop_schema(&schema).await;
}

/// A schema an earlier MemoBuild migrated with sqlx's migrator (its rows in
/// `_sqlx_migrations`), holding data: after the upgrade it keeps the data,
/// reruns nothing, and the other component moves in.
#[tokio::test]
async fn a_schema_migrated_by_an_earlier_version_upgrades_in_place() {
    for (earlier, component) in
        [(sqlx::migrate!("../cas/migrations/postgres"), "cas"), (sqlx::migrate!("migrations/postgres"), "scheduler")]
    {
        let schema = schema();
        let url = postgres_url();
        let pool = connect_postgres(&url, Some(&schema), 1, "earlier version").await.unwrap();
        earlier.run(&pool).await.unwrap();
        let mut written = vec!["item-0".to_string()];
        if component == "cas" {
            sqlx::query(
                "INSERT INTO blobs (function, hash, size, last_access, stored, shard) VALUES ($1, $2, $3, 1, TRUE, '')",
            )
            .bind(DigestFunction::Sha256.to_proto() as i16)
            .bind(&blob("item-0").hash()[..])
            .bind(blob("item-0").size() as i64)
            .execute(&pool)
            .await
            .unwrap();
            // Only the CAS was in this schema: the scheduler has nothing yet.
            let operations = PostgresOperationStore::connect(&url, Some(&schema)).await.unwrap();
            operations.save(&[operation("item-0")]).await.unwrap();
        } else {
            let operations = PostgresOperationStore::connect(&url, Some(&schema)).await.unwrap();
            operations.save(&[operation("item-0")]).await.unwrap();
            let metadata = PostgresMetadata::connect(&url, Some(&schema)).await.unwrap();
            metadata.mark_stored(&blob("item-0"), "", 1).await.unwrap();
        }
        open_both(&schema, component == "cas", &mut written).await;
        open_both(&schema, component != "cas", &mut written).await;
        // The earlier version's table is left as it was, and each component's
        // history is its own.
        let earlier_rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
        assert_eq!(earlier_rows as usize, earlier.iter().count(), "{component}");
        let adopted: i64 = sqlx::query_scalar("SELECT count(*) FROM memobuild_migrations WHERE component = $1")
            .bind(component)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(adopted as usize, earlier.iter().count(), "{component}");
        pool.close().await;
        drop_schema(&schema).await;
    }
}

/// The embedded roles may be given one SQLite file for both.
#[tokio::test]
async fn one_sqlite_file_holds_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    for _ in 0..2 {
        let operations = SqliteOperationStore::open(&path).await.unwrap();
        let metadata = SqliteMetadata::open(&path).await.unwrap();
        operations.save(&[operation("op")]).await.unwrap();
        metadata.mark_stored(&blob("blob"), "", 1).await.unwrap();
        assert_eq!(metadata.find_stored(&[blob("blob")]).await.unwrap(), vec![blob("blob")]);
        assert_eq!(operations.load().await.unwrap().len(), 1);
    }
}
