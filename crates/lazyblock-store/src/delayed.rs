//! [`DelayedStore`]: a store that waits a fixed time before every read request, to model a
//! remote origin (S3 answers a GET in about 20 ms) on a local one. Used by `lazyblock bench
//! start` and by `serve --origin-latency`; writes and listings are not delayed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::hooked::{Access, HookedStore, StoreHook};
use crate::{ChunkStore, Result};

/// The hook of [`DelayedStore`]: sleeps before every GET (chunks, manifests, profiles, catalog).
#[derive(Debug, Clone, Copy)]
pub struct Delay(pub Duration);

#[async_trait]
impl StoreHook for Delay {
    async fn before(&self, access: Access<'_>) -> Result<()> {
        if access != Access::Write && !self.0.is_zero() {
            tokio::time::sleep(self.0).await;
        }
        Ok(())
    }
}

/// Wraps a store and sleeps a fixed delay before every GET.
pub type DelayedStore = HookedStore<Delay>;

impl HookedStore<Delay> {
    /// Delays every read of `inner` by `delay`.
    pub fn new(inner: Arc<dyn ChunkStore>, delay: Duration) -> Self {
        Self::with_hook(inner, Delay(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ObjectChunkStore, StoreConfig, StoreLocation};
    use bytes::Bytes;
    use lazyblock_format::{ChunkName, RootId};

    // On tokio's paused clock a sleep advances time by exactly its length and nothing else
    // does, so the delays are measured exactly, not against the wall clock.
    #[tokio::test(start_paused = true)]
    async fn reads_wait_writes_do_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = StoreConfig::new(
            StoreLocation::parse(&format!("file://{}", dir.path().display())).expect("url"),
        );
        cfg.create_if_missing = true;
        let inner: Arc<dyn ChunkStore> = Arc::new(ObjectChunkStore::open(&cfg).expect("open"));
        let delay = Duration::from_millis(60);
        let store = DelayedStore::new(inner, delay);
        let root = RootId::initial();
        let name = ChunkName::from_bytes([1; 32]);
        let t = tokio::time::Instant::now();
        store
            .put_chunk(&root, &name, Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert_eq!(t.elapsed(), Duration::ZERO, "a put is not delayed");
        let t = tokio::time::Instant::now();
        assert_eq!(store.get_chunk(&root, &name).await.expect("get"), "x");
        assert_eq!(t.elapsed(), delay, "a get waits the delay once");
    }
}
