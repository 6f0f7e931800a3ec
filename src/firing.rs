//! The firing set and its rules: which alerts fire now, and the resolutions remembered
//! (tombstones) so that a late or repeated copy of an older incarnation can neither revive an
//! alert nor end a newer one. Pure: no I/O, no locks, no clock (times are passed in). The store
//! persists the changes these methods report and publishes them to its readers after the commit.
//!
//! - [`FiringSet::apply`]: a webhook notification, each alert judged by the
//!   [`crate::incarnation`] rules against what is held;
//! - [`FiringSet::merge_snapshot`]: a resync, Alertmanager's list of active alerts, where what a
//!   webhook said after the snapshot was taken wins;
//! - [`FiringSet::prune`]: the tombstones bounded in number;
//! - [`FiringSet::preview`]: what `apply` would leave firing, changing nothing.
//!
//! Each changing method returns its [`Change`]s in order; [`FiringSet::update`] replays them on
//! another copy (the store's readers' copy) with the same result.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertStatus, Labels, Notification};
use crate::desired::FiringAlert;
use crate::incarnation::{self, Held, Resolution, Verdict};

/// A firing alert and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredAlert {
    pub fingerprint: String,
    pub labels: Labels,
    pub starts_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// The notification group, or `resync` when learnt from Alertmanager's API.
    pub source: String,
}

impl From<&StoredAlert> for FiringAlert {
    fn from(a: &StoredAlert) -> Self {
        FiringAlert {
            fingerprint: a.fingerprint.clone(),
            labels: a.labels.clone(),
            starts_at: a.starts_at,
        }
    }
}

/// The newest resolved incarnation of an alert: its start and end as the resolved notification
/// said, and when we learnt it. Kept while the alert fires again, so a late copy of that
/// resolution is known (see [`crate::incarnation`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub starts_at: DateTime<Utc>,
    /// Absent in state written before the incarnation rules kept it.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    pub resolved_at: DateTime<Utc>,
}

impl Tombstone {
    fn resolution(&self) -> Resolution {
        Resolution {
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        }
    }
}

/// One change to a [`FiringSet`], keyed by fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The alert fires as this record says: it is new, or its `startsAt` or labels changed.
    Fire(StoredAlert),
    /// A repeat of an alert held firing: only `received_at` and `source` move. Worth keeping in
    /// memory, not rewriting on disk (after a restart the resync from Alertmanager is the
    /// fresher word anyway).
    Refresh(StoredAlert),
    /// The alert no longer fires.
    End(String),
    /// The alert's newest resolution, replacing the one remembered.
    Remember(String, Tombstone),
    /// The alert's resolution is forgotten (too many are held).
    Forget(String),
}

/// What applying a notification did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// Whether the firing alerts changed: one fired, ended, or changed `startsAt` or labels
    /// (a [`Change::Refresh`] does not count).
    pub changed: bool,
    /// How many of the notification's alerts were marked relevant and judged.
    pub relevant: usize,
    /// The alerts that changed nothing, as (fingerprint, why), for the log.
    pub ignored: Vec<(String, &'static str)>,
}

/// The alerts firing now and the resolutions remembered, each by fingerprint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FiringSet {
    pub alerts: BTreeMap<String, StoredAlert>,
    /// The newest resolution of each alert resolved, also of one firing again since.
    pub tombstones: BTreeMap<String, Tombstone>,
}

/// How an alert of a notification received at `at` counts: a firing alert whose `endsAt`
/// already passed is news of its end.
fn status_at(a: &Alert, at: DateTime<Utc>) -> AlertStatus {
    if a.is_firing_at(at) {
        AlertStatus::Firing
    } else {
        AlertStatus::Resolved
    }
}

impl FiringSet {
    /// Applies the alerts of `n`, received at `at`, for which `relevant[i]` is true (the others
    /// concern no service: journaled, not kept), in order, each judged by the incarnation rules
    /// against what is held, the alerts before it in `n` included.
    pub fn apply(&mut self, n: &Notification, relevant: &[bool], at: DateTime<Utc>) -> Applied {
        let mut out = Applied::default();
        for (a, _) in n.alerts.iter().zip(relevant).filter(|(_, r)| **r) {
            out.relevant += 1;
            let fp = &a.fingerprint;
            match incarnation::judge(&self.held(fp), status_at(a, at), a.starts_at, a.ends_at) {
                Verdict::Fire { starts_at } => {
                    let new = StoredAlert {
                        fingerprint: fp.clone(),
                        labels: a.labels.clone(),
                        starts_at,
                        received_at: at,
                        source: n.group_key.clone(),
                    };
                    let differs = self
                        .alerts
                        .get(fp)
                        .is_none_or(|p| p.starts_at != starts_at || p.labels != new.labels);
                    out.changed |= differs;
                    let change = if differs {
                        Change::Fire(new)
                    } else {
                        Change::Refresh(new)
                    };
                    self.make(change, &mut out.changes);
                }
                Verdict::Resolve(r) => {
                    if self.alerts.contains_key(fp) {
                        out.changed = true;
                        self.make(Change::End(fp.clone()), &mut out.changes);
                    }
                    let t = Tombstone {
                        starts_at: r.starts_at,
                        ends_at: r.ends_at,
                        resolved_at: at,
                    };
                    self.make(Change::Remember(fp.clone(), t), &mut out.changes);
                }
                Verdict::Ignore(why) => out.ignored.push((fp.clone(), why)),
            }
        }
        out
    }

    /// Makes Alertmanager's `snapshot` (taken at `fetched_at`) the firing set: its alerts are
    /// set as firing; an alert not in it goes only if it is not in `still_active` either
    /// (Alertmanager still has it active, e.g. routed to another receiver: not ours to drop).
    /// What a webhook said after the snapshot was taken wins over it: an alert received after
    /// `fetched_at` stays, one resolved after it is not revived. Returns the changes; none when
    /// the set already matched.
    pub fn merge_snapshot(
        &mut self,
        snapshot: Vec<StoredAlert>,
        still_active: &BTreeSet<String>,
        fetched_at: DateTime<Utc>,
    ) -> Vec<Change> {
        let incoming: BTreeMap<String, StoredAlert> = snapshot
            .into_iter()
            .map(|a| (a.fingerprint.clone(), a))
            .collect();
        let gone: Vec<String> = self
            .alerts
            .iter()
            .filter(|(fp, a)| {
                !incoming.contains_key(*fp)
                    && !still_active.contains(*fp)
                    && a.received_at <= fetched_at
            })
            .map(|(fp, _)| fp.clone())
            .collect();
        let mut changes = Vec::new();
        for fp in gone {
            self.make(Change::End(fp), &mut changes);
        }
        for (fp, a) in incoming {
            let resolved_after = self
                .tombstones
                .get(&fp)
                .is_some_and(|t| t.resolved_at > fetched_at && a.starts_at <= t.starts_at);
            let held = self
                .alerts
                .get(&fp)
                .is_some_and(|p| p.starts_at == a.starts_at && p.labels == a.labels);
            if !resolved_after && !held {
                self.make(Change::Fire(a), &mut changes);
            }
        }
        changes
    }

    /// Bounds the tombstones to `max`: forgets the oldest resolutions (by `resolved_at`, then
    /// fingerprint), long past any retry, but never that of an alert firing again (it tells a
    /// late copy of the resolution already applied from a new one). So more than `max` stay
    /// while that many alerts fire. Returns the changes.
    pub fn prune(&mut self, max: usize) -> Vec<Change> {
        let excess = self.tombstones.len().saturating_sub(max);
        if excess == 0 {
            return Vec::new();
        }
        let mut oldest: Vec<(DateTime<Utc>, String)> = self
            .tombstones
            .iter()
            .filter(|(fp, _)| !self.alerts.contains_key(*fp))
            .map(|(fp, t)| (t.resolved_at, fp.clone()))
            .collect();
        oldest.sort();
        let mut changes = Vec::new();
        for (_, fp) in oldest.into_iter().take(excess) {
            self.make(Change::Forget(fp), &mut changes);
        }
        changes
    }

    /// The alerts that would fire after applying every alert of `n` (received at `at`); nothing
    /// changes. For the plan preview, which must never tell a different story from the webhook:
    /// it is [`FiringSet::apply`] on a copy.
    pub fn preview(&self, n: &Notification, at: DateTime<Utc>) -> Vec<FiringAlert> {
        // `apply` reads only the tombstones of the alerts it is given: copy just those.
        let mut after = FiringSet {
            alerts: self.alerts.clone(),
            tombstones: n
                .alerts
                .iter()
                .filter_map(|a| {
                    Some((a.fingerprint.clone(), *self.tombstones.get(&a.fingerprint)?))
                })
                .collect(),
        };
        after.apply(n, &vec![true; n.alerts.len()], at);
        after.alerts.values().map(FiringAlert::from).collect()
    }

    /// Makes one change, as a changing method above reported it.
    pub fn update(&mut self, change: Change) {
        match change {
            Change::Fire(a) | Change::Refresh(a) => {
                self.alerts.insert(a.fingerprint.clone(), a);
            }
            Change::End(fp) => {
                self.alerts.remove(&fp);
            }
            Change::Remember(fp, t) => {
                self.tombstones.insert(fp, t);
            }
            Change::Forget(fp) => {
                self.tombstones.remove(&fp);
            }
        }
    }

    /// What is held about one fingerprint, as the incarnation rules read it.
    fn held(&self, fp: &str) -> Held {
        Held {
            firing: self.alerts.get(fp).map(|a| a.starts_at),
            resolved: self.tombstones.get(fp).map(Tombstone::resolution),
        }
    }

    /// Makes `change` and reports it in `changes`.
    fn make(&mut self, change: Change, changes: &mut Vec<Change>) {
        self.update(change.clone());
        changes.push(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use AlertStatus::{Firing, Resolved};

    fn t(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 9, min, 0)
            .single()
            .expect("valid time")
    }

    /// One alert of a notification: fingerprint (also its one label), status, startsAt, endsAt.
    type Note = (&'static str, AlertStatus, u32, Option<u32>);

    const fn firing(fp: &'static str, start: u32) -> Note {
        (fp, Firing, start, None)
    }
    const fn resolved(fp: &'static str, start: u32, end: u32) -> Note {
        (fp, Resolved, start, Some(end))
    }

    fn labels(fp: &str) -> Labels {
        [("alertname".to_string(), fp.to_string())].into()
    }

    fn notification(notes: &[Note]) -> Notification {
        Notification {
            version: "4".into(),
            group_key: "g".into(),
            truncated_alerts: 0,
            status: notes.first().map_or(Firing, |n| n.1),
            receiver: "r".into(),
            group_labels: Labels::new(),
            common_labels: Labels::new(),
            common_annotations: Labels::new(),
            external_url: String::new(),
            alerts: notes
                .iter()
                .map(|&(fp, status, start, end)| Alert {
                    status,
                    labels: labels(fp),
                    annotations: Labels::new(),
                    starts_at: t(start),
                    ends_at: end.map(t),
                    generator_url: String::new(),
                    fingerprint: fp.into(),
                })
                .collect(),
        }
    }

    fn alert(fp: &str, start: u32, received: u32) -> StoredAlert {
        StoredAlert {
            fingerprint: fp.into(),
            labels: labels(fp),
            starts_at: t(start),
            received_at: t(received),
            source: "g".into(),
        }
    }

    fn tombstone(start: u32, resolved_at: u32) -> Tombstone {
        Tombstone {
            starts_at: t(start),
            ends_at: None,
            resolved_at: t(resolved_at),
        }
    }

    /// The firing alerts as (fingerprint, startsAt).
    fn held(set: &FiringSet) -> Vec<(&str, DateTime<Utc>)> {
        set.alerts
            .iter()
            .map(|(fp, a)| (fp.as_str(), a.starts_at))
            .collect()
    }

    /// Applies each notification (every alert relevant), one a minute from 09:30; checks on the
    /// way that replaying the reported changes on a copy gives the same set, as the store's
    /// readers get it. Returns the set and the last notification's outcome.
    fn run(notifications: &[&[Note]]) -> (FiringSet, Applied) {
        let mut set = FiringSet::default();
        let mut last = Applied::default();
        for (i, notes) in notifications.iter().enumerate() {
            let n = notification(notes);
            let mut published = set.clone();
            let at = t(30 + u32::try_from(i).expect("few"));
            last = set.apply(&n, &vec![true; notes.len()], at);
            for change in last.changes.clone() {
                published.update(change);
            }
            assert_eq!(published, set, "replayed changes of {notes:?}");
        }
        (set, last)
    }

    /// Notifications in arrival order, firing at the end as (fingerprint, startsAt), did the
    /// last one change the firing alerts?, what it stands for.
    type Notifications = (
        &'static [&'static [Note]],
        &'static [(&'static str, u32)],
        bool,
        &'static str,
    );
    const NOTIFICATIONS: &[Notifications] = &[
        (&[&[firing("a", 0)]], &[("a", 0)], true, "an alert fires"),
        (
            &[&[firing("a", 0)], &[resolved("a", 0, 5)]],
            &[],
            true,
            "and resolves",
        ),
        (
            &[&[firing("a", 0)], &[firing("a", 0)]],
            &[("a", 0)],
            false,
            "a repeat changes nothing but when it was received",
        ),
        (
            &[&[resolved("a", 0, 5)]],
            &[],
            false,
            "a resolution of nothing held changes no firing alert",
        ),
        (
            &[
                &[firing("a", 0), firing("b", 1)],
                &[resolved("a", 0, 5), firing("b", 1)],
            ],
            &[("b", 1)],
            true,
            "one group, one alert resolved, the other still firing",
        ),
        (
            &[&[firing("a", 0), resolved("a", 0, 5)]],
            &[],
            true,
            "two alerts of one fingerprint in one notification: the second sees the first",
        ),
        (
            &[&[("a", Firing, 0, Some(20))]],
            &[],
            false,
            "a firing alert whose endsAt passed before it arrived is news of its end",
        ),
        (
            &[&[("a", Firing, 0, Some(50))]],
            &[("a", 0)],
            true,
            "one whose endsAt is still ahead fires",
        ),
        (
            &[
                &[firing("a", 0)],
                &[resolved("a", 0, 5)],
                &[firing("a", 7)],
                &[resolved("a", 0, 5)],
            ],
            &[("a", 7)],
            false,
            "the HA twin's late copy of an older incarnation's end",
        ),
        (
            &[
                &[firing("a", 0)],
                &[resolved("a", 0, 5)],
                &[firing("a", 0)],
                &[resolved("a", 0, 5)],
            ],
            &[("a", 0)],
            false,
            "a re-fire with the same startsAt survives a late copy of the first end",
        ),
        (
            &[&[firing("a", 7)], &[firing("a", 0)]],
            &[("a", 7)],
            false,
            "an older firing copy does not move the incarnation back",
        ),
        (
            &[&[firing("a", 0)], &[firing("a", 7)]],
            &[("a", 7)],
            true,
            "a newer startsAt is a change",
        ),
    ];

    #[test]
    fn table_of_notifications() {
        for (notifications, want, changed, why) in NOTIFICATIONS {
            let (set, last) = run(notifications);
            let want: Vec<(&str, DateTime<Utc>)> =
                want.iter().map(|(fp, start)| (*fp, t(*start))).collect();
            assert_eq!(held(&set), want, "{why}");
            assert_eq!(last.changed, *changed, "{why}: changed");
        }
    }

    #[test]
    fn changes_say_what_to_write() {
        let mut set = FiringSet::default();
        let n = notification(&[firing("a", 0)]);
        let applied = set.apply(&n, &[true], t(30));
        assert_eq!(applied.changes, [Change::Fire(alert("a", 0, 30))]);
        // A repeat: memory only, with when it was received.
        let applied = set.apply(&n, &[true], t(31));
        assert_eq!(applied.changes, [Change::Refresh(alert("a", 0, 31))]);
        assert!(!applied.changed);
        // The end: the alert goes and its resolution is remembered.
        let applied = set.apply(&notification(&[resolved("a", 0, 5)]), &[true], t(32));
        let end = Tombstone {
            starts_at: t(0),
            ends_at: Some(t(5)),
            resolved_at: t(32),
        };
        assert_eq!(
            applied.changes,
            [Change::End("a".into()), Change::Remember("a".into(), end)]
        );
        // Re-fired, its late copy of that end is ignored, and says why.
        set.apply(&n, &[true], t(33));
        let applied = set.apply(&notification(&[resolved("a", 0, 5)]), &[true], t(34));
        assert_eq!(applied.changes, []);
        assert_eq!(
            applied.ignored,
            [(
                "a".to_string(),
                "copy of a resolution already applied; the alert fired again since"
            )]
        );
    }

    #[test]
    fn only_relevant_alerts_are_applied() {
        let mut set = FiringSet::default();
        let n = notification(&[firing("a", 0), firing("b", 0), firing("c", 0)]);
        let applied = set.apply(&n, &[false, true, false], t(30));
        assert_eq!(applied.relevant, 1);
        assert_eq!(held(&set), [("b", t(0))]);
    }

    /// A held alert: fingerprint, startsAt and received-at minutes.
    type HeldSpec = (&'static str, u32, u32);

    /// Held alerts, tombstones as (fingerprint, startsAt, resolved at), the snapshot (fetched at
    /// 09:20), alerts still active elsewhere, firing after as (fingerprint, startsAt), what it
    /// stands for.
    type Merge = (
        &'static [HeldSpec],
        &'static [(&'static str, u32, u32)],
        &'static [(&'static str, u32)],
        &'static [&'static str],
        &'static [(&'static str, u32)],
        &'static str,
    );
    const MERGES: &[Merge] = &[
        (&[], &[], &[], &[], &[], "nothing held, nothing reported"),
        (
            &[("a", 0, 10)],
            &[],
            &[],
            &[],
            &[],
            "held before the snapshot, gone from it: it goes",
        ),
        (
            &[("a", 0, 25)],
            &[],
            &[],
            &[],
            &[("a", 0)],
            "received by webhook after the snapshot was taken: newer, it stays",
        ),
        (
            &[("a", 0, 10)],
            &[],
            &[],
            &["a"],
            &[("a", 0)],
            "still active at Alertmanager (another receiver's): not ours to drop",
        ),
        (
            &[],
            &[],
            &[("a", 0)],
            &[],
            &[("a", 0)],
            "a lost notification: the snapshot adds it",
        ),
        (
            &[("a", 0, 10)],
            &[],
            &[("a", 0)],
            &[],
            &[("a", 0)],
            "already held alike: no change",
        ),
        (
            &[("a", 7, 10)],
            &[],
            &[("a", 0)],
            &[],
            &[("a", 0)],
            "held with another startsAt: the snapshot's wins",
        ),
        (
            &[],
            &[("a", 0, 25)],
            &[("a", 0)],
            &[],
            &[],
            "resolved by webhook after the snapshot was taken: not revived",
        ),
        (
            &[],
            &[("a", 0, 15)],
            &[("a", 0)],
            &[],
            &[("a", 0)],
            "resolved before the snapshot, which still has it firing: revived",
        ),
        (
            &[],
            &[("a", 0, 25)],
            &[("a", 7)],
            &[],
            &[("a", 7)],
            "a newer incarnation than the one resolved after the snapshot: it fires",
        ),
    ];

    #[test]
    fn table_of_resync_merges() {
        let fetched_at = t(20);
        for (alerts, tombs, snapshot, still_active, want, why) in MERGES {
            let mut set = FiringSet {
                alerts: alerts
                    .iter()
                    .map(|&(fp, start, received)| (fp.to_string(), alert(fp, start, received)))
                    .collect(),
                tombstones: tombs
                    .iter()
                    .map(|&(fp, start, at)| (fp.to_string(), tombstone(start, at)))
                    .collect(),
            };
            let before = set.clone();
            let snapshot = snapshot
                .iter()
                .map(|&(fp, start)| StoredAlert {
                    source: "resync".into(),
                    ..alert(fp, start, 20)
                })
                .collect();
            let still_active = still_active.iter().map(ToString::to_string).collect();
            let changes = set.merge_snapshot(snapshot, &still_active, fetched_at);
            let want: Vec<(&str, DateTime<Utc>)> =
                want.iter().map(|(fp, start)| (*fp, t(*start))).collect();
            assert_eq!(held(&set), want, "{why}");
            assert_eq!(changes.is_empty(), held(&before) == want, "{why}: changed");
            let mut published = before;
            changes.into_iter().for_each(|c| published.update(c));
            assert_eq!(published, set, "{why}: replayed");
        }
    }

    #[test]
    fn table_of_tombstone_pruning() {
        // (tombstones as (fingerprint, resolved at), alerts firing, bound, tombstones kept,
        // what it stands for)
        type Case = (
            &'static [(&'static str, u32)],
            &'static [&'static str],
            usize,
            &'static [&'static str],
            &'static str,
        );
        let cases: &[Case] = &[
            (
                &[("a", 1), ("b", 2)],
                &[],
                2,
                &["a", "b"],
                "within the bound: all kept",
            ),
            (
                &[("a", 3), ("b", 1), ("c", 2), ("d", 4)],
                &[],
                2,
                &["a", "d"],
                "over it: the oldest resolutions go",
            ),
            (
                &[("a", 1), ("b", 2), ("c", 3)],
                &["a"],
                2,
                &["a", "c"],
                "never that of an alert firing again: the next oldest goes instead",
            ),
            (
                &[("a", 1), ("b", 1), ("c", 1)],
                &[],
                1,
                &["c"],
                "same age: by fingerprint",
            ),
            (
                &[("a", 1), ("b", 2)],
                &["a", "b"],
                1,
                &["a", "b"],
                "every one of them firing: more than the bound stay",
            ),
        ];
        for (tombs, firing, max, want, why) in cases {
            let mut set = FiringSet {
                alerts: firing
                    .iter()
                    .map(|fp| (fp.to_string(), alert(fp, 0, 0)))
                    .collect(),
                tombstones: tombs
                    .iter()
                    .map(|&(fp, at)| (fp.to_string(), tombstone(0, at)))
                    .collect(),
            };
            let before = set.clone();
            let changes = set.prune(*max);
            let kept: Vec<&str> = set.tombstones.keys().map(String::as_str).collect();
            assert_eq!(kept, *want, "{why}");
            assert!(
                changes.iter().all(|c| matches!(c, Change::Forget(_))),
                "{why}: only forgets"
            );
            let mut published = before;
            changes.into_iter().for_each(|c| published.update(c));
            assert_eq!(published, set, "{why}: replayed");
        }
    }

    #[test]
    fn preview_is_apply_on_a_copy() {
        let mut set = FiringSet::default();
        set.apply(
            &notification(&[firing("a", 0), firing("b", 0)]),
            &[true, true],
            t(30),
        );
        set.apply(&notification(&[resolved("a", 0, 5)]), &[true], t(31));
        set.apply(&notification(&[firing("a", 0)]), &[true], t(32));
        // A late copy of a's end (ignored), b's end, and c new; irrelevance is not the
        // preview's business: every alert counts.
        let n = notification(&[resolved("a", 0, 5), resolved("b", 0, 9), firing("c", 1)]);
        let before = set.clone();
        let preview = set.preview(&n, t(33));
        assert_eq!(set, before, "the preview changes nothing");
        set.apply(&n, &[true, true, true], t(33));
        let applied: Vec<FiringAlert> = set.alerts.values().map(FiringAlert::from).collect();
        assert_eq!(preview, applied);
        let fps: Vec<&str> = preview.iter().map(|a| a.fingerprint.as_str()).collect();
        assert_eq!(fps, ["a", "c"]);
    }
}
