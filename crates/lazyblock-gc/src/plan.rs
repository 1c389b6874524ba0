//! Pure GC decisions: no I/O, no clock (times are passed in), so every rule is unit-tested.

use std::collections::BTreeSet;

use lazyblock_format::{Lifecycle, RootId, RootState};

use crate::error::{GcError, GcErrorKind};
use crate::Result;

/// A root as listed: its id and its state record (`None`: the root holds objects but has no
/// record, e.g. a store written before GC existed).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RootInfo {
    /// The root id.
    pub id: RootId,
    /// Its lifecycle record.
    pub state: Option<RootState>,
}

/// The group every root without a record, and every build without a configured group, uses.
pub fn default_group() -> RootId {
    RootId::new("default").unwrap_or_else(|_| RootId::initial())
}

/// The root a build of `group` writes into: the newest active root of the group (latest
/// `created`, then greatest id), so a build started during a rotation never picks the root being
/// retired once the new one exists.
pub fn build_root(roots: &[RootInfo], group: &RootId) -> Option<RootId> {
    roots
        .iter()
        .filter_map(|r| Some((r, r.state.as_ref()?)))
        .filter(|(_, s)| s.state == Lifecycle::Active && &s.group == group)
        .max_by(|(a, sa), (b, sb)| sa.created.cmp(&sb.created).then(a.id.cmp(&b.id)))
        .map(|(r, _)| r.id.clone())
}

/// The id of the next new root: `r<n+1>` for the largest `n` of the `r<n>` ids in use
/// (`r0` for an empty store). Ids are never reused: a deleted root keeps its state record.
pub fn next_root_id(roots: &[RootInfo]) -> RootId {
    let next = roots
        .iter()
        .filter_map(|r| r.id.as_str().strip_prefix('r')?.parse::<u64>().ok())
        .max()
        .map_or(0, |n| n.saturating_add(1));
    RootId::new(&format!("r{next}")).unwrap_or_else(|_| RootId::initial())
}

/// Whether `group` needs a new active root: it has none, or (with `rotate_after`) its newest one
/// is at least that old.
pub fn needs_rotation(
    roots: &[RootInfo],
    group: &RootId,
    now: u64,
    rotate_after: Option<u64>,
) -> bool {
    let Some(active) = build_root(roots, group) else {
        return true;
    };
    let Some(after) = rotate_after else {
        return false;
    };
    let created = roots
        .iter()
        .find(|r| r.id == active)
        .and_then(|r| r.state.as_ref())
        .map_or(0, |s| s.created);
    now.saturating_sub(created) >= after
}

/// The groups that have at least one active root.
pub fn active_groups(roots: &[RootInfo]) -> BTreeSet<RootId> {
    roots
        .iter()
        .filter_map(|r| r.state.as_ref())
        .filter(|s| s.state == Lifecycle::Active)
        .map(|s| s.group.clone())
        .collect()
}

/// The active roots of `group` other than `keep`: what a rotation to `keep` retires.
pub fn retired_by_rotation(roots: &[RootInfo], group: &RootId, keep: &RootId) -> Vec<RootId> {
    roots
        .iter()
        .filter(|r| &r.id != keep)
        .filter(|r| {
            r.state
                .as_ref()
                .is_some_and(|s| s.state == Lifecycle::Active && &s.group == group)
        })
        .map(|r| r.id.clone())
        .collect()
}

/// The roots migration copies out of: every retired root.
pub fn migration_sources(roots: &[RootInfo]) -> Vec<(RootId, RootId)> {
    roots
        .iter()
        .filter_map(|r| {
            let s = r.state.as_ref()?;
            (s.state == Lifecycle::Retired).then(|| (r.id.clone(), s.group.clone()))
        })
        .collect()
}

/// The roots with a record that passes `keep` and that no catalog entry names.
fn unnamed_where(
    roots: &[RootInfo],
    live_roots: &BTreeSet<RootId>,
    keep: impl Fn(&RootState) -> bool,
) -> Vec<RootId> {
    roots
        .iter()
        .filter(|r| !live_roots.contains(&r.id) && r.state.as_ref().is_some_and(&keep))
        .map(|r| r.id.clone())
        .collect()
}

/// Whether a step taken at `at` is at least `after` seconds old.
fn aged(at: Option<u64>, now: u64, after: u64) -> bool {
    at.is_some_and(|t| now.saturating_sub(t) >= after)
}

/// The retired roots that may expire now: fully migrated at least `after` seconds ago, and
/// holding nothing live (no catalog entry names them).
pub fn expirable(
    roots: &[RootInfo],
    live_roots: &BTreeSet<RootId>,
    now: u64,
    after: u64,
) -> Vec<RootId> {
    unnamed_where(roots, live_roots, |s| {
        s.state == Lifecycle::Retired && s.migrated >= s.retired && aged(s.migrated, now, after)
    })
}

/// The roots deletion works on: expired at least `after` seconds ago, plus roots already marked
/// deleted (a deletion that stopped part way is finished). Roots that hold something live are
/// never returned; the caller treats them as an alarm.
pub fn deletable(
    roots: &[RootInfo],
    live_roots: &BTreeSet<RootId>,
    now: u64,
    after: u64,
) -> Vec<RootId> {
    unnamed_where(roots, live_roots, |s| match s.state {
        Lifecycle::Expired => aged(s.expired, now, after),
        Lifecycle::Deleted => true,
        _ => false,
    })
}

fn refuse(root: &RootId, s: &RootState, to: &str) -> GcError {
    GcError::new(
        GcErrorKind::InvalidInput,
        format!("root {root} is {}: it cannot become {to}", s.state),
    )
}

/// `active → retired`.
pub fn retire(root: &RootId, s: &RootState, now: u64) -> Result<RootState> {
    match s.state {
        Lifecycle::Active => Ok(RootState {
            state: Lifecycle::Retired,
            retired: Some(now),
            ..s.clone()
        }),
        _ => Err(refuse(root, s, "retired")),
    }
}

/// Records a finished migration of a retired root (nothing live left in it at `now`).
pub fn mark_migrated(root: &RootId, s: &RootState, now: u64) -> Result<RootState> {
    match s.state {
        Lifecycle::Retired => Ok(RootState {
            migrated: Some(now),
            ..s.clone()
        }),
        _ => Err(refuse(root, s, "migrated")),
    }
}

/// `retired (migrated) → expired`.
pub fn expire(root: &RootId, s: &RootState, now: u64) -> Result<RootState> {
    match (s.state, s.migrated) {
        (Lifecycle::Retired, Some(_)) => Ok(RootState {
            state: Lifecycle::Expired,
            expired: Some(now),
            ..s.clone()
        }),
        _ => Err(refuse(
            root,
            s,
            "expired (it must be retired and fully migrated)",
        )),
    }
}

/// `expired → deleted` (a deleted root stays deleted).
pub fn delete(root: &RootId, s: &RootState, now: u64) -> Result<RootState> {
    match s.state {
        Lifecycle::Expired => Ok(RootState {
            state: Lifecycle::Deleted,
            deleted: Some(now),
            ..s.clone()
        }),
        Lifecycle::Deleted => Ok(s.clone()),
        _ => Err(refuse(root, s, "deleted")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RootId {
        RootId::new(s).expect("valid")
    }

    fn root(name: &str, group: &str, state: Lifecycle, created: u64) -> RootInfo {
        let mut s = RootState::new_active(id(group), created);
        if state >= Lifecycle::Retired {
            s = retire(&id(name), &s, created + 10).expect("retire");
        }
        if state >= Lifecycle::Expired {
            s = mark_migrated(&id(name), &s, created + 20).expect("migrated");
            s = expire(&id(name), &s, created + 30).expect("expire");
        }
        if state >= Lifecycle::Deleted {
            s = delete(&id(name), &s, created + 40).expect("delete");
        }
        RootInfo {
            id: id(name),
            state: Some(s),
        }
    }

    #[test]
    fn builds_pick_the_newest_active_root_of_their_group() {
        let roots = vec![
            root("r0", "default", Lifecycle::Retired, 0),
            root("r1", "default", Lifecycle::Active, 100),
            root("r2", "default", Lifecycle::Active, 200),
            root("r3", "gpu", Lifecycle::Active, 50),
            RootInfo {
                id: id("legacy"),
                state: None,
            },
        ];
        assert_eq!(build_root(&roots, &id("default")), Some(id("r2")));
        assert_eq!(build_root(&roots, &id("gpu")), Some(id("r3")));
        assert_eq!(build_root(&roots, &id("none")), None);
        assert_eq!(
            retired_by_rotation(&roots, &id("default"), &id("r2")),
            vec![id("r1")]
        );
        assert_eq!(
            active_groups(&roots),
            [id("default"), id("gpu")].into_iter().collect()
        );
        assert_eq!(next_root_id(&roots), id("r4"));
        assert_eq!(next_root_id(&[]), id("r0"));
    }

    #[test]
    fn rotation_is_due_by_age_or_absence() {
        let roots = vec![root("r1", "default", Lifecycle::Active, 100)];
        let g = id("default");
        assert!(!needs_rotation(&roots, &g, 150, Some(100)));
        assert!(needs_rotation(&roots, &g, 200, Some(100)));
        assert!(!needs_rotation(&roots, &g, 10_000, None));
        assert!(needs_rotation(&roots, &id("other"), 0, None));
    }

    #[test]
    fn expiry_needs_a_finished_migration_old_enough_and_nothing_live() {
        let mut migrated = root("r1", "default", Lifecycle::Retired, 0);
        if let Some(s) = migrated.state.as_mut() {
            *s = mark_migrated(&id("r1"), s, 100).expect("migrated");
        }
        let unmigrated = root("r2", "default", Lifecycle::Retired, 0);
        let roots = vec![migrated, unmigrated];
        let none = BTreeSet::new();
        assert!(expirable(&roots, &none, 150, 100).is_empty());
        assert_eq!(expirable(&roots, &none, 200, 100), vec![id("r1")]);
        let live: BTreeSet<RootId> = [id("r1")].into_iter().collect();
        assert!(expirable(&roots, &live, 10_000, 100).is_empty());
    }

    #[test]
    fn deletion_waits_after_expiry_and_finishes_started_deletions() {
        let roots = vec![
            root("r1", "default", Lifecycle::Expired, 0),
            root("r2", "default", Lifecycle::Deleted, 0),
            root("r3", "default", Lifecycle::Retired, 0),
            root("r4", "default", Lifecycle::Active, 0),
        ];
        let none = BTreeSet::new();
        // r1 expired at 30.
        assert_eq!(deletable(&roots, &none, 100, 100), vec![id("r2")]);
        assert_eq!(deletable(&roots, &none, 130, 100), vec![id("r1"), id("r2")]);
        let live: BTreeSet<RootId> = [id("r1")].into_iter().collect();
        assert_eq!(deletable(&roots, &live, 10_000, 0), vec![id("r2")]);
    }

    #[test]
    fn transitions_only_move_forward() {
        let r = id("r1");
        let active = RootState::new_active(id("default"), 1);
        assert!(expire(&r, &active, 2).is_err());
        assert!(delete(&r, &active, 2).is_err());
        assert!(mark_migrated(&r, &active, 2).is_err());
        let retired = retire(&r, &active, 2).expect("retire");
        assert!(retire(&r, &retired, 3).is_err());
        assert!(expire(&r, &retired, 3).is_err(), "not migrated");
        let migrated = mark_migrated(&r, &retired, 3).expect("migrated");
        let expired = expire(&r, &migrated, 4).expect("expire");
        assert_eq!(expired.since(), 4);
        assert!(retire(&r, &expired, 5).is_err());
        let deleted = delete(&r, &expired, 5).expect("delete");
        assert_eq!(delete(&r, &deleted, 6).expect("again"), deleted);
        let e = retire(&r, &deleted, 7).expect_err("no way back");
        assert_eq!(e.kind(), GcErrorKind::InvalidInput);
        assert!(e.to_string().contains("root r1 is deleted"), "{e}");
    }
}
