//! Garbage collection of whole roots, without reference counts.
//!
//! A root (`roots/<root>/…`) is a self-contained namespace of manifests and the chunks they
//! reference; the root a manifest was built in salts its chunks, so nothing links across roots.
//! This crate owns the root lifecycle (active → retired → expired → deleted, `roots/<root>/state`)
//! and the operations that move roots through it:
//! - [`plan`] (pure): which root a build writes into, which roots rotate, expire or are deleted,
//!   and the checked state transitions. No I/O, no clock: times are passed in.
//! - [`Collector`] (the executor over a [`ChunkStore`](lazyblock_store::ChunkStore)): rotate,
//!   migrate (copy live manifests and their chunks into an active root, keyless, idempotent and
//!   resumable), expire, delete (unless halted), resume, and the `lazyblock roots` usage report.
//! - [`ExpiryAlarm`]: a store hook in front of every reader's store; a read from an expired
//!   root still works but raises the alarm (error log, metric, and the durable
//!   `gc/halts/<root>` marker that halts every deletion until an operator acknowledges it).
//!
//! The invariant kept at every step, crash or not: every chunk a manifest in a non-deleted root
//! references is in that root, and every catalog entry names a manifest that is in the root the
//! entry names. See `docs/gc.md`.

mod alarm;
mod clock;
mod collector;
mod error;
pub mod plan;

pub use alarm::{AlarmStats, ExpiryAlarm};
pub use clock::{Clock, ManualClock, SystemClock};
pub use collector::{
    Collector, DeleteReport, GcProgress, LiveEntry, MigrateReport, MigratedRoot, NoGcProgress,
    RootUsage, RotateReport, RunReport, RunSettings,
};
pub use error::{GcError, GcErrorKind};
pub use plan::RootInfo;

/// Result alias of this crate.
pub type Result<T, E = GcError> = std::result::Result<T, E>;
