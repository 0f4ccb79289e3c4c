//! The pure half of converge: the desired state (from `policy::desired_state`) and the observed
//! state (factor store + the engine's enforcement bookkeeping) in, a list of actions out, plus the
//! time a follow-up converge is needed. No I/O, no clock (the caller passes `now`).
//!
//! Not here: loading either state, the guard, executing actions (see `engine/mod.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::factors::{Factor, FactorStatus, FactorType, Session};
use crate::policy::{DesiredState, FactorDisposition, Lifecycle, StaleAction};
use crate::store::ts_from;

/// One step that brings a user's factors and sessions to the desired state. JSON:
/// `{"action": "suspend_factor", "factor_id": …, "factor_type": …, "reason": …}` and so on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    SuspendFactor {
        factor_id: String,
        factor_type: FactorType,
        reason: String,
    },
    ResumeFactor {
        factor_id: String,
        factor_type: FactorType,
    },
    RevokeFactor {
        factor_id: String,
        factor_type: FactorType,
        reason: String,
    },
    /// End the user's live sessions (`sessions` = how many were live when planned).
    RevokeSessions { sessions: usize },
    /// Tell the factor store the user must enroll one of `types` by `deadline`.
    RequireEnrollment {
        types: Vec<FactorType>,
        deadline: String,
        rule: usize,
    },
    /// A requirement's deadline passed with no factor of its types: record and alert, once.
    RequirementOverdue {
        types: Vec<FactorType>,
        deadline: String,
        rule: usize,
    },
}

impl Action {
    /// Suspending, revoking and ending sessions take access away: the guard counts these.
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            Action::SuspendFactor { .. }
                | Action::RevokeFactor { .. }
                | Action::RevokeSessions { .. }
        )
    }

    /// The action's name as in JSON (`suspend_factor`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Action::SuspendFactor { .. } => "suspend_factor",
            Action::ResumeFactor { .. } => "resume_factor",
            Action::RevokeFactor { .. } => "revoke_factor",
            Action::RevokeSessions { .. } => "revoke_sessions",
            Action::RequireEnrollment { .. } => "require_enrollment",
            Action::RequirementOverdue { .. } => "requirement_overdue",
        }
    }
}

/// What the engine already recorded about one `[[require]]` rule for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedRequirement {
    pub types: Vec<FactorType>,
    pub since: DateTime<Utc>,
    /// UTC text, as sent to the factor store.
    pub deadline: String,
    /// The factor store was told (RequireEnrollment executed with these types and deadline).
    pub marked: bool,
    /// The deadline passing was recorded.
    pub overdue: bool,
}

/// The observed state of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub lifecycle: Lifecycle,
    pub factors: Vec<Factor>,
    pub sessions: Vec<Session>,
    /// By rule index in the current policy.
    pub requirements: HashMap<usize, MarkedRequirement>,
}

/// Why a factor should be in a status other than active, for the audit.
fn inactive_reason(lifecycle: &Lifecycle, revoke_time: bool) -> &'static str {
    match (lifecycle, revoke_time) {
        (Lifecycle::Deleted { .. }, _) => "deleted",
        (Lifecycle::Deactivated { .. }, true) => "revoke_after_expired",
        (Lifecycle::Deactivated { .. }, false) => "deactivated",
        (Lifecycle::Active, _) => "policy",
    }
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Unused longer than the stale rule allows (last use, or enrollment when never used). An
/// unreadable time is never stale: acting on a guess would take a factor away.
fn is_stale(f: &Factor, unused_for: chrono::Duration, now: DateTime<Utc>) -> bool {
    let last = f.last_used.as_deref().unwrap_or(&f.created);
    match parse_ts(last) {
        Some(t) => t
            .checked_add_signed(unused_for)
            .is_some_and(|end| end <= now),
        None => false,
    }
}

/// The status the policy wants for `f`, and why (for statuses other than active).
fn target(
    f: &Factor,
    desired: &DesiredState,
    lifecycle: &Lifecycle,
    now: DateTime<Utc>,
) -> (FactorStatus, String) {
    match desired.factors {
        FactorDisposition::Revoke => {
            let was_suspension = matches!(lifecycle, Lifecycle::Deactivated { .. })
                && f.status == FactorStatus::Suspended;
            (
                FactorStatus::Revoked,
                inactive_reason(lifecycle, was_suspension).into(),
            )
        }
        FactorDisposition::Suspend { .. } => (
            FactorStatus::Suspended,
            inactive_reason(lifecycle, false).into(),
        ),
        FactorDisposition::Keep => {
            if desired.forbidden.contains(&f.factor_type) {
                return (FactorStatus::Revoked, "forbidden".into());
            }
            if let Some(stale) = &desired.stale {
                if is_stale(f, stale.unused_for, now) {
                    match stale.action {
                        StaleAction::Suspend => return (FactorStatus::Suspended, "stale".into()),
                        StaleAction::Revoke => return (FactorStatus::Revoked, "stale".into()),
                        StaleAction::Report => {}
                    }
                }
            }
            (FactorStatus::Active, String::new())
        }
    }
}

/// The actions that bring `observed` to `desired`, in execution order: factor suspensions and
/// revocations, then sessions, then resumptions, then enforcement. Deterministic (factors in id
/// order). Empty when the user is converged: running converge twice plans nothing the second time.
pub fn plan(desired: &DesiredState, observed: &Observed, now: DateTime<Utc>) -> Vec<Action> {
    let mut factors: Vec<&Factor> = observed.factors.iter().collect();
    factors.sort_by(|a, b| a.id.cmp(&b.id));

    let mut take_away = Vec::new();
    let mut resume = Vec::new();
    // Factor types that will be usable once the plan ran (requirements count only those).
    let mut usable: Vec<FactorType> = Vec::new();
    for f in factors {
        let (want, reason) = target(f, desired, &observed.lifecycle, now);
        let (factor_id, factor_type) = (f.id.clone(), f.factor_type);
        match (f.status, want) {
            (FactorStatus::Active, FactorStatus::Suspended) => {
                take_away.push(Action::SuspendFactor {
                    factor_id,
                    factor_type,
                    reason,
                })
            }
            (FactorStatus::Active | FactorStatus::Suspended, FactorStatus::Revoked) => take_away
                .push(Action::RevokeFactor {
                    factor_id,
                    factor_type,
                    reason,
                }),
            (FactorStatus::Suspended, FactorStatus::Active) => {
                usable.push(factor_type);
                resume.push(Action::ResumeFactor {
                    factor_id,
                    factor_type,
                })
            }
            (FactorStatus::Active, FactorStatus::Active) => usable.push(factor_type),
            // Revoked is final; suspended stays suspended.
            _ => {}
        }
    }

    let mut actions = take_away;
    if desired.end_sessions {
        let live = observed.sessions.iter().filter(|s| !s.revoked).count();
        if live > 0 {
            actions.push(Action::RevokeSessions { sessions: live });
        }
    }
    actions.extend(resume);

    for req in &desired.required {
        if req.types.iter().any(|t| usable.contains(t)) {
            continue;
        }
        let deadline = ts_from(req.deadline);
        let marked = observed.requirements.get(&req.rule);
        let told =
            marked.is_some_and(|m| m.marked && m.deadline == deadline && m.types == req.types);
        if !told {
            actions.push(Action::RequireEnrollment {
                types: req.types.clone(),
                deadline: deadline.clone(),
                rule: req.rule,
            });
        }
        let overdue_recorded = marked.is_some_and(|m| m.overdue && m.deadline == deadline);
        if now >= req.deadline && !overdue_recorded {
            actions.push(Action::RequirementOverdue {
                types: req.types.clone(),
                deadline,
                rule: req.rule,
            });
        }
    }
    actions
}

/// The factor types the user will hold usable once the plan ran (active now and staying
/// active, or suspended and being resumed). Requirements count only these.
pub fn usable_types(
    desired: &DesiredState,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Vec<FactorType> {
    observed
        .factors
        .iter()
        .filter(|f| {
            f.status != FactorStatus::Revoked
                && target(f, desired, &observed.lifecycle, now).0 == FactorStatus::Active
        })
        .map(|f| f.factor_type)
        .collect()
}

/// When this user must be converged again with nothing else happening: suspended factors are due
/// for revocation at `revoke_at`; an unmet requirement's deadline arrives. None when no time-driven
/// change is pending.
pub fn next_due(
    desired: &DesiredState,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut due: Option<DateTime<Utc>> = None;
    let mut consider = |t: DateTime<Utc>| {
        if t > now && due.is_none_or(|d| t < d) {
            due = Some(t);
        }
    };
    if let FactorDisposition::Suspend { revoke_at } = desired.factors {
        if observed
            .factors
            .iter()
            .any(|f| f.status != FactorStatus::Revoked)
        {
            consider(revoke_at);
        }
    }
    let usable = usable_types(desired, observed, now);
    for req in &desired.required {
        if !req.types.iter().any(|t| usable.contains(t)) {
            consider(req.deadline);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Requirement, StaleRule};
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn factor(id: &str, t: FactorType, status: FactorStatus) -> Factor {
        Factor {
            id: id.into(),
            factor_type: t,
            label: None,
            status,
            created: "2024-05-01T00:00:00.000000Z".into(),
            last_used: Some("2024-05-30T00:00:00.000000Z".into()),
        }
    }

    fn session(id: &str, revoked: bool) -> Session {
        Session {
            id: id.into(),
            created: "2024-05-01T00:00:00.000000Z".into(),
            last_seen: None,
            revoked,
        }
    }

    fn keep() -> DesiredState {
        DesiredState {
            factors: FactorDisposition::Keep,
            end_sessions: false,
            required: vec![],
            forbidden: vec![],
            stale: None,
            audit_only: false,
        }
    }

    fn observed(lifecycle: Lifecycle, factors: Vec<Factor>, sessions: Vec<Session>) -> Observed {
        Observed {
            lifecycle,
            factors,
            sessions,
            requirements: HashMap::new(),
        }
    }

    fn three_factors(status: FactorStatus) -> Vec<Factor> {
        vec![
            factor("f3", FactorType::RecoveryCodes, status),
            factor("f1", FactorType::Totp, status),
            factor("f2", FactorType::Webauthn, status),
        ]
    }

    #[test]
    fn deactivation_suspends_every_active_factor_then_ends_sessions() {
        let revoke_at = now() + Duration::days(30);
        let d = DesiredState {
            factors: FactorDisposition::Suspend { revoke_at },
            end_sessions: true,
            ..keep()
        };
        let o = observed(
            Lifecycle::Deactivated { since: now() },
            three_factors(FactorStatus::Active),
            vec![
                session("s1", false),
                session("s2", true),
                session("s3", false),
            ],
        );
        let a = plan(&d, &o, now());
        let suspend = |id: &str, t| Action::SuspendFactor {
            factor_id: id.into(),
            factor_type: t,
            reason: "deactivated".into(),
        };
        assert_eq!(
            a,
            vec![
                suspend("f1", FactorType::Totp),
                suspend("f2", FactorType::Webauthn),
                suspend("f3", FactorType::RecoveryCodes),
                Action::RevokeSessions { sessions: 2 },
            ]
        );
        assert!(a.iter().all(Action::is_destructive));
        assert_eq!(next_due(&d, &o, now()), Some(revoke_at));
    }

    #[test]
    fn second_run_after_suspension_plans_nothing() {
        let revoke_at = now() + Duration::days(30);
        let d = DesiredState {
            factors: FactorDisposition::Suspend { revoke_at },
            end_sessions: true,
            ..keep()
        };
        let mut fs = three_factors(FactorStatus::Suspended);
        fs.push(factor("f4", FactorType::Sms, FactorStatus::Revoked));
        let o = observed(
            Lifecycle::Deactivated { since: now() },
            fs,
            vec![session("s1", true)],
        );
        assert!(plan(&d, &o, now()).is_empty());
        // still a follow-up: the suspended ones get revoked at revoke_at
        assert_eq!(next_due(&d, &o, now()), Some(revoke_at));
    }

    #[test]
    fn reactivation_resumes_suspended_factors_only() {
        let mut fs = three_factors(FactorStatus::Suspended);
        fs.push(factor("f4", FactorType::Sms, FactorStatus::Revoked));
        fs.push(factor("f5", FactorType::Push, FactorStatus::Active));
        let o = observed(Lifecycle::Active, fs, vec![]);
        let a = plan(&keep(), &o, now());
        assert_eq!(
            a,
            vec![
                Action::ResumeFactor {
                    factor_id: "f1".into(),
                    factor_type: FactorType::Totp
                },
                Action::ResumeFactor {
                    factor_id: "f2".into(),
                    factor_type: FactorType::Webauthn
                },
                Action::ResumeFactor {
                    factor_id: "f3".into(),
                    factor_type: FactorType::RecoveryCodes
                },
            ]
        );
        assert!(a.iter().all(|x| !x.is_destructive()));
        assert_eq!(next_due(&keep(), &o, now()), None);
    }

    #[test]
    fn after_revoke_after_suspended_factors_are_revoked() {
        let d = DesiredState {
            factors: FactorDisposition::Revoke,
            end_sessions: true,
            ..keep()
        };
        let mut fs = three_factors(FactorStatus::Suspended);
        fs.push(factor("f0", FactorType::Sms, FactorStatus::Revoked));
        let o = observed(
            Lifecycle::Deactivated {
                since: now() - Duration::days(31),
            },
            fs,
            vec![],
        );
        let a = plan(&d, &o, now());
        assert_eq!(a.len(), 3);
        for x in &a {
            match x {
                Action::RevokeFactor { reason, .. } => assert_eq!(reason, "revoke_after_expired"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(next_due(&d, &o, now()), None);
    }

    #[test]
    fn delete_revokes_active_and_suspended_at_once() {
        let d = DesiredState {
            factors: FactorDisposition::Revoke,
            end_sessions: true,
            ..keep()
        };
        let fs = vec![
            factor("a", FactorType::Totp, FactorStatus::Active),
            factor("b", FactorType::Webauthn, FactorStatus::Suspended),
            factor("c", FactorType::Sms, FactorStatus::Revoked),
        ];
        let o = observed(
            Lifecycle::Deleted { since: now() },
            fs,
            vec![session("s", false)],
        );
        let a = plan(&d, &o, now());
        assert_eq!(
            a,
            vec![
                Action::RevokeFactor {
                    factor_id: "a".into(),
                    factor_type: FactorType::Totp,
                    reason: "deleted".into()
                },
                Action::RevokeFactor {
                    factor_id: "b".into(),
                    factor_type: FactorType::Webauthn,
                    reason: "deleted".into()
                },
                Action::RevokeSessions { sessions: 1 },
            ]
        );
    }

    #[test]
    fn sessions_kept_when_policy_keeps_them() {
        let d = DesiredState {
            factors: FactorDisposition::Revoke,
            end_sessions: false,
            ..keep()
        };
        let o = observed(
            Lifecycle::Deactivated { since: now() },
            vec![],
            vec![session("s", false)],
        );
        assert!(plan(&d, &o, now()).is_empty());
    }

    #[test]
    fn forbidden_types_are_revoked_for_active_users() {
        let d = DesiredState {
            forbidden: vec![FactorType::Sms, FactorType::Voice],
            ..keep()
        };
        let fs = vec![
            factor("a", FactorType::Sms, FactorStatus::Active),
            factor("b", FactorType::Totp, FactorStatus::Active),
            factor("c", FactorType::Voice, FactorStatus::Suspended),
        ];
        let a = plan(&d, &observed(Lifecycle::Active, fs, vec![]), now());
        assert_eq!(
            a,
            vec![
                Action::RevokeFactor {
                    factor_id: "a".into(),
                    factor_type: FactorType::Sms,
                    reason: "forbidden".into()
                },
                Action::RevokeFactor {
                    factor_id: "c".into(),
                    factor_type: FactorType::Voice,
                    reason: "forbidden".into()
                },
            ]
        );
    }

    #[test]
    fn missing_required_factor_is_marked_once_then_overdue_once() {
        let deadline = now() + Duration::hours(72);
        let d = DesiredState {
            required: vec![Requirement {
                types: vec![FactorType::Webauthn],
                deadline,
                rule: 0,
            }],
            ..keep()
        };
        let mut o = observed(
            Lifecycle::Active,
            vec![factor("t", FactorType::Totp, FactorStatus::Active)],
            vec![],
        );
        let a = plan(&d, &o, now());
        let want = Action::RequireEnrollment {
            types: vec![FactorType::Webauthn],
            deadline: ts_from(deadline),
            rule: 0,
        };
        assert_eq!(a, vec![want]);
        assert_eq!(next_due(&d, &o, now()), Some(deadline));
        // once marked: nothing more until the deadline
        o.requirements.insert(
            0,
            MarkedRequirement {
                types: vec![FactorType::Webauthn],
                since: now(),
                deadline: ts_from(deadline),
                marked: true,
                overdue: false,
            },
        );
        assert!(plan(&d, &o, now()).is_empty());
        // at the deadline: overdue, once
        let a = plan(&d, &o, deadline);
        assert_eq!(
            a,
            vec![Action::RequirementOverdue {
                types: vec![FactorType::Webauthn],
                deadline: ts_from(deadline),
                rule: 0
            }]
        );
        if let Some(m) = o.requirements.get_mut(&0) {
            m.overdue = true;
        }
        assert!(plan(&d, &o, deadline + Duration::days(1)).is_empty());
        assert_eq!(next_due(&d, &o, deadline), None);
        // a changed deadline (policy grace changed) is marked again
        let d2 = DesiredState {
            required: vec![Requirement {
                types: vec![FactorType::Webauthn],
                deadline: deadline + Duration::hours(1),
                rule: 0,
            }],
            ..keep()
        };
        assert!(matches!(
            plan(&d2, &o, now())[..],
            [Action::RequireEnrollment { .. }]
        ));
    }

    #[test]
    fn requirement_met_by_an_active_factor_plans_nothing() {
        let d = DesiredState {
            required: vec![Requirement {
                types: vec![FactorType::Totp, FactorType::Webauthn],
                deadline: now(),
                rule: 1,
            }],
            ..keep()
        };
        let o = observed(
            Lifecycle::Active,
            vec![factor("w", FactorType::Webauthn, FactorStatus::Active)],
            vec![],
        );
        assert!(plan(&d, &o, now()).is_empty());
        // a suspended one being resumed counts too
        let o = observed(
            Lifecycle::Active,
            vec![factor("w", FactorType::Webauthn, FactorStatus::Suspended)],
            vec![],
        );
        assert_eq!(plan(&d, &o, now()).len(), 1);
        // a forbidden one being revoked does not
        let d = DesiredState {
            forbidden: vec![FactorType::Webauthn],
            ..d
        };
        let o = observed(
            Lifecycle::Active,
            vec![factor("w", FactorType::Webauthn, FactorStatus::Active)],
            vec![],
        );
        let names: Vec<&str> = plan(&d, &o, now()).iter().map(Action::name).collect();
        assert_eq!(
            names,
            vec!["revoke_factor", "require_enrollment", "requirement_overdue"]
        );
    }

    #[test]
    fn stale_factors_follow_the_stale_action() {
        let mut old = factor("old", FactorType::Totp, FactorStatus::Active);
        old.last_used = Some("2024-01-01T00:00:00.000000Z".into());
        let mut never = factor("never", FactorType::Sms, FactorStatus::Active);
        never.last_used = None;
        never.created = "2023-01-01T00:00:00Z".into();
        let mut garbled = factor("garbled", FactorType::Push, FactorStatus::Active);
        garbled.last_used = Some("yesterday".into());
        let fresh = factor("fresh", FactorType::Webauthn, FactorStatus::Active);
        let o = observed(Lifecycle::Active, vec![old, never, garbled, fresh], vec![]);
        let stale = |action| DesiredState {
            stale: Some(StaleRule {
                unused_for: Duration::days(90),
                action,
            }),
            ..keep()
        };
        assert!(plan(&stale(StaleAction::Report), &o, now()).is_empty());
        let ids = |a: Vec<Action>| {
            a.into_iter()
                .map(|x| match x {
                    Action::SuspendFactor {
                        factor_id, reason, ..
                    } => format!("s:{factor_id}:{reason}"),
                    Action::RevokeFactor {
                        factor_id, reason, ..
                    } => format!("r:{factor_id}:{reason}"),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(plan(&stale(StaleAction::Suspend), &o, now())),
            vec!["s:never:stale", "s:old:stale"]
        );
        assert_eq!(
            ids(plan(&stale(StaleAction::Revoke), &o, now())),
            vec!["r:never:stale", "r:old:stale"]
        );
        // a stale factor that is suspended stays suspended (no resume/suspend flapping)
        let mut s = factor("old", FactorType::Totp, FactorStatus::Suspended);
        s.last_used = Some("2024-01-01T00:00:00.000000Z".into());
        assert!(plan(
            &stale(StaleAction::Suspend),
            &observed(Lifecycle::Active, vec![s], vec![]),
            now()
        )
        .is_empty());
    }

    #[test]
    fn nothing_to_do_for_a_user_without_factors() {
        let d = DesiredState {
            factors: FactorDisposition::Suspend {
                revoke_at: now() + Duration::days(1),
            },
            end_sessions: true,
            ..keep()
        };
        let o = observed(Lifecycle::Deactivated { since: now() }, vec![], vec![]);
        assert!(plan(&d, &o, now()).is_empty());
        assert_eq!(next_due(&d, &o, now()), None);
    }

    #[test]
    fn actions_serialize_with_a_tag() {
        let a = Action::SuspendFactor {
            factor_id: "f".into(),
            factor_type: FactorType::HardwareOtp,
            reason: "deactivated".into(),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"action": "suspend_factor", "factor_id": "f", "factor_type": "hardware_otp", "reason": "deactivated"})
        );
        let back: Action = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.name(), "suspend_factor");
    }
}
