//! The GC records: a root's lifecycle (`roots/<root>/state`) and the deletion halt raised by a
//! read from an expired root (`gc/halts/<root>`).
//!
//! Both are small line-oriented text records, like the catalog entry, so an operator can read
//! them with `cat` (docs/format.md §13):
//! ```text
//! lazyblock-root 1            lazyblock-halt 1
//! group default               root r3
//! state retired               raised 1700000300
//! created 1700000000          reason read of chunk <64 hex>
//! retired 1700000100
//! migrated 1700000200
//! expired -
//! deleted -
//! ```
//! A timestamp is seconds since the Unix epoch, or `-` for a step not reached.

use std::fmt;

use crate::ids::RootId;
use crate::lines::Lines;
use crate::Result;

/// Where a root is in its life. The order is the only order a root moves in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Lifecycle {
    /// New builds write into it.
    Active,
    /// Read-only: its live manifests are being (or have been) copied into an active root.
    Retired,
    /// Holds nothing live; still readable, but any read raises the alarm that halts deletion.
    Expired,
    /// Its objects are deleted (or being deleted); the state record stays as a tombstone, so
    /// the id is never reused.
    Deleted,
}

impl Lifecycle {
    /// The word used in the record and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Expired => "expired",
            Self::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "retired" => Self::Retired,
            "expired" => Self::Expired,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `roots/<root>/state` holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RootState {
    /// The group of roots this one belongs to: builds of a group write into its active root,
    /// and migration copies a group's retired roots into its active root.
    pub group: RootId,
    /// The current state.
    pub state: Lifecycle,
    /// When the root was created (active).
    pub created: u64,
    /// When it was retired.
    pub retired: Option<u64>,
    /// When a migration last finished with nothing live left in the root.
    pub migrated: Option<u64>,
    /// When it expired.
    pub expired: Option<u64>,
    /// When its deletion started.
    pub deleted: Option<u64>,
}

const ROOT_FIRST_LINE: &str = "lazyblock-root 1";
const HALT_FIRST_LINE: &str = "lazyblock-halt 1";

impl RootState {
    /// A new active root of `group`, created at `now`.
    pub fn new_active(group: RootId, now: u64) -> Self {
        Self {
            group,
            state: Lifecycle::Active,
            created: now,
            retired: None,
            migrated: None,
            expired: None,
            deleted: None,
        }
    }

    /// When the root entered its current state.
    pub fn since(&self) -> u64 {
        match self.state {
            Lifecycle::Active => Some(self.created),
            Lifecycle::Retired => self.retired,
            Lifecycle::Expired => self.expired,
            Lifecycle::Deleted => self.deleted,
        }
        .unwrap_or(self.created)
    }

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let t = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |s| s.to_string());
        format!(
            "{ROOT_FIRST_LINE}\ngroup {}\nstate {}\ncreated {}\nretired {}\nmigrated {}\nexpired {}\ndeleted {}\n",
            self.group,
            self.state,
            self.created,
            t(self.retired),
            t(self.migrated),
            t(self.expired),
            t(self.deleted)
        )
        .into_bytes()
    }

    /// Decodes a record, strictly: every field in order, and a timestamp for every state reached.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut lines = Lines::new(bytes, "root state", ROOT_FIRST_LINE)?;
        let group =
            RootId::new(lines.field("group")?).map_err(|e| lines.corrupt(&e.to_string()))?;
        let state_text = lines.field("state")?;
        let state = Lifecycle::parse(state_text)
            .ok_or_else(|| lines.corrupt(&format!("unknown state {state_text:?}")))?;
        let created = lines
            .time("created")?
            .ok_or_else(|| lines.corrupt("no created time"))?;
        let retired = lines.time("retired")?;
        let migrated = lines.time("migrated")?;
        let expired = lines.time("expired")?;
        let deleted = lines.time("deleted")?;
        lines.end()?;
        let s = Self {
            group,
            state,
            created,
            retired,
            migrated,
            expired,
            deleted,
        };
        let reached = |at: Lifecycle| s.state >= at;
        if reached(Lifecycle::Retired) && s.retired.is_none()
            || reached(Lifecycle::Expired) && (s.expired.is_none() || s.migrated.is_none())
            || reached(Lifecycle::Deleted) && s.deleted.is_none()
        {
            return Err(lines.corrupt(&format!("state {} without its timestamps", s.state)));
        }
        Ok(s)
    }
}

/// What `gc/halts/<root>` holds: a read reached an expired root, so deletion is halted until an
/// operator acknowledges it (`lazyblock gc resume --ack <root>`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HaltRecord {
    /// The expired root that was read.
    pub root: RootId,
    /// When the alarm was raised.
    pub raised: u64,
    /// What was read, by whom (free text, one line).
    pub reason: String,
}

impl HaltRecord {
    /// Encodes the record (the reason is cut to one line of at most 512 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if reason.len() > 512 {
            let mut end = 512;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        format!(
            "{HALT_FIRST_LINE}\nroot {}\nraised {}\nreason {reason}\n",
            self.root, self.raised
        )
        .into_bytes()
    }

    /// Decodes a record, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut lines = Lines::new(bytes, "halt record", HALT_FIRST_LINE)?;
        let root = RootId::new(lines.field("root")?).map_err(|e| lines.corrupt(&e.to_string()))?;
        let raised = lines
            .time("raised")?
            .ok_or_else(|| lines.corrupt("no raised time"))?;
        let reason = lines.field("reason")?.to_owned();
        lines.end()?;
        Ok(Self {
            root,
            raised,
            reason,
        })
    }
}

/// The body of the `root_state_decode` fuzz target, also run by the unit tests: decoding
/// arbitrary bytes never panics, and what decodes re-encodes to the same bytes.
#[doc(hidden)]
pub fn fuzz_root_state_decode(data: &[u8]) {
    if let Ok(s) = RootState::decode(data) {
        assert_eq!(s.encode(), data);
    }
    if let Ok(h) = HaltRecord::decode(data) {
        assert_eq!(HaltRecord::decode(&h.encode()).ok(), Some(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group() -> RootId {
        RootId::new("default").expect("valid")
    }

    #[test]
    fn round_trip_and_strictness() {
        let s = RootState {
            state: Lifecycle::Expired,
            retired: Some(10),
            migrated: Some(20),
            expired: Some(30),
            ..RootState::new_active(group(), 5)
        };
        let bytes = s.encode();
        assert_eq!(RootState::decode(&bytes).expect("decode"), s);
        assert_eq!(s.since(), 30);
        let text = String::from_utf8(bytes).expect("utf8");
        for bad in [
            text.replace("state expired", "state gone"),
            text.replace("expired 30", "expired -"),
            text.replace("migrated 20", "migrated -"),
            text.replace("created 5", "created -"),
            text.replace("retired 10", "retired x"),
            text.replace("group default", "group Default"),
            text.trim_end().to_owned(),
            format!("{text}extra\n"),
            text.replace("lazyblock-root 1", "lazyblock-halt 1"),
        ] {
            assert!(RootState::decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let v2 = text.replace("lazyblock-root 1", "lazyblock-root 2");
        assert_eq!(
            RootState::decode(v2.as_bytes()).expect_err("v2").kind(),
            crate::FormatErrorKind::Unsupported
        );
    }

    #[test]
    fn pinned_bytes() {
        let s = RootState {
            state: Lifecycle::Retired,
            retired: Some(10),
            ..RootState::new_active(group(), 5)
        };
        assert_eq!(
            String::from_utf8(s.encode()).expect("utf8"),
            "lazyblock-root 1\ngroup default\nstate retired\ncreated 5\nretired 10\nmigrated -\nexpired -\ndeleted -\n"
        );
        let h = HaltRecord {
            root: RootId::initial(),
            raised: 7,
            reason: "read of chunk x by host pid 1".into(),
        };
        assert_eq!(
            String::from_utf8(h.encode()).expect("utf8"),
            "lazyblock-halt 1\nroot r0\nraised 7\nreason read of chunk x by host pid 1\n"
        );
    }

    #[test]
    fn halt_round_trip_keeps_one_line() {
        let h = HaltRecord {
            root: RootId::initial(),
            raised: 99,
            reason: "read of chunk x\nby host y".into(),
        };
        let d = HaltRecord::decode(&h.encode()).expect("decode");
        assert_eq!(d.reason, "read of chunk x by host y");
        assert_eq!(d.root, h.root);
        let long = HaltRecord {
            reason: "é".repeat(600),
            ..h
        };
        assert!(HaltRecord::decode(&long.encode()).is_ok());
    }

    #[test]
    fn fuzz_body_accepts_seeds() {
        fuzz_root_state_decode(&RootState::new_active(group(), 1).encode());
        fuzz_root_state_decode(b"lazyblock-root 1\n");
        fuzz_root_state_decode(b"lazyblock-halt 1\nroot r0\nraised 1\nreason \n");
        fuzz_root_state_decode(b"lazyblock-root");
    }

    fn any_state() -> impl Strategy<Value = RootState> {
        (0usize..4, any::<[u64; 5]>(), any::<[bool; 5]>()).prop_map(|(s, t, extra)| {
            let state = [
                Lifecycle::Active,
                Lifecycle::Retired,
                Lifecycle::Expired,
                Lifecycle::Deleted,
            ][s];
            let at = |i: usize, needed: bool| (needed || extra[i]).then_some(t[i]);
            RootState {
                group: RootId::new("g-1").expect("valid"),
                state,
                created: t[0],
                retired: at(1, state >= Lifecycle::Retired),
                migrated: at(2, state >= Lifecycle::Expired),
                expired: at(3, state >= Lifecycle::Expired),
                deleted: at(4, state >= Lifecycle::Deleted),
            }
        })
    }

    proptest! {
        #[test]
        fn any_valid_state_round_trips(s in any_state()) {
            prop_assert_eq!(RootState::decode(&s.encode()).expect("decode"), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_root_state_decode(&data);
        }
    }
}
