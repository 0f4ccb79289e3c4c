//! Evaluates a filter AST against one SCIM resource in memory (RFC 7644 §3.4.2.2 semantics).
//! Used where a filter is checked against a single user (policy `who` rules, PATCH value
//! filters, tests); listing many resources goes through SQL in `directory/` instead.
//!
//! The caller supplies case sensitivity from the schema (`case_exact`); nothing here knows which
//! attributes exist. Attribute names match JSON keys case-insensitively.
//!
//! Semantics chosen where the RFC leaves room (keep `directory/`'s SQL in line with these):
//! - a multi-valued attribute matches if ANY element matches;
//! - `ne` is the negation of `eq`: `title ne "x"` matches a user without a title, and
//!   `emails.value ne "a@x"` matches when no email is `a@x`;
//! - `eq null` matches an absent or null attribute;
//! - a complex value compared directly (`emails eq "x"`, `manager eq "id"`) compares its `value`
//!   sub-attribute;
//! - an unqualified name not found at the top level is looked up in the extension objects
//!   (`employeeNumber` finds the enterprise one); a core-schema URN looks at the top level;
//! - values of another JSON type than the literal never match (`age eq "3"` vs `3`).

use std::cmp::Ordering;

use chrono::DateTime;
use serde_json::{Map, Number, Value};

use super::{AttrPath, CompValue, CompareOp, Filter};

/// Whether `resource` matches `filter`. `case_exact(path)` says whether string comparisons on
/// that attribute are case-sensitive; for paths inside a value filter it is called with the
/// full path (`emails[type eq "x"]` → `AttrPath { attr: "emails", sub_attr: Some("type") }`),
/// and for a complex value compared directly with its `value` sub-attribute.
pub fn matches(filter: &Filter, resource: &Value, case_exact: &dyn Fn(&AttrPath) -> bool) -> bool {
    eval(filter, resource, case_exact)
}

/// Whether one element of the multi-valued attribute `attr` matches the inner filter of a value
/// path (`type eq "work"` of `emails[type eq "work"]`). PATCH uses it to pick the elements a
/// `path` like `emails[type eq "work"].value` targets. A primitive element is seen as
/// `{"value": element}`.
pub fn matches_element(
    attr: &AttrPath,
    filter: &Filter,
    element: &Value,
    case_exact: &dyn Fn(&AttrPath) -> bool,
) -> bool {
    let inner_case = |p: &AttrPath| {
        case_exact(&AttrPath {
            urn: attr.urn.clone(),
            attr: attr.attr.clone(),
            sub_attr: Some(p.attr.clone()),
        })
    };
    if element.is_object() {
        eval(filter, element, &inner_case)
    } else {
        let mut wrapped = Map::new();
        wrapped.insert("value".to_string(), element.clone());
        eval(filter, &Value::Object(wrapped), &inner_case)
    }
}

/// The values at `path` in `resource`, with multi-valued attributes flattened to their elements
/// (`emails.value` → every email address; `emails` → every email object). Nulls are skipped.
pub fn values_at<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let mut out = Vec::new();
    let Some(top) = lookup_attr(resource, path.urn.as_deref(), &path.attr) else {
        return out;
    };
    match &path.sub_attr {
        None => flatten_into(top, &mut out),
        Some(sub) => {
            let mut parents = Vec::new();
            flatten_into(top, &mut parents);
            for parent in parents {
                if let Some(v) = get_ci(parent, sub) {
                    flatten_into(v, &mut out);
                }
            }
        }
    }
    out
}

fn eval(filter: &Filter, resource: &Value, case_exact: &dyn Fn(&AttrPath) -> bool) -> bool {
    match filter {
        Filter::And(l, r) => eval(l, resource, case_exact) && eval(r, resource, case_exact),
        Filter::Or(l, r) => eval(l, resource, case_exact) || eval(r, resource, case_exact),
        Filter::Not(inner) => !eval(inner, resource, case_exact),
        Filter::Present(path) => values_at(resource, path)
            .into_iter()
            .any(|v| is_present(v, 4)),
        Filter::Compare(path, CompareOp::Ne, lit) => {
            !compare(resource, path, CompareOp::Eq, lit, case_exact)
        }
        Filter::Compare(path, op, lit) => compare(resource, path, *op, lit, case_exact),
        Filter::ValuePath(path, inner) => values_at(resource, path)
            .into_iter()
            .any(|element| matches_element(path, inner, element, case_exact)),
    }
}

fn compare(
    resource: &Value,
    path: &AttrPath,
    op: CompareOp,
    lit: &CompValue,
    case_exact: &dyn Fn(&AttrPath) -> bool,
) -> bool {
    // A complex value stands for its `value` sub-attribute (`emails eq "x"`).
    let mut leaves: Vec<(&Value, bool)> = Vec::new();
    for v in values_at(resource, path) {
        if v.is_object() {
            let mut inner = Vec::new();
            if let Some(x) = get_ci(v, "value") {
                flatten_into(x, &mut inner);
            }
            leaves.extend(inner.into_iter().map(|x| (x, true)));
        } else {
            leaves.push((v, false));
        }
    }
    if let CompValue::Null = lit {
        return op == CompareOp::Eq && leaves.is_empty();
    }
    // case_exact is asked at most once per kind of leaf, and only for string literals.
    let mut exact_cache: [Option<bool>; 2] = [None, None];
    leaves.into_iter().any(|(v, via_value)| {
        let mut exact = || {
            *exact_cache[usize::from(via_value)].get_or_insert_with(|| {
                if via_value && path.sub_attr.is_none() {
                    case_exact(&AttrPath {
                        urn: path.urn.clone(),
                        attr: path.attr.clone(),
                        sub_attr: Some("value".to_string()),
                    })
                } else {
                    case_exact(path)
                }
            })
        };
        match (v, lit) {
            (Value::String(a), CompValue::String(b)) => compare_strings(a, op, b, exact()),
            (Value::Number(a), CompValue::Number(b)) => {
                compare_numbers(a, b).is_some_and(|o| ordered(op, o))
            }
            (Value::Bool(a), CompValue::Bool(b)) => op == CompareOp::Eq && a == b,
            _ => false,
        }
    })
}

fn ordered(op: CompareOp, o: Ordering) -> bool {
    match op {
        CompareOp::Eq => o == Ordering::Equal,
        CompareOp::Ne => o != Ordering::Equal,
        CompareOp::Gt => o == Ordering::Greater,
        CompareOp::Ge => o != Ordering::Less,
        CompareOp::Lt => o == Ordering::Less,
        CompareOp::Le => o != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

fn compare_strings(attr: &str, op: CompareOp, lit: &str, exact: bool) -> bool {
    if matches!(
        op,
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
    ) {
        if let (Ok(a), Ok(b)) = (
            DateTime::parse_from_rfc3339(attr),
            DateTime::parse_from_rfc3339(lit),
        ) {
            return ordered(op, a.cmp(&b));
        }
    }
    let (a, b) = if exact {
        (attr.to_string(), lit.to_string())
    } else {
        (attr.to_lowercase(), lit.to_lowercase())
    };
    match op {
        CompareOp::Eq => a == b,
        CompareOp::Ne => a != b,
        CompareOp::Co => a.contains(&b),
        CompareOp::Sw => a.starts_with(&b),
        CompareOp::Ew => a.ends_with(&b),
        _ => ordered(op, a.cmp(&b)),
    }
}

/// Integers compare exactly (across i64/u64), anything with a fraction as f64.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// RFC 7644: present means a non-empty value, or for a complex value a non-empty sub-value.
/// `depth` bounds the walk into nested JSON.
fn is_present(v: &Value, depth: u8) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
        Value::Array(a) if depth == 0 => !a.is_empty(),
        Value::Object(o) if depth == 0 => !o.is_empty(),
        Value::Array(a) => a.iter().any(|x| is_present(x, depth - 1)),
        Value::Object(o) => o.values().any(|x| is_present(x, depth - 1)),
    }
}

fn flatten_into<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Null => {}
        Value::Array(items) => out.extend(items.iter().filter(|x| !x.is_null())),
        v => out.push(v),
    }
}

/// The value of `attr` in the object selected by `urn` (see the module doc for the rules).
fn lookup_attr<'a>(resource: &'a Value, urn: Option<&str>, attr: &str) -> Option<&'a Value> {
    match urn {
        Some(urn) => match get_ci(resource, urn) {
            Some(ext) => get_ci(ext, attr),
            None if is_core_urn(urn) => get_ci(resource, attr),
            None => None,
        },
        None => get_ci(resource, attr).or_else(|| {
            let obj = resource.as_object()?;
            obj.iter()
                .filter(|(k, v)| is_urn(k) && v.is_object())
                .find_map(|(_, ext)| get_ci(ext, attr))
        }),
    }
}

fn is_urn(key: &str) -> bool {
    key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
}

fn is_core_urn(urn: &str) -> bool {
    const CORE: &str = "urn:ietf:params:scim:schemas:core:";
    urn.get(..CORE.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(CORE))
}

/// Key lookup in a JSON object: exact match first, then ASCII case-insensitive.
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse_filter;
    use super::*;
    use serde_json::json;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENT],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "00u1abcd",
            "userName": "Bjensen@Example.com",
            "displayName": "Babs Jensen",
            "name": {"givenName": "Barbara", "familyName": "Jensen", "middleName": null},
            "title": "",
            "nickName": null,
            "active": true,
            "userType": "Employee",
            "age": 42,
            "score": 2.5,
            "big": 18446744073709551615u64,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "phoneNumbers": [],
            "x509Certificates": [{}],
            "roles": [{"value": "admin"}, {"value": "auditor"}],
            "groups": [
                {"value": "g1", "display": "Admins", "$ref": "../Groups/g1"},
                {"value": "g2", "display": "Staff"}
            ],
            "tags": ["Blue", "green"],
            "meta": {"created": "2011-08-01T18:29:49.793Z", "lastModified": "2011-08-01T20:31:02+02:00"},
            ENT: {
                "employeeNumber": "701984",
                "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "John Smith"}
            }
        })
    }

    /// Case-sensitive only where the core schema says caseExact: id, externalId, $ref.
    fn schema_case(p: &AttrPath) -> bool {
        let full = match &p.sub_attr {
            Some(s) => format!("{}.{}", p.attr, s),
            None => p.attr.clone(),
        };
        ["id", "externalid", "groups.$ref"].contains(&full.to_lowercase().as_str())
    }

    fn m(filter: &str) -> bool {
        match parse_filter(filter) {
            Ok(f) => matches(&f, &user(), &schema_case),
            Err(e) => panic!("{filter}: {e}"),
        }
    }

    #[test]
    fn idp_lookups() {
        assert!(
            m(r#"userName eq "bjensen@example.com""#),
            "userName is caseExact=false"
        );
        assert!(m(r#"USERNAME eq "BJENSEN@EXAMPLE.COM""#));
        assert!(
            !m(r#"userName eq "bjensen""#),
            "eq is not a substring match"
        );
        assert!(m(r#"externalId eq "00u1abcd""#));
        assert!(!m(r#"externalId eq "00U1ABCD""#), "externalId is caseExact");
        assert!(m(r#"id eq "2819c223-7f76-453a-919d-413861904646""#));
        assert!(!m(r#"id eq "2819C223-7F76-453A-919D-413861904646""#));
        assert!(m(r#"displayName eq "babs jensen""#));
        assert!(m(
            r#"emails[type eq "work"].value eq "BJensen@example.com""#
        ));
        assert!(!m(
            r#"emails[type eq "home"].value eq "bjensen@example.com""#
        ));
        assert!(!m(r#"userName eq "0b9e3a5c-6f1d-4c7e-9a1b-2d3c4e5f6a7b""#));
    }

    #[test]
    fn every_operator_on_strings() {
        assert!(m(r#"displayName ne "Someone""#));
        assert!(!m(r#"displayName ne "babs JENSEN""#));
        assert!(m(r#"displayName co "S JEN""#));
        assert!(!m(r#"displayName co "xyz""#));
        assert!(m(r#"displayName sw "babs""#));
        assert!(!m(r#"displayName sw "Jensen""#));
        assert!(m(r#"displayName ew "JENSEN""#));
        assert!(!m(r#"displayName ew "Babs""#));
        assert!(m(r#"displayName gt "Babs""#));
        assert!(m(r#"displayName ge "babs jensen""#));
        assert!(
            m(r#"displayName lt "c""#),
            "case-folded: 'babs jensen' < 'c'"
        );
        assert!(m(r#"displayName le "BABS JENSEN""#));
        assert!(!m(r#"displayName lt "a""#));
        // case-exact co/sw/ew
        assert!(m(r#"externalId co "1ab""#));
        assert!(!m(r#"externalId co "1AB""#));
        assert!(!m(r#"externalId sw "00U""#));
    }

    #[test]
    fn numbers_booleans_and_types() {
        assert!(m("age eq 42"));
        assert!(m("age eq 42.0"));
        assert!(m("age gt 41.5 and age lt 43 and age ge 42 and age le 42"));
        assert!(!m("age gt 42"));
        assert!(m("score gt 2 and score lt 3"));
        assert!(m("big gt 9223372036854775807"));
        assert!(m("big eq 18446744073709551615"));
        assert!(!m("age co 4"), "co on a number never matches");
        assert!(
            !m(r#"age eq "42""#),
            "a string literal never matches a number"
        );
        assert!(m("active eq true"));
        assert!(m("active eq TRUE"));
        assert!(!m("active eq false"));
        assert!(m("active ne false"));
        assert!(!m("active gt false"), "gt on booleans is false");
        assert!(!m("active lt true"));
        assert!(!m(r#"active eq "true""#));
    }

    #[test]
    fn date_times_compare_as_times() {
        // 20:31:02+02:00 is 18:31:02Z, after 18:29:49.793Z but before 19:00Z.
        assert!(m(r#"meta.lastModified gt "2011-08-01T18:29:49.793Z""#));
        assert!(m(r#"meta.lastModified lt "2011-08-01T19:00:00Z""#));
        assert!(
            !m(r#"meta.lastModified gt "2011-08-01T19:00:00Z""#),
            "as strings '20:31' > '19:00'"
        );
        assert!(m(r#"meta.created ge "2011-08-01T18:29:49.793+00:00""#));
        assert!(m(r#"meta.created le "2011-08-01T18:29:49.793Z""#));
        assert!(m(r#"meta.created gt "2011-01-01T00:00:00Z""#));
        assert!(!m(r#"meta.created lt "2011-01-01T00:00:00Z""#));
    }

    #[test]
    fn presence() {
        assert!(m("userName pr"));
        assert!(m("name pr"));
        assert!(m("name.givenName pr"));
        assert!(!m("name.middleName pr"), "null is not present");
        assert!(!m("title pr"), "empty string is not present");
        assert!(!m("nickName pr"));
        assert!(!m("phoneNumbers pr"), "empty array is not present");
        assert!(
            !m("x509Certificates pr"),
            "array of empty objects is not present"
        );
        assert!(!m("nothing pr"));
        assert!(m("emails pr"));
        assert!(m("emails.primary pr"));
        assert!(m("active pr"));
        assert!(m(&format!("{ENT}:manager pr")));
        assert!(m("not (title pr)"));
    }

    #[test]
    fn multi_valued_any_element() {
        assert!(m(r#"groups.display eq "Admins" or roles.value eq "admin""#));
        assert!(m(r#"groups.display eq "admins""#));
        assert!(m(r#"roles.value eq "auditor""#));
        assert!(!m(r#"roles.value eq "owner""#));
        assert!(
            m(r#"emails eq "babs@jensen.org""#),
            "complex compared by its value"
        );
        assert!(m(r#"emails co "jensen.org""#));
        assert!(m(r#"emails.type eq "home""#));
        assert!(m(r#"tags eq "blue""#));
        assert!(
            m(r#"tags[value eq "green"]"#),
            "primitive elements are seen as {{value}}"
        );
        assert!(m(r#"emails[type eq "work" and primary eq true]"#));
        assert!(
            !m(r#"emails[type eq "home" and primary eq true]"#),
            "both on the same element"
        );
        assert!(m(r#"emails[type eq "home"] and emails[primary eq true]"#));
        assert!(m(r#"emails[not (type eq "work")]"#));
        assert!(!m(r#"groups[display eq "Admins" and value eq "g2"]"#));
        // ne is "not eq": nobody has role owner, but someone has role admin.
        assert!(m(r#"roles.value ne "owner""#));
        assert!(!m(r#"roles.value ne "admin""#));
        assert!(m(r#"groups.$ref eq "../Groups/g1""#));
        assert!(
            !m(r#"groups.$ref eq "../groups/G1""#),
            "caseExact via full path"
        );
    }

    #[test]
    fn extension_and_urn_paths() {
        assert!(m(&format!("{ENT}:employeeNumber eq \"701984\"")));
        assert!(m(&format!(
            "{ENT}:manager.value eq \"26118915-6090-4610-87e4-49d8ca9f808d\""
        )));
        assert!(m(&format!(
            "{ENT}:manager eq \"26118915-6090-4610-87e4-49d8ca9f808d\""
        )));
        assert!(m(&format!(
            "{}:employeenumber eq \"701984\"",
            ENT.to_uppercase()
        )));
        assert!(
            m(r#"employeeNumber eq "701984""#),
            "unqualified falls back to extensions"
        );
        assert!(m(r#"manager eq "26118915-6090-4610-87e4-49d8ca9f808d""#));
        assert!(m(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "bjensen@example.com""#
        ));
        assert!(!m(r#"urn:example:other:userName eq "bjensen@example.com""#));
    }

    #[test]
    fn null_and_absent() {
        assert!(m("nickName eq null"));
        assert!(m("nothing eq null"));
        assert!(!m("userName eq null"));
        assert!(m("userName ne null"));
        assert!(!m("nickName ne null"));
        assert!(!m(r#"nothing eq "x""#));
        assert!(m(r#"nothing ne "x""#));
        assert!(!m("nothing gt 1"));
        assert!(!m("age gt null"));
    }

    #[test]
    fn logic_and_precedence() {
        assert!(m(
            r#"userType eq "Contractor" or active eq true and age eq 42"#
        ));
        assert!(!m(
            r#"(userType eq "Contractor" or active eq true) and age eq 1"#
        ));
        assert!(m(
            r#"userType eq "Contractor" or active eq false or age eq 42"#
        ));
        assert!(!m(r#"not (userType eq "Employee")"#));
        assert!(m(
            r#"not (userType eq "Contractor") and not (not (active eq true))"#
        ));
    }

    #[test]
    fn value_filter_case_is_asked_with_the_full_path() {
        let f = parse_filter(r#"emails[type eq "WORK"].value eq "x""#).expect("parses");
        let asked = std::cell::RefCell::new(Vec::new());
        let ce = |p: &AttrPath| {
            asked.borrow_mut().push(p.to_string());
            false
        };
        assert!(!matches(&f, &user(), &ce));
        let asked = asked.into_inner();
        assert!(asked.contains(&"emails.type".to_string()), "{asked:?}");
        assert!(asked.contains(&"emails.value".to_string()), "{asked:?}");
    }

    #[test]
    fn odd_resources_do_not_panic() {
        let f =
            parse_filter(r#"a eq "x" or a.b pr or a[b eq 1] or urn:x:y:a gt 1"#).expect("parses");
        for r in [
            json!(null),
            json!([]),
            json!("a"),
            json!({"a": [[1]]}),
            json!({"a": {"b": [null]}}),
            json!({"urn:x:y": 5}),
        ] {
            assert!(!matches(&f, &r, &|_| false), "{r}");
        }
        // Deeply nested JSON: presence looks only a few levels down.
        let mut deep = json!("leaf");
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert!(matches(
            &parse_filter("a pr").expect("parses"),
            &json!({"a": deep}),
            &|_| false
        ));
    }
}
