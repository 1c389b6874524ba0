//! The ChunkStore conformance suite against every backend: the local directory, the local
//! directory behaving like a server that ignores `If-None-Match`, and a real S3-compatible server.

use std::sync::Arc;

use lazyblock_store::testing::{conformance, s3_test_config, unique_name, IgnoresConditionalPut};
use lazyblock_store::{ChunkStore, ObjectChunkStore, StoreConfig, StoreErrorKind, StoreLocation};

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::new(StoreLocation::Local(dir.path().join("store")));
    let store = ObjectChunkStore::open(&config).expect("open");
    conformance(&store, true).await;
    // The layout on disk is the documented one.
    assert!(dir.path().join("store/roots/conformance/chunks").is_dir());
    assert!(dir
        .path()
        .join("store/catalog/tenant-one/web/app:v2")
        .is_file());
}

#[tokio::test]
async fn local_directory_ignoring_conditional_put() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    let store = ObjectChunkStore::with_object_store(
        Arc::new(IgnoresConditionalPut(Arc::new(fs))),
        "",
        "file:///ignores-if-none-match".into(),
    );
    conformance(&store, false).await;
}

#[tokio::test]
async fn s3_compatible_server() {
    let Some(config) = s3_test_config(&unique_name("conformance")) else {
        return;
    };
    let store = ObjectChunkStore::open(&config).expect("open");
    conformance(&store, true).await;
}

#[tokio::test]
async fn unreachable_s3_fails_quickly_with_one_line() {
    let mut config = StoreConfig::new(StoreLocation::parse("s3://nobucket/x").expect("url"));
    config.s3_options = vec![
        ("aws_endpoint".into(), "http://127.0.0.1:9".into()),
        ("aws_allow_http".into(), "true".into()),
        ("aws_access_key_id".into(), "k".into()),
        ("aws_secret_access_key".into(), "s".into()),
        ("aws_region".into(), "us-east-1".into()),
    ];
    config.max_retries = 1;
    config.retry_timeout = std::time::Duration::from_secs(2);
    let store = ObjectChunkStore::open(&config).expect("open makes no request");
    let started = std::time::Instant::now();
    let err = store.check().await.expect_err("unreachable");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("s3://nobucket/x"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
