//! `desired_state`: for one user, what the policy says their factors and sessions should be.
//! Pure: the user's facts, the policy and the clock in; a `DesiredState` out. The engine compares
//! it with the factor store and plans the difference.
//!
//! Not here: reading users or factors, deciding which concrete factor to act on (`engine/`).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::{FactorAction, Policy, SessionAction, StaleRule};
use crate::factors::FactorType;
use crate::scim::filter::{AttrPath, Filter};

/// Where a user is in their lifecycle, with when they got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Active,
    Deactivated { since: DateTime<Utc> },
    Deleted { since: DateTime<Utc> },
}

/// What `desired_state` needs to know about a user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserFacts {
    /// The SCIM user JSON, including the computed `"groups": [{"value","display","type"}]`.
    pub resource: Value,
    pub lifecycle: Lifecycle,
    /// For each `[[require]]` rule (by index) that matched this user before: since when. A rule
    /// missing here is taken to start matching now (grace runs from now).
    pub requirement_since: HashMap<usize, DateTime<Utc>>,
}

impl UserFacts {
    pub fn new(resource: Value, lifecycle: Lifecycle) -> Self {
        UserFacts {
            resource,
            lifecycle,
            requirement_since: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorDisposition {
    /// Factors stay usable (suspended ones are resumed).
    Keep,
    /// Factors are suspended now and revoked at `revoke_at` unless the user comes back first.
    Suspend { revoke_at: DateTime<Utc> },
    /// Factors are revoked.
    Revoke,
}

/// A `[[require]]` rule that applies: hold one of `types` by `deadline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub types: Vec<FactorType>,
    pub deadline: DateTime<Utc>,
    /// Index of the rule in `Policy::require`.
    pub rule: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredState {
    pub factors: FactorDisposition,
    /// End every live session.
    pub end_sessions: bool,
    pub required: Vec<Requirement>,
    /// Types the user must not hold (union of matching `[[forbid]]` rules, in first-seen order).
    pub forbidden: Vec<FactorType>,
    /// The stale-factor rule, for active users when the policy has one.
    pub stale: Option<StaleRule>,
    /// `mode = "audit-only"`: plan and record, do not execute.
    pub audit_only: bool,
}

/// `t + d`, saturating at the end of time rather than overflowing.
fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Evaluates a `who` filter against a user resource with the schema's case rules.
pub fn who_matches(filter: &Filter, resource: &Value) -> bool {
    let registry = crate::scim::schema::SchemaRegistry::get();
    let case_exact = |p: &AttrPath| registry.case_exact(crate::scim::schema::ResourceKind::User, p);
    crate::scim::filter::matches(filter, resource, &case_exact)
}

fn inactive_disposition(
    action: FactorAction,
    since: DateTime<Utc>,
    revoke_after: Duration,
    now: DateTime<Utc>,
) -> FactorDisposition {
    match action {
        FactorAction::Revoke => FactorDisposition::Revoke,
        FactorAction::Suspend => {
            let revoke_at = add(since, revoke_after);
            // At revoke_at exactly, the suspension has run out.
            if now >= revoke_at {
                FactorDisposition::Revoke
            } else {
                FactorDisposition::Suspend { revoke_at }
            }
        }
    }
}

/// What the policy wants for this user at `now`.
///
/// - Deactivated: `[deactivated] factors` (suspend until `since + revoke_after`, then revoke),
///   sessions per `[deactivated] sessions`.
/// - Deleted: `[deleted]`; a "suspend" there uses the same `revoke_after` from the deletion.
/// - Active: factors kept, sessions kept; requirements, forbidden types and the stale rule
///   apply (to active users only: an inactive user's factors are being removed anyway).
pub fn desired_state(user: &UserFacts, policy: &Policy, now: DateTime<Utc>) -> DesiredState {
    let audit_only = policy.audit_only();
    let inactive = |factors, sessions| DesiredState {
        factors,
        end_sessions: sessions == SessionAction::Revoke,
        required: Vec::new(),
        forbidden: Vec::new(),
        stale: None,
        audit_only,
    };
    match user.lifecycle {
        Lifecycle::Deactivated { since } => {
            let d = &policy.deactivated;
            inactive(
                inactive_disposition(d.factors, since, d.revoke_after, now),
                d.sessions,
            )
        }
        Lifecycle::Deleted { since } => {
            let d = &policy.deleted;
            let revoke_after = policy.deactivated.revoke_after;
            inactive(
                inactive_disposition(d.factors, since, revoke_after, now),
                d.sessions,
            )
        }
        Lifecycle::Active => {
            let required = policy
                .require
                .iter()
                .enumerate()
                .filter(|(_, r)| who_matches(&r.who, &user.resource))
                .map(|(i, r)| {
                    let since = user.requirement_since.get(&i).copied().unwrap_or(now);
                    Requirement {
                        types: r.factors.clone(),
                        deadline: add(since, r.grace),
                        rule: i,
                    }
                })
                .collect();
            let mut forbidden: Vec<FactorType> = Vec::new();
            for rule in policy
                .forbid
                .iter()
                .filter(|r| who_matches(&r.who, &user.resource))
            {
                for t in &rule.factors {
                    if !forbidden.contains(t) {
                        forbidden.push(*t);
                    }
                }
            }
            DesiredState {
                factors: FactorDisposition::Keep,
                end_sessions: false,
                required,
                forbidden,
                stale: policy.stale.clone(),
                audit_only,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse_policy, StaleAction};
    use chrono::TimeZone;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn now() -> DateTime<Utc> {
        t("2024-06-01T12:00:00Z")
    }

    const POLICY: &str = r#"
[deactivated]
factors = "suspend"
sessions = "revoke"
revoke_after = "30d"

[deleted]
factors = "revoke"
sessions = "revoke"

[[require]]
who = 'groups.display eq "Admins" or roles.value eq "admin"'
factors = ["webauthn"]
grace = "72h"

[[require]]
who = 'userType eq "Contractor"'
factors = ["totp", "webauthn"]
grace = "0s"

[[forbid]]
who = 'userType eq "Contractor"'
factors = ["sms", "voice"]

[[forbid]]
who = 'title sw "Intern"'
factors = ["voice", "email"]

[stale]
unused_for = "90d"
action = "suspend"
"#;

    fn policy() -> Policy {
        parse_policy(POLICY).unwrap()
    }

    fn user(extra: Value) -> Value {
        let mut u = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "u1",
            "userName": "alice",
            "active": true,
            "groups": []
        });
        if let (Some(o), Some(e)) = (u.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        u
    }

    fn active(extra: Value) -> UserFacts {
        UserFacts::new(user(extra), Lifecycle::Active)
    }

    #[test]
    fn plain_active_user_keeps_everything() {
        let d = desired_state(&active(json!({})), &policy(), now());
        assert_eq!(d.factors, FactorDisposition::Keep);
        assert!(!d.end_sessions);
        assert!(d.required.is_empty());
        assert!(d.forbidden.is_empty());
        assert_eq!(
            d.stale,
            Some(StaleRule {
                unused_for: Duration::days(90),
                action: StaleAction::Suspend
            })
        );
        assert!(!d.audit_only);
    }

    #[test]
    fn admins_group_requires_webauthn_with_grace_from_now() {
        let u = active(json!({"groups": [{"value": "g1", "display": "Admins", "type": "direct"}]}));
        let d = desired_state(&u, &policy(), now());
        assert_eq!(
            d.required,
            vec![Requirement {
                types: vec![FactorType::Webauthn],
                deadline: now() + Duration::hours(72),
                rule: 0
            }]
        );
        // group display names are not case-exact
        let u = active(json!({"groups": [{"value": "g1", "display": "admins"}]}));
        assert_eq!(desired_state(&u, &policy(), now()).required.len(), 1);
        // another group does not match
        let u = active(json!({"groups": [{"value": "g2", "display": "Admins-old"}]}));
        assert!(desired_state(&u, &policy(), now()).required.is_empty());
    }

    #[test]
    fn admin_role_requires_webauthn_and_grace_counts_from_since() {
        let mut u = active(json!({"roles": [{"value": "admin"}]}));
        let since = t("2024-05-31T00:00:00Z");
        u.requirement_since.insert(0, since);
        let d = desired_state(&u, &policy(), now());
        assert_eq!(d.required.len(), 1);
        assert_eq!(d.required[0].deadline, since + Duration::hours(72));
        assert_eq!(d.required[0].rule, 0);
    }

    #[test]
    fn contractor_requirements_and_forbids() {
        let u = active(json!({"userType": "Contractor"}));
        let d = desired_state(&u, &policy(), now());
        assert_eq!(d.required.len(), 1);
        assert_eq!(d.required[0].rule, 1);
        assert_eq!(
            d.required[0].types,
            vec![FactorType::Totp, FactorType::Webauthn]
        );
        assert_eq!(d.required[0].deadline, now());
        assert_eq!(d.forbidden, vec![FactorType::Sms, FactorType::Voice]);
        // two matching forbid rules: union without duplicates, in first-seen order
        let u = active(json!({"userType": "Contractor", "title": "Intern, summer"}));
        let d = desired_state(&u, &policy(), now());
        assert_eq!(
            d.forbidden,
            vec![FactorType::Sms, FactorType::Voice, FactorType::Email]
        );
        // both require rules at once
        let u = active(json!({"userType": "Contractor", "roles": [{"value": "admin"}]}));
        let rules: Vec<usize> = desired_state(&u, &policy(), now())
            .required
            .iter()
            .map(|r| r.rule)
            .collect();
        assert_eq!(rules, vec![0, 1]);
    }

    #[test]
    fn deactivated_suspends_until_revoke_after_then_revokes() {
        let since = t("2024-05-01T12:00:00Z");
        let u = UserFacts::new(
            user(json!({"active": false, "userType": "Contractor"})),
            Lifecycle::Deactivated { since },
        );
        let p = policy();
        let revoke_at = since + Duration::days(30);
        let d = desired_state(&u, &p, revoke_at - Duration::seconds(1));
        assert_eq!(d.factors, FactorDisposition::Suspend { revoke_at });
        assert!(d.end_sessions);
        // no requirements, forbids or stale checks for inactive users
        assert!(d.required.is_empty() && d.forbidden.is_empty() && d.stale.is_none());
        // the boundary itself revokes
        assert_eq!(
            desired_state(&u, &p, revoke_at).factors,
            FactorDisposition::Revoke
        );
        assert_eq!(
            desired_state(&u, &p, revoke_at + Duration::days(1)).factors,
            FactorDisposition::Revoke
        );
        // deactivated "now"
        let u = UserFacts::new(user(json!({})), Lifecycle::Deactivated { since: now() });
        assert_eq!(
            desired_state(&u, &p, now()).factors,
            FactorDisposition::Suspend {
                revoke_at: now() + Duration::days(30)
            }
        );
    }

    #[test]
    fn deactivated_revoke_and_keep_sessions() {
        let p = parse_policy("[deactivated]\nfactors = \"revoke\"\nsessions = \"keep\"\n").unwrap();
        let u = UserFacts::new(user(json!({})), Lifecycle::Deactivated { since: now() });
        let d = desired_state(&u, &p, now());
        assert_eq!(d.factors, FactorDisposition::Revoke);
        assert!(!d.end_sessions);
    }

    #[test]
    fn zero_revoke_after_revokes_at_once() {
        let p = parse_policy("[deactivated]\nrevoke_after = \"0s\"\n").unwrap();
        let u = UserFacts::new(user(json!({})), Lifecycle::Deactivated { since: now() });
        assert_eq!(
            desired_state(&u, &p, now()).factors,
            FactorDisposition::Revoke
        );
    }

    #[test]
    fn deleted_revokes_by_default() {
        let u = UserFacts::new(user(json!({})), Lifecycle::Deleted { since: now() });
        for p in [policy(), Policy::default()] {
            let d = desired_state(&u, &p, now());
            assert_eq!(d.factors, FactorDisposition::Revoke);
            assert!(d.end_sessions);
            assert!(d.required.is_empty() && d.forbidden.is_empty() && d.stale.is_none());
        }
    }

    #[test]
    fn deleted_with_suspend_uses_revoke_after_and_keep_sessions() {
        let p = parse_policy("[deactivated]\nrevoke_after = \"7d\"\n[deleted]\nfactors = \"suspend\"\nsessions = \"keep\"\n").unwrap();
        let since = t("2024-05-30T12:00:00Z");
        let u = UserFacts::new(user(json!({})), Lifecycle::Deleted { since });
        let d = desired_state(&u, &p, now());
        assert_eq!(
            d.factors,
            FactorDisposition::Suspend {
                revoke_at: since + Duration::days(7)
            }
        );
        assert!(!d.end_sessions);
        assert_eq!(
            desired_state(&u, &p, since + Duration::days(7)).factors,
            FactorDisposition::Revoke
        );
    }

    #[test]
    fn default_policy_for_each_lifecycle() {
        let p = Policy::default();
        let d = desired_state(&active(json!({"roles": [{"value": "admin"}]})), &p, now());
        assert_eq!(d.factors, FactorDisposition::Keep);
        assert!(d.required.is_empty() && d.forbidden.is_empty() && d.stale.is_none());
        let u = UserFacts::new(user(json!({})), Lifecycle::Deactivated { since: now() });
        let d = desired_state(&u, &p, now());
        assert_eq!(
            d.factors,
            FactorDisposition::Suspend {
                revoke_at: now() + Duration::days(30)
            }
        );
        assert!(d.end_sessions);
    }

    #[test]
    fn audit_only_flag_passes_through_every_branch() {
        let p = parse_policy(&format!("mode = \"audit-only\"\n{POLICY}")).unwrap();
        for lc in [
            Lifecycle::Active,
            Lifecycle::Deactivated { since: now() },
            Lifecycle::Deleted { since: now() },
        ] {
            let u = UserFacts::new(user(json!({"userType": "Contractor"})), lc);
            let d = desired_state(&u, &p, now());
            assert!(d.audit_only, "{lc:?}");
            // audit-only still decides everything
            assert_eq!(
                d,
                DesiredState {
                    audit_only: true,
                    ..desired_state(&u, &policy(), now())
                }
            );
        }
    }

    #[test]
    fn far_dates_saturate_instead_of_overflowing() {
        let p = parse_policy("[deactivated]\nrevoke_after = \"36500d\"\n[[require]]\nwho = 'userName pr'\nfactors = [\"totp\"]\ngrace = \"36500d\"\n").unwrap();
        let end = DateTime::<Utc>::MAX_UTC;
        let u = UserFacts::new(
            user(json!({})),
            Lifecycle::Deactivated {
                since: end - Duration::days(1),
            },
        );
        assert_eq!(
            desired_state(&u, &p, now()).factors,
            FactorDisposition::Suspend { revoke_at: end }
        );
        let d = desired_state(&active(json!({})), &p, end - Duration::days(1));
        assert_eq!(d.required[0].deadline, end);
        let _ = Utc.timestamp_opt(0, 0);
    }

    #[test]
    fn who_on_enterprise_and_missing_attributes() {
        let p = parse_policy(
            "[[forbid]]\nwho = 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq \"Sales\"'\nfactors = [\"sms\"]\n",
        )
        .unwrap();
        let u = active(
            json!({"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "sales"}}),
        );
        assert_eq!(
            desired_state(&u, &p, now()).forbidden,
            vec![FactorType::Sms]
        );
        assert!(desired_state(&active(json!({})), &p, now())
            .forbidden
            .is_empty());
    }
}
