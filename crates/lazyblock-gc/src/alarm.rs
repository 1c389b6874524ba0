//! The expiry alarm: a [`ChunkStore`] wrapper every reader goes through.
//!
//! An expired root holds nothing the catalog names, so nobody should read it. A read that does
//! (an agent still serving an image opened before the migration, a build that published late)
//! still succeeds, but it is the sign that deleting the root would break someone: the wrapper
//! logs an error, counts it, and writes the durable halt marker `gc/halts/<root>`, which stops
//! every deletion until an operator runs `lazyblock gc resume --ack <root>`.
//!
//! The wrapper learns a root's state from its record, cached for a configurable time (one GET
//! per root per interval, sent alongside the read, so it adds no round trip), so a read at most
//! that long after the root expired raises the alarm.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use lazyblock_format::{HaltRecord, Lifecycle, RootId, RootState};
use lazyblock_store::{Access, ChunkStore, HookedStore, MetaKey, Result, StoreHook, WriteMode};
use tracing::{debug, error};

use crate::clock::Clock;

/// The alarm's counters, for metrics.
#[derive(Debug, Default)]
pub struct AlarmStats {
    /// Reads from expired (or deleted) roots, by root.
    reads: Mutex<HashMap<RootId, u64>>,
    /// Halt markers written.
    halts_raised: AtomicU64,
}

impl AlarmStats {
    /// Reads from expired roots so far, by root, sorted.
    pub fn expired_reads(&self) -> Vec<(RootId, u64)> {
        let mut v: Vec<_> = self
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (r.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Halt markers this process wrote.
    pub fn halts_raised(&self) -> u64 {
        self.halts_raised.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format (docs/format.md §11).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP lazyblock_expired_root_reads_total Reads from expired GC roots (each one halts deletion).\n");
        out.push_str("# TYPE lazyblock_expired_root_reads_total counter\n");
        for (root, n) in self.expired_reads() {
            let _ = writeln!(
                out,
                "lazyblock_expired_root_reads_total{{root=\"{root}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP lazyblock_gc_halts_raised_total Deletion halt markers written by this process.\n",
        );
        out.push_str("# TYPE lazyblock_gc_halts_raised_total counter\n");
        let _ = writeln!(
            out,
            "lazyblock_gc_halts_raised_total {}",
            self.halts_raised()
        );
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the state was read.
    at: u64,
    /// Whether the root is expired or deleted.
    expired: bool,
    /// When this process last wrote the halt marker for the root.
    raised: Option<u64>,
}

/// The [`StoreHook`] that raises the expiry alarm on reads from expired roots (see the module
/// docs); [`ExpiryAlarm::wrap`] puts it in front of a store. Writes and listings pass through
/// untouched.
#[derive(Debug)]
pub struct ExpiryAlarm {
    inner: Arc<dyn ChunkStore>,
    clock: Arc<dyn Clock>,
    /// How long a root's state is trusted, in seconds (0: read it on every read).
    ttl: u64,
    /// Who is reading, for the halt record (host and process).
    reader: String,
    seen: Mutex<HashMap<RootId, Seen>>,
    stats: Arc<AlarmStats>,
}

impl ExpiryAlarm {
    /// `inner` wrapped with the alarm: reads of `inner` check the root's state (re-read at most
    /// every `ttl_secs`); `reader` names this process in halt records.
    pub fn wrap(
        inner: Arc<dyn ChunkStore>,
        clock: Arc<dyn Clock>,
        ttl_secs: u64,
        reader: String,
    ) -> HookedStore<Self> {
        let alarm = Self {
            inner: Arc::clone(&inner),
            clock,
            ttl: ttl_secs,
            reader,
            seen: Mutex::new(HashMap::new()),
            stats: Arc::new(AlarmStats::default()),
        };
        HookedStore::with_hook(inner, alarm)
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<AlarmStats> {
        &self.stats
    }

    fn cached(&self, root: &RootId, now: u64) -> Option<Seen> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(root)
            .copied()
            .filter(|s| self.ttl > 0 && now.saturating_sub(s.at) < self.ttl)
    }

    /// Checks `root` before a read of `what`, raising the alarm if it is expired. Never fails
    /// the read: a state that cannot be read is logged and the read goes on.
    async fn check(&self, root: &RootId, what: &str) {
        let now = self.clock.now_unix_secs();
        let seen = match self.cached(root, now) {
            Some(s) => s,
            None => {
                let expired = match self.inner.get_meta(&MetaKey::RootState(root.clone())).await {
                    Ok(raw) => RootState::decode(&raw)
                        .map(|s| s.state >= Lifecycle::Expired)
                        .unwrap_or(false),
                    Err(e) => {
                        debug!(root = %root, error = %e, "root state unreadable: no expiry check");
                        false
                    }
                };
                let mut map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let entry = map.entry(root.clone()).or_insert(Seen {
                    at: now,
                    expired,
                    raised: None,
                });
                entry.at = now;
                entry.expired = expired;
                *entry
            }
        };
        if !seen.expired {
            return;
        }
        {
            let mut reads = self.stats.reads.lock().unwrap_or_else(|e| e.into_inner());
            *reads.entry(root.clone()).or_default() += 1;
        }
        // One error line and one marker write per root per check interval, not one per chunk:
        // an agent reading a whole image from an expired root must not flood its log.
        let due = seen
            .raised
            .is_none_or(|r| self.ttl == 0 || now.saturating_sub(r) >= self.ttl);
        if due {
            error!(
                root = %root,
                object = what,
                "ALARM: read from expired root {root}: deletion is halted until `lazyblock gc resume --ack {root}`"
            );
            self.raise(root, what, now).await;
        } else {
            debug!(root = %root, object = what, "read from expired root");
        }
    }

    async fn raise(&self, root: &RootId, what: &str, now: u64) {
        let record = HaltRecord {
            root: root.clone(),
            raised: now,
            reason: format!("read of {what} by {}", self.reader),
        };
        let put = self
            .inner
            .put_meta(
                &MetaKey::Halt(root.clone()),
                Bytes::from(record.encode()),
                WriteMode::Create,
            )
            .await;
        let synced = match put {
            Ok(_) => self.inner.sync().await,
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => {
                self.stats.halts_raised.fetch_add(1, Ordering::Relaxed);
                let mut map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(s) = map.get_mut(root) {
                    s.raised = Some(now);
                }
            }
            Err(e) => error!(root = %root, error = %e, "cannot write the deletion halt marker"),
        }
    }
}

#[async_trait]
impl StoreHook for ExpiryAlarm {
    async fn before(&self, access: Access<'_>) -> Result<()> {
        match access {
            Access::Chunk(root, name) => self.check(root, &format!("chunk {name}")).await,
            Access::Manifest(root, id) => self.check(root, &format!("manifest {id}")).await,
            Access::Profile(root, id) => {
                self.check(root, &format!("profile of manifest {id}")).await
            }
            Access::Catalog(..) | Access::Write => {}
        }
        Ok(())
    }

    /// The check never changes what a read returns, so its state GET runs alongside the read
    /// instead of adding a round trip before it (e.g. to every agent's first manifest read).
    fn alongside_reads(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use lazyblock_format::{ChunkName, ManifestId};
    use lazyblock_store::{ObjectChunkStore, StoreConfig, StoreLocation};

    fn store(dir: &std::path::Path) -> Arc<dyn ChunkStore> {
        let mut cfg = StoreConfig::new(StoreLocation::Local(dir.to_path_buf()));
        cfg.create_if_missing = true;
        Arc::new(ObjectChunkStore::open(&cfg).expect("open"))
    }

    async fn set_state(store: &dyn ChunkStore, root: &RootId, state: Lifecycle) {
        let s = RootState {
            state,
            retired: Some(2),
            migrated: Some(3),
            expired: Some(4),
            deleted: Some(5),
            ..RootState::new_active(RootId::new("default").expect("valid"), 1)
        };
        store
            .put_meta(
                &MetaKey::RootState(root.clone()),
                Bytes::from(s.encode()),
                WriteMode::Overwrite,
            )
            .await
            .expect("state");
    }

    #[tokio::test]
    async fn reads_from_an_expired_root_succeed_and_raise_the_halt_once_per_interval() {
        let dir = tempfile::tempdir().expect("tmp");
        let inner = store(dir.path());
        let clock = Arc::new(ManualClock::new(1000));
        let alarm = ExpiryAlarm::wrap(Arc::clone(&inner), clock.clone(), 30, "test".into());
        let root = RootId::new("r1").expect("valid");
        let name = ChunkName::from_bytes([9; 32]);
        inner
            .put_chunk(&root, &name, Bytes::from_static(b"chunk"))
            .await
            .expect("put");
        set_state(inner.as_ref(), &root, Lifecycle::Retired).await;
        assert_eq!(alarm.get_chunk(&root, &name).await.expect("read"), "chunk");
        assert!(alarm.hook().stats().expired_reads().is_empty());

        // Expired now, but the retired state is trusted for 30 s.
        set_state(inner.as_ref(), &root, Lifecycle::Expired).await;
        clock.advance(29);
        alarm.get_chunk(&root, &name).await.expect("read");
        assert!(inner.list_halts().await.expect("halts").is_empty());

        // Re-read: the read still succeeds, is counted, and writes the halt marker.
        clock.advance(1);
        assert_eq!(alarm.get_chunk(&root, &name).await.expect("read"), "chunk");
        assert_eq!(
            alarm.hook().stats().expired_reads(),
            vec![(root.clone(), 1)]
        );
        assert_eq!(inner.list_halts().await.expect("halts"), vec![root.clone()]);
        assert_eq!(alarm.hook().stats().halts_raised(), 1);
        let text = alarm.hook().stats().render_prometheus();
        assert!(
            text.contains("lazyblock_expired_root_reads_total{root=\"r1\"} 1"),
            "{text}"
        );

        // Acknowledged; further reads in the same interval count but write no marker…
        inner
            .delete_meta(&MetaKey::Halt(root.clone()))
            .await
            .expect("ack");
        alarm.get_chunk(&root, &name).await.expect("read");
        assert_eq!(
            alarm.hook().stats().expired_reads(),
            vec![(root.clone(), 2)]
        );
        assert!(inner.list_halts().await.expect("halts").is_empty());
        // …and the next interval raises it again: the reader is still there.
        clock.advance(30);
        alarm
            .get_manifest(&root, &ManifestId::from_bytes([1; 32]))
            .await
            .expect_err("no manifest");
        assert_eq!(inner.list_halts().await.expect("halts"), vec![root.clone()]);
        let halt = HaltRecord::decode(
            &inner
                .get_meta(&MetaKey::Halt(root.clone()))
                .await
                .expect("halt"),
        )
        .expect("decodes");
        assert!(
            halt.reason.contains("manifest") && halt.reason.contains("test"),
            "{halt:?}"
        );
        assert_eq!(alarm.hook().stats().halts_raised(), 2);
    }
}
