//! Incarnation rules: which of Alertmanager's `firing` and `resolved` notifications wins for one
//! alert (one fingerprint), by `startsAt` and by order of arrival. Pure; the store applies the
//! verdicts.
//!
//! An alert with the same labels can fire, resolve and fire again: each span is an incarnation,
//! told apart by its `startsAt`. Notifications arrive late and twice (retries, the second
//! Alertmanager of an HA pair), so a notification is judged against what is held, not taken as
//! news. Two rules, each taking the safe side (the cloud) when the order cannot be known:
//!
//! | held            | arrives                         | verdict                                    |
//! |-----------------|---------------------------------|--------------------------------------------|
//! | nothing/resolved | firing, any `startsAt`         | firing (a re-fire keeps its old `startsAt`) |
//! | firing `H`      | firing `S`                      | firing, `startsAt = max(H, S)`             |
//! | firing `H`      | resolved, ended by `H` (`E <= H`; `S < H` without `E`) | ignored: an older incarnation's end |
//! | firing `H`      | resolved `(S, E)` = last applied | ignored: a copy of an end already applied, the alert fired again since |
//! | firing `H`      | resolved, otherwise             | resolved                                   |
//! | nothing/resolved | resolved                       | stays resolved (remembers the newest end)  |
//!
//! Why a firing notification after a resolved one always fires: Alertmanager resolves an alert
//! whose `endsAt` passed while Prometheus could not reach it, and when Prometheus reaches it
//! again the alert comes back with its original `startsAt`. That re-fire and a late copy of the
//! first firing notification look the same; failing over on a stale copy costs cloud capacity,
//! missing a real outage costs the service. A stale copy holds until the resync from
//! Alertmanager (`alertmanager.url`, one `resync_interval`) or until the alert fires and
//! resolves again: its own resolution may be the copy already applied, which is ignored. So
//! set `alertmanager.url`; damping bounds how often.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::AlertStatus;

/// One incarnation's end as a resolved notification reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resolution {
    pub starts_at: DateTime<Utc>,
    /// `endsAt` of the resolved notification (absent from very old senders).
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
}

/// What the responder holds about one fingerprint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// `startsAt` of the incarnation held as firing.
    pub firing: Option<DateTime<Utc>>,
    /// The newest resolution seen.
    pub resolved: Option<Resolution>,
}

/// What to do with one alert of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hold the alert as firing, with this `startsAt`.
    Fire { starts_at: DateTime<Utc> },
    /// The alert is not firing; remember this resolution (the newest seen).
    Resolve(Resolution),
    /// Changes nothing; the reason is for logs and tests.
    Ignore(&'static str),
}

/// Judges one alert of a notification against what is held for its fingerprint.
pub fn judge(
    held: &Held,
    status: AlertStatus,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
) -> Verdict {
    let incoming = Resolution { starts_at, ends_at };
    match (status, held.firing) {
        (AlertStatus::Firing, Some(h)) => Verdict::Fire {
            starts_at: h.max(starts_at),
        },
        (AlertStatus::Firing, None) => Verdict::Fire { starts_at },
        // Older means it ended before the held one started. Not "started before": Alertmanager
        // keeps the earliest startsAt of overlapping copies (two Prometheus replicas), so
        // one incarnation's resolution can carry an earlier startsAt than its firing did.
        (AlertStatus::Resolved, Some(h)) if ends_at.map_or(starts_at < h, |e| e <= h) => {
            Verdict::Ignore("resolved copy of an older incarnation")
        }
        (AlertStatus::Resolved, Some(_)) if held.resolved == Some(incoming) => {
            Verdict::Ignore("copy of a resolution already applied; the alert fired again since")
        }
        (AlertStatus::Resolved, _) => {
            Verdict::Resolve(held.resolved.map_or(incoming, |r| r.max(incoming)))
        }
    }
}

/// `held` after `verdict`.
pub fn apply(held: Held, verdict: Verdict) -> Held {
    match verdict {
        Verdict::Fire { starts_at } => Held {
            firing: Some(starts_at),
            ..held
        },
        Verdict::Resolve(r) => Held {
            firing: None,
            resolved: Some(r),
        },
        Verdict::Ignore(_) => held,
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

    /// One notification's alert: status, startsAt, endsAt.
    type Note = (AlertStatus, DateTime<Utc>, Option<DateTime<Utc>>);

    fn firing(start: u32) -> Note {
        (Firing, t(start), None)
    }
    fn resolved(start: u32, end: u32) -> Note {
        (Resolved, t(start), Some(t(end)))
    }

    fn run(notes: &[Note]) -> Held {
        notes.iter().fold(Held::default(), |held, (s, start, end)| {
            apply(held, judge(&held, *s, *start, *end))
        })
    }

    /// Every order of `notes` (Heap's algorithm; the sets here are small).
    fn permutations(notes: &[Note]) -> Vec<Vec<Note>> {
        fn go(k: usize, v: &mut Vec<Note>, out: &mut Vec<Vec<Note>>) {
            if k <= 1 {
                out.push(v.clone());
                return;
            }
            for i in 0..k {
                go(k - 1, v, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                v.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        go(notes.len(), &mut notes.to_vec(), &mut out);
        out
    }

    #[test]
    fn table_of_arrival_orders() {
        // (what arrives in order, firing at the end?, the field report it stands for)
        let cases: &[(&[Note], bool, &str)] = &[
            (&[firing(0)], true, "an alert fires"),
            (&[firing(0), resolved(0, 5)], false, "and resolves"),
            (&[firing(0), firing(0)], true, "a repeat changes nothing"),
            (&[resolved(0, 5)], false, "a resolution alone fires nothing"),
            (
                &[firing(0), resolved(0, 5), firing(7), resolved(0, 5)],
                true,
                "field report 1: the HA twin's late resolved copy of the 09:00 incarnation",
            ),
            (
                &[firing(0), resolved(0, 5), firing(7), resolved(7, 9)],
                false,
                "the newer incarnation's own resolution ends it",
            ),
            (
                &[firing(0), resolved(0, 5), firing(0)],
                true,
                "field report 2: a re-fire with the same startsAt",
            ),
            (
                &[firing(0), resolved(0, 5), firing(0), resolved(0, 5)],
                true,
                "a late copy of the first resolution does not end the re-fire",
            ),
            (
                &[firing(0), resolved(0, 5), firing(0), resolved(0, 12)],
                false,
                "the re-fire's own resolution (a later endsAt) ends it",
            ),
            (
                &[firing(7), firing(0)],
                true,
                "an older firing copy does not move the held incarnation back",
            ),
            (
                &[firing(7), firing(0), resolved(0, 5)],
                true,
                "so the older incarnation's end cannot end the newer one",
            ),
            (
                &[resolved(7, 9), firing(0)],
                true,
                "a firing after a resolution fires, whatever its startsAt (the safe side)",
            ),
            (
                &[firing(0), resolved(7, 9)],
                false,
                "a newer incarnation's end ends what is held (it cannot still be firing)",
            ),
            (
                &[firing(2), firing(1), resolved(1, 30)],
                false,
                "copies of one incarnation whose startsAt moved earlier (Alertmanager keeps the earliest): its end ends it",
            ),
            (
                &[firing(0), resolved(0, 5), firing(0), resolved(0, 5)],
                true,
                "the late twin copy is ignored even when it was a real second resolution: the resync repairs it",
            ),
            (
                &[resolved(7, 9), resolved(0, 5), firing(7), resolved(7, 9)],
                true,
                "the newest resolution is the one remembered, so its late copy is known",
            ),
        ];
        for (notes, want, why) in cases {
            let held = run(notes);
            assert_eq!(held.firing.is_some(), *want, "{why}: {held:?}");
        }
    }

    #[test]
    fn a_newer_ongoing_incarnation_survives_every_order_of_older_copies() {
        // Incarnation 09:00 fired and resolved (both copies twice, as an HA pair sends them);
        // 09:07 fires and has not resolved. Whatever order they arrive in, 09:07 is held firing.
        let notes = [
            firing(0),
            firing(0),
            resolved(0, 5),
            resolved(0, 5),
            firing(7),
        ];
        for order in permutations(&notes) {
            let held = run(&order);
            assert_eq!(held.firing, Some(t(7)), "{order:?}");
        }
    }

    #[test]
    fn the_newest_resolution_ends_the_alert_when_every_firing_came_first() {
        // Liveness: once every firing copy has arrived, the first copy of the newest
        // incarnation's resolution ends the alert, whatever the order of everything before.
        let before = [firing(0), resolved(0, 5), firing(7), firing(7)];
        for order in permutations(&before) {
            let mut notes = order.clone();
            notes.push(resolved(7, 9));
            let held = run(&notes);
            assert_eq!(held.firing, None, "{notes:?}");
        }
    }

    #[test]
    fn every_verdict_names_why_it_ignores() {
        let held = Held {
            firing: Some(t(7)),
            resolved: Some(Resolution {
                starts_at: t(0),
                ends_at: Some(t(5)),
            }),
        };
        assert_eq!(
            judge(&held, Resolved, t(0), Some(t(5))),
            Verdict::Ignore("resolved copy of an older incarnation")
        );
        let refired = Held {
            firing: Some(t(0)),
            ..held
        };
        assert_eq!(
            judge(&refired, Resolved, t(0), Some(t(5))),
            Verdict::Ignore("copy of a resolution already applied; the alert fired again since")
        );
    }
}
