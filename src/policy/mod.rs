//! The tenant policy: the TOML file of DESIGN.md parsed into typed rules (`parse_policy`, with
//! line-precise errors), its defaults, and `desired_state`, the pure function saying what a
//! user's factors and sessions should be. Versioned storage of policies is in `store.rs`.
//!
//! Not here: comparing the desired state with a factor store or acting on it (`engine/`).

pub mod change;
pub mod desired;
pub mod parse;
pub mod store;

use chrono::Duration;

use crate::factors::FactorType;
use crate::scim::filter::Filter;

pub use crate::factors::LinkBy;
pub use desired::{
    desired_state, DesiredState, FactorDisposition, Lifecycle, Requirement, UserFacts,
};
pub use parse::{format_duration, parse_duration, parse_policy, policy_hash, PolicyError};
pub use store::{
    current_policy, ensure_policy, get_version, list_versions, set_policy, tenant_user_ids,
    PolicyStoreError, PolicyVersion,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Decide, plan and record everything; execute nothing.
    AuditOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorAction {
    Suspend,
    Revoke,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAction {
    Revoke,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleAction {
    Report,
    Suspend,
    Revoke,
}

/// `[deactivated]`: what happens when `active` becomes false.
#[derive(Debug, Clone, PartialEq)]
pub struct DeactivatedRule {
    pub factors: FactorAction,
    pub sessions: SessionAction,
    /// Suspended factors are revoked this long after the deactivation; a reactivation before
    /// then resumes them.
    pub revoke_after: Duration,
}

/// `[deleted]`. With `factors = "suspend"` the factors follow `[deactivated] revoke_after`
/// (counted from the deletion): a deleted user cannot come back, so suspension only delays.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedRule {
    pub factors: FactorAction,
    pub sessions: SessionAction,
}

/// `[[require]]`: users matching `who` must hold a factor of one of `factors` within `grace`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequireRule {
    pub who: Filter,
    pub who_text: String,
    pub factors: Vec<FactorType>,
    pub grace: Duration,
}

/// `[[forbid]]`: users matching `who` must not hold factors of these types.
#[derive(Debug, Clone, PartialEq)]
pub struct ForbidRule {
    pub who: Filter,
    pub who_text: String,
    pub factors: Vec<FactorType>,
}

/// `[stale]`: factors unused for `unused_for` (counted from last use, or from enrollment when
/// never used) get `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleRule {
    pub unused_for: Duration,
    pub action: StaleAction,
}

/// `[guard]`: the blast-radius bounds, per sliding 15-minute window.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardRule {
    pub max_destructive_per_15m: u64,
    pub max_destructive_percent_per_15m: f64,
    /// The percentage bound only counts past this many destructive actions.
    pub percent_applies_above: u64,
}

impl Default for GuardRule {
    fn default() -> Self {
        GuardRule {
            max_destructive_per_15m: 50,
            max_destructive_percent_per_15m: 5.0,
            percent_applies_above: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    pub link_by: LinkBy,
    pub deactivated: DeactivatedRule,
    pub deleted: DeletedRule,
    pub require: Vec<RequireRule>,
    pub forbid: Vec<ForbidRule>,
    pub stale: Option<StaleRule>,
    pub guard: GuardRule,
}

/// Default `[require] grace` when a rule leaves it out.
pub const DEFAULT_GRACE_HOURS: i64 = 72;
/// Default `[deactivated] revoke_after`.
pub const DEFAULT_REVOKE_AFTER_DAYS: i64 = 30;

impl Default for DeactivatedRule {
    fn default() -> Self {
        DeactivatedRule {
            factors: FactorAction::Suspend,
            sessions: SessionAction::Revoke,
            revoke_after: Duration::days(DEFAULT_REVOKE_AFTER_DAYS),
        }
    }
}

impl Default for DeletedRule {
    fn default() -> Self {
        DeletedRule {
            factors: FactorAction::Revoke,
            sessions: SessionAction::Revoke,
        }
    }
}

/// The policy of a tenant that has none: enforce, link by userName, deactivation suspends
/// factors and ends sessions (revoked after 30 days), deletion revokes everything, no
/// requirements, guard 50 / 5 % / 20.
impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Enforce,
            link_by: LinkBy::UserName,
            deactivated: DeactivatedRule::default(),
            deleted: DeletedRule::default(),
            require: Vec::new(),
            forbid: Vec::new(),
            stale: None,
            guard: GuardRule::default(),
        }
    }
}

impl Policy {
    pub fn audit_only(&self) -> bool {
        self.mode == Mode::AuditOnly
    }
}

/// `Policy::default()` written out as a policy file (what `policy show` prints for a tenant
/// without a policy, and a starting point to edit).
pub const DEFAULT_POLICY_TOML: &str = r#"mode = "enforce"

[link]
by = "userName"

[deactivated]
factors = "suspend"
sessions = "revoke"
revoke_after = "30d"

[deleted]
factors = "revoke"
sessions = "revoke"

[guard]
max_destructive_per_15m = 50
max_destructive_percent_per_15m = 5
percent_applies_above = 20
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_text_is_the_default_policy() {
        assert_eq!(
            parse_policy(DEFAULT_POLICY_TOML).unwrap(),
            Policy::default()
        );
    }
}
