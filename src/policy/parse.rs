//! Policy TOML → `Policy`, with every error pinned to the line and column of the offending value
//! (unknown keys, wrong types, bad durations, unknown factor types, `who` filters that do not
//! parse), plus the policy hash and the duration syntax ("90s", "15m", "72h", "30d", "2w",
//! compounds like "1d12h").
//!
//! Not here: storage (`store.rs`), evaluation (`desired.rs`).

use std::ops::Range;

use chrono::Duration;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::{
    DeactivatedRule, DeletedRule, FactorAction, ForbidRule, GuardRule, Mode, Policy, RequireRule,
    SessionAction, StaleAction, StaleRule, DEFAULT_GRACE_HOURS,
};
use crate::factors::{FactorType, LinkBy};
use crate::scim::filter::Filter;

/// A problem in a policy file, 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Hex SHA-256 of the policy text, as stored with each version and printed in reports.
pub fn policy_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Durations are at most 100 years: far beyond any sane policy, far from chrono's limits.
const MAX_DURATION_SECS: i64 = 100 * 366 * 86_400;

/// "90s", "15m", "72h", "30d", "2w", or a sequence of them ("1d12h"). Zero is allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "invalid duration {text:?}: write a number and a unit, like \"90s\", \"15m\", \"72h\", \"30d\" or \"2w\""
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut num: Option<i64> = None;
    for c in t.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = num.unwrap_or(0);
            num = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(d as i64))
                    .filter(|n| *n <= MAX_DURATION_SECS)
                    .ok_or_else(|| format!("duration {text:?} is too long (at most 100 years)"))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|s| s.checked_add(total))
            .filter(|s| *s <= MAX_DURATION_SECS)
            .ok_or_else(|| format!("duration {text:?} is too long (at most 100 years)"))?;
    }
    if num.is_some() {
        return Err(bad());
    }
    Ok(Duration::seconds(total))
}

/// The shortest spelling `parse_duration` reads back: "30d", "72h", "1d12h" → "36h".
pub fn format_duration(d: Duration) -> String {
    let s = d.num_seconds();
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s != 0 && s % size == 0 {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

// The file as written, before meaning is checked. Strings that need checking keep their span.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<Spanned<String>>,
    link: Option<RawLink>,
    deactivated: Option<RawDeactivated>,
    deleted: Option<RawDeleted>,
    #[serde(default)]
    require: Vec<Spanned<RawRequire>>,
    #[serde(default)]
    forbid: Vec<Spanned<RawForbid>>,
    stale: Option<Spanned<RawStale>>,
    guard: Option<RawGuard>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    by: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeactivated {
    factors: Option<Spanned<String>>,
    sessions: Option<Spanned<String>>,
    revoke_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeleted {
    factors: Option<Spanned<String>>,
    sessions: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    who: Option<Spanned<String>>,
    factors: Option<Spanned<Vec<Spanned<String>>>>,
    grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForbid {
    who: Option<Spanned<String>>,
    factors: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStale {
    unused_for: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    max_destructive_per_15m: Option<Spanned<i64>>,
    max_destructive_percent_per_15m: Option<Spanned<f64>>,
    percent_applies_above: Option<Spanned<i64>>,
}

/// Collects errors with their positions while the checked policy is built.
struct Checker<'t> {
    text: &'t str,
    errors: Vec<PolicyError>,
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // A span never splits a character, but be safe: back off to a char boundary.
        let mut o = offset;
        while o > 0 && !self.text.is_char_boundary(o) {
            o -= 1;
        }
        let before = &self.text[..o];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(PolicyError {
            line,
            column,
            message: message.into(),
        });
    }

    fn choice<T: Copy>(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(v) = value else { return default };
        match options
            .iter()
            .find(|(name, _)| *name == v.get_ref().as_str())
        {
            Some((_, t)) => *t,
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
                self.error(
                    v.span(),
                    format!(
                        "{key} = {:?} is not one of {}",
                        v.get_ref(),
                        names.join(", ")
                    ),
                );
                default
            }
        }
    }

    fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.error(v.span(), format!("{key}: {e}"));
                default
            }
        }
    }

    fn who(
        &mut self,
        value: &Option<Spanned<String>>,
        table_span: Range<usize>,
        table: &str,
    ) -> Option<(Filter, String)> {
        let Some(v) = value else {
            self.error(
                table_span,
                format!("[[{table}]] needs `who`, a SCIM filter over the user"),
            );
            return None;
        };
        match crate::scim::filter::parse_filter(v.get_ref()) {
            Ok(f) => {
                // An attribute the User schema does not have never matches: a rule that silently
                // applies to no one is worse than an error.
                if let Err(message) = check_attributes(&f) {
                    self.error(v.span(), format!("who: {message}"));
                    return None;
                }
                Some((f, v.get_ref().clone()))
            }
            Err(e) => {
                self.error(v.span(), format!("who: invalid SCIM filter: {}", e.detail));
                None
            }
        }
    }

    fn factor_list(
        &mut self,
        value: &Option<Spanned<Vec<Spanned<String>>>>,
        table_span: Range<usize>,
        table: &str,
    ) -> Vec<FactorType> {
        let Some(list) = value else {
            self.error(
                table_span,
                format!("[[{table}]] needs `factors`, a list of factor types"),
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.error(
                list.span(),
                format!("[[{table}]] factors: the list is empty"),
            );
        }
        let mut out = Vec::new();
        for item in list.get_ref() {
            match item.get_ref().parse::<FactorType>() {
                Ok(t) if out.contains(&t) => {}
                Ok(t) => out.push(t),
                Err(e) => self.error(item.span(), e),
            }
        }
        out
    }
}

/// Every attribute path in a `who` filter must name a User attribute. The parser bounds the
/// filter's depth, so this recursion is bounded too.
fn check_attributes(f: &Filter) -> Result<(), String> {
    use crate::scim::filter::AttrPath;
    use crate::scim::schema::{ResourceKind, SchemaRegistry};
    let check = |p: &AttrPath| {
        SchemaRegistry::get()
            .resolve(ResourceKind::User, p)
            .map(|_| ())
            .map_err(|e| e.detail)
    };
    match f {
        Filter::Present(p) | Filter::Compare(p, _, _) => check(p),
        Filter::Not(inner) => check_attributes(inner),
        Filter::And(a, b) | Filter::Or(a, b) => {
            check_attributes(a)?;
            check_attributes(b)
        }
        Filter::ValuePath(outer, inner) => {
            check(outer)?;
            // Paths inside the brackets are sub-attributes of one element of `outer`.
            let mut stack = vec![inner.as_ref()];
            while let Some(g) = stack.pop() {
                match g {
                    Filter::Present(p) | Filter::Compare(p, _, _) => check(&AttrPath {
                        urn: outer.urn.clone(),
                        attr: outer.attr.clone(),
                        sub_attr: Some(p.attr.clone()),
                    })?,
                    Filter::Not(x) => stack.push(x),
                    Filter::And(a, b) | Filter::Or(a, b) => {
                        stack.push(a);
                        stack.push(b);
                    }
                    Filter::ValuePath(..) => {
                        return Err("nested [ ] filters are not allowed".into())
                    }
                }
            }
            Ok(())
        }
    }
}

const FACTOR_ACTIONS: &[(&str, FactorAction)] = &[
    ("suspend", FactorAction::Suspend),
    ("revoke", FactorAction::Revoke),
];
const SESSION_ACTIONS: &[(&str, SessionAction)] = &[
    ("revoke", SessionAction::Revoke),
    ("keep", SessionAction::Keep),
];

/// Parses and checks a policy. On failure, every problem found, in file order (a TOML syntax
/// or type error stops at the first one, as the TOML parser does).
pub fn parse_policy(text: &str) -> Result<Policy, Vec<PolicyError>> {
    let mut ck = Checker {
        text,
        errors: Vec::new(),
    };
    let raw: RawPolicy = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            ck.error(span, e.message().trim().to_string());
            return Err(ck.errors);
        }
    };
    let defaults = Policy::default();

    let mode = ck.choice(
        &raw.mode,
        "mode",
        &[("enforce", Mode::Enforce), ("audit-only", Mode::AuditOnly)],
        defaults.mode,
    );

    let link_options: Vec<(&str, LinkBy)> = LinkBy::ALL.iter().map(|l| (l.as_str(), *l)).collect();
    let link_by = match &raw.link {
        Some(l) => ck.choice(&l.by, "link.by", &link_options, defaults.link_by),
        None => defaults.link_by,
    };

    let deactivated = match &raw.deactivated {
        None => defaults.deactivated.clone(),
        Some(d) => {
            let def = DeactivatedRule::default();
            DeactivatedRule {
                factors: ck.choice(
                    &d.factors,
                    "deactivated.factors",
                    FACTOR_ACTIONS,
                    def.factors,
                ),
                sessions: ck.choice(
                    &d.sessions,
                    "deactivated.sessions",
                    SESSION_ACTIONS,
                    def.sessions,
                ),
                revoke_after: ck.duration(
                    &d.revoke_after,
                    "deactivated.revoke_after",
                    def.revoke_after,
                ),
            }
        }
    };

    let deleted = match &raw.deleted {
        None => defaults.deleted.clone(),
        Some(d) => {
            let def = DeletedRule::default();
            DeletedRule {
                factors: ck.choice(&d.factors, "deleted.factors", FACTOR_ACTIONS, def.factors),
                sessions: ck.choice(
                    &d.sessions,
                    "deleted.sessions",
                    SESSION_ACTIONS,
                    def.sessions,
                ),
            }
        }
    };

    let mut require = Vec::new();
    for r in &raw.require {
        let span = r.span();
        let r = r.get_ref();
        let who = ck.who(&r.who, span.clone(), "require");
        let factors = ck.factor_list(&r.factors, span, "require");
        let grace = ck.duration(&r.grace, "grace", Duration::hours(DEFAULT_GRACE_HOURS));
        if let Some((who, who_text)) = who {
            require.push(RequireRule {
                who,
                who_text,
                factors,
                grace,
            });
        }
    }

    let mut forbid = Vec::new();
    for r in &raw.forbid {
        let span = r.span();
        let r = r.get_ref();
        let who = ck.who(&r.who, span.clone(), "forbid");
        let factors = ck.factor_list(&r.factors, span, "forbid");
        if let Some((who, who_text)) = who {
            forbid.push(ForbidRule {
                who,
                who_text,
                factors,
            });
        }
    }

    let stale = raw.stale.as_ref().map(|s| {
        let span = s.span();
        let s = s.get_ref();
        let unused_for = match &s.unused_for {
            None => {
                ck.error(span, "[stale] needs `unused_for`, a duration like \"90d\"");
                Duration::days(90)
            }
            Some(v) => {
                let d = ck.duration(&s.unused_for, "stale.unused_for", Duration::days(90));
                if d <= Duration::zero() {
                    ck.error(v.span(), "stale.unused_for must be longer than zero");
                }
                d
            }
        };
        let action = ck.choice(
            &s.action,
            "stale.action",
            &[
                ("report", StaleAction::Report),
                ("suspend", StaleAction::Suspend),
                ("revoke", StaleAction::Revoke),
            ],
            StaleAction::Report,
        );
        StaleRule { unused_for, action }
    });

    let guard = match &raw.guard {
        None => defaults.guard.clone(),
        Some(g) => {
            let def = GuardRule::default();
            let count = |ck: &mut Checker, v: &Option<Spanned<i64>>, key: &str, d: u64| match v {
                None => d,
                Some(v) => match u64::try_from(*v.get_ref()) {
                    Ok(n) => n,
                    Err(_) => {
                        ck.error(v.span(), format!("guard.{key} must be zero or more"));
                        d
                    }
                },
            };
            let max = count(
                &mut ck,
                &g.max_destructive_per_15m,
                "max_destructive_per_15m",
                def.max_destructive_per_15m,
            );
            let above = count(
                &mut ck,
                &g.percent_applies_above,
                "percent_applies_above",
                def.percent_applies_above,
            );
            let percent = match &g.max_destructive_percent_per_15m {
                None => def.max_destructive_percent_per_15m,
                Some(v) => {
                    let p = *v.get_ref();
                    if !(0.0..=100.0).contains(&p) {
                        ck.error(
                            v.span(),
                            "guard.max_destructive_percent_per_15m must be between 0 and 100",
                        );
                        def.max_destructive_percent_per_15m
                    } else {
                        p
                    }
                }
            };
            GuardRule {
                max_destructive_per_15m: max,
                max_destructive_percent_per_15m: percent,
                percent_applies_above: above,
            }
        }
    };

    if !ck.errors.is_empty() {
        ck.errors.sort_by_key(|e| (e.line, e.column));
        return Err(ck.errors);
    }
    Ok(Policy {
        mode,
        link_by,
        deactivated,
        deleted,
        require,
        forbid,
        stale,
        guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"mode = "enforce"              # or "audit-only"

[link]
by = "userName"

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

[[forbid]]
who = 'userType eq "Contractor"'
factors = ["sms", "voice"]

[stale]
unused_for = "90d"
action = "report"

[guard]
max_destructive_per_15m = 50
max_destructive_percent_per_15m = 5
percent_applies_above = 20
"#;

    fn errs(text: &str) -> Vec<PolicyError> {
        parse_policy(text).expect_err("policy should be rejected")
    }

    fn one(text: &str) -> PolicyError {
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn design_example_parses() {
        let p = parse_policy(FULL).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.link_by, LinkBy::UserName);
        assert_eq!(p.deactivated, DeactivatedRule::default());
        assert_eq!(p.deleted, DeletedRule::default());
        assert_eq!(p.require.len(), 1);
        assert_eq!(p.require[0].factors, vec![FactorType::Webauthn]);
        assert_eq!(p.require[0].grace, Duration::hours(72));
        assert_eq!(
            p.require[0].who_text,
            r#"groups.display eq "Admins" or roles.value eq "admin""#
        );
        assert!(matches!(p.require[0].who, Filter::Or(..)));
        assert_eq!(
            p.forbid[0].factors,
            vec![FactorType::Sms, FactorType::Voice]
        );
        assert_eq!(
            p.stale,
            Some(StaleRule {
                unused_for: Duration::days(90),
                action: StaleAction::Report
            })
        );
        assert_eq!(p.guard, GuardRule::default());
    }

    #[test]
    fn empty_file_is_the_default_policy() {
        assert_eq!(parse_policy("").unwrap(), Policy::default());
        assert_eq!(parse_policy("# nothing\n").unwrap(), Policy::default());
    }

    #[test]
    fn defaults_are_conservative() {
        let p = Policy::default();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.deactivated.factors, FactorAction::Suspend);
        assert_eq!(p.deactivated.sessions, SessionAction::Revoke);
        assert_eq!(p.deactivated.revoke_after, Duration::days(30));
        assert_eq!(p.deleted.factors, FactorAction::Revoke);
        assert_eq!(p.deleted.sessions, SessionAction::Revoke);
        assert_eq!(p.guard.max_destructive_per_15m, 50);
        assert_eq!(p.guard.max_destructive_percent_per_15m, 5.0);
        assert_eq!(p.guard.percent_applies_above, 20);
        assert!(p.stale.is_none() && p.require.is_empty() && p.forbid.is_empty());
    }

    #[test]
    fn partial_sections_take_defaults_for_missing_keys() {
        let p = parse_policy("mode = \"audit-only\"\n[deactivated]\nfactors = \"revoke\"\n[guard]\npercent_applies_above = 3\n[[require]]\nwho = 'userType eq \"x\"'\nfactors = [\"totp\", \"webauthn\", \"totp\"]\n").unwrap();
        assert!(p.audit_only());
        assert_eq!(p.deactivated.factors, FactorAction::Revoke);
        assert_eq!(p.deactivated.sessions, SessionAction::Revoke);
        assert_eq!(p.deactivated.revoke_after, Duration::days(30));
        assert_eq!(p.guard.percent_applies_above, 3);
        assert_eq!(p.guard.max_destructive_per_15m, 50);
        assert_eq!(p.require[0].grace, Duration::hours(DEFAULT_GRACE_HOURS));
        assert_eq!(
            p.require[0].factors,
            vec![FactorType::Totp, FactorType::Webauthn]
        );
        let p = parse_policy("[guard]\nmax_destructive_percent_per_15m = 2.5\n[stale]\nunused_for = \"1w\"\n[link]\nby = \"emails.value\"\n").unwrap();
        assert_eq!(p.guard.max_destructive_percent_per_15m, 2.5);
        assert_eq!(p.stale.unwrap().action, StaleAction::Report);
        assert_eq!(p.link_by, LinkBy::EmailsValue);
    }

    #[test]
    fn bad_who_filter_reports_its_line() {
        let text = FULL.replace(r#"'userType eq "Contractor"'"#, r#"'userType eq'"#);
        let e = one(&text);
        assert_eq!((e.line, e.column), (21, 7), "{e:?}");
        assert!(e.message.contains("who"), "{e:?}");
    }

    #[test]
    fn who_naming_an_unknown_attribute_is_an_error() {
        let text = FULL.replace("groups.display", "group.display");
        let e = one(&text);
        assert_eq!(e.line, 16, "{e:?}");
        assert!(e.message.contains("group.display"), "{e:?}");
        let e = one("[[forbid]]\nwho = 'emails[tpye eq \"work\"]'\nfactors = [\"sms\"]\n");
        assert_eq!(e.line, 2, "{e:?}");
        assert!(parse_policy("[[forbid]]\nwho = 'emails[type eq \"work\" and value ew \"@x.com\"]'\nfactors = [\"sms\"]\n").is_ok());
        assert!(parse_policy("[[forbid]]\nwho = 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq \"x\"'\nfactors = [\"sms\"]\n").is_ok());
    }

    #[test]
    fn unknown_factor_type_reports_its_position() {
        let text = FULL.replace(r#"["sms", "voice"]"#, r#"["sms", "pigeon"]"#);
        let e = one(&text);
        assert_eq!((e.line, e.column), (22, 19), "{e:?}");
        assert!(e.message.contains("pigeon"), "{e:?}");
    }

    #[test]
    fn bad_duration_reports_its_line() {
        let text = FULL.replace(r#"revoke_after = "30d""#, r#"revoke_after = "30 days""#);
        let e = one(&text);
        assert_eq!((e.line, e.column), (9, 16), "{e:?}");
        assert!(e.message.contains("revoke_after"), "{e:?}");
    }

    #[test]
    fn unknown_key_reports_its_line() {
        let text = FULL.replace(
            "sessions = \"revoke\"\nrevoke_after",
            "session = \"revoke\"\nrevoke_after",
        );
        let e = one(&text);
        assert_eq!(e.line, 8, "{e:?}");
        assert!(e.message.contains("session"), "{e:?}");
        let e = one("mode = \"enforce\"\nfoo = 1\n");
        assert_eq!(e.line, 2, "{e:?}");
        let e = one("[guard]\nmax_destructive_per_15m = 5\nmax_destructive = 1\n");
        assert_eq!(e.line, 3, "{e:?}");
        let e = one("[colour]\nx = 1\n");
        assert_eq!(e.line, 1, "{e:?}");
    }

    #[test]
    fn wrong_type_reports_its_line() {
        let e = one("[guard]\n\nmax_destructive_per_15m = \"fifty\"\n");
        assert_eq!(e.line, 3, "{e:?}");
        let e = one("[[require]]\nwho = 'userType eq \"x\"'\nfactors = \"webauthn\"\n");
        assert_eq!(e.line, 3, "{e:?}");
        let e =
            one("[[require]]\nwho = 'userType eq \"x\"'\nfactors = [\"webauthn\"]\ngrace = 72\n");
        assert_eq!(e.line, 4, "{e:?}");
        let e = one("mode = true\n");
        assert_eq!(e.line, 1, "{e:?}");
    }

    #[test]
    fn toml_syntax_error_reports_its_line() {
        let e = one("mode = \"enforce\"\n\n[deleted\nfactors = \"revoke\"\n");
        assert_eq!(e.line, 3, "{e:?}");
    }

    #[test]
    fn bad_choices_all_reported_in_order() {
        let text = "mode = \"dry-run\"\n[link]\nby = \"mail\"\n[deleted]\nfactors = \"shred\"\nsessions = \"end\"\n[stale]\nunused_for = \"90d\"\naction = \"delete\"\n";
        let e = errs(text);
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 3, 5, 6, 9], "{e:?}");
        assert!(e[0].message.contains("audit-only"));
        assert!(e[1].message.contains("employeeNumber"));
    }

    #[test]
    fn missing_required_keys() {
        let e = errs("\n[[require]]\nfactors = [\"webauthn\"]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("who"));
        assert_eq!(e[0].line, 2);
        let e = one("[[forbid]]\nwho = 'userType eq \"x\"'\n");
        assert!(e.message.contains("factors"));
        let e = one("[[forbid]]\nwho = 'userType eq \"x\"'\nfactors = []\n");
        assert!(e.message.contains("empty") && e.line == 3, "{e:?}");
        let e = one("[stale]\naction = \"suspend\"\n");
        assert!(e.message.contains("unused_for"), "{e:?}");
        let e = one("[stale]\nunused_for = \"0s\"\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn guard_bounds() {
        let e = one("[guard]\nmax_destructive_per_15m = -1\n");
        assert_eq!(e.line, 2);
        let e = one("[guard]\nmax_destructive_percent_per_15m = 101\n");
        assert_eq!(e.line, 2);
        let e = one("[guard]\npercent_applies_above = -3\n");
        assert_eq!(e.line, 2);
        assert_eq!(
            parse_policy("[guard]\nmax_destructive_per_15m = 0\n")
                .unwrap()
                .guard
                .max_destructive_per_15m,
            0
        );
    }

    #[test]
    fn columns_count_characters() {
        let e = one("# é\nmode = \"ünknown\"\n");
        assert_eq!((e.line, e.column), (2, 8), "{e:?}");
        let e = one("mode = 'é' ; bad\n");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::seconds(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::minutes(15));
        assert_eq!(parse_duration("72h").unwrap(), Duration::hours(72));
        assert_eq!(parse_duration("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_duration("2w").unwrap(), Duration::days(14));
        assert_eq!(parse_duration("1d12h").unwrap(), Duration::hours(36));
        assert_eq!(parse_duration(" 0s ").unwrap(), Duration::zero());
        for bad in [
            "",
            "30",
            "d",
            "30x",
            "-5d",
            "1.5h",
            "h30",
            "30 d",
            "99999999999999999999s",
            "36600000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::hours(72)), "3d");
        for d in ["30d", "3d", "15m", "90s", "2w", "36h", "0s", "61m"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            policy_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(policy_hash(FULL), policy_hash(&FULL.replace("30d", "31d")));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = parse_policy(&text);
        }
        #[test]
        fn duration_never_panics(text in "[0-9smhdw ]{0,30}") {
            let _ = parse_duration(&text);
        }
    }
}
