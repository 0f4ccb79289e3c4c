//! AST → canonical text: lowercase keywords, single spaces, the fewest parentheses that keep the
//! tree's shape, strings as JSON. `parse_filter(&f.to_string()) == Ok(f)` for every AST the
//! parser produces (pinned by a property test). Not a pretty-printer for people.

use std::fmt::{self, Display, Formatter, Write};

use super::{AttrPath, CompValue, CompareOp, Filter, PatchPath};

impl Display for CompareOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Display for AttrPath {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(sub) = &self.sub_attr {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

impl Display for CompValue {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            CompValue::Null => f.write_str("null"),
            CompValue::Bool(b) => write!(f, "{b}"),
            CompValue::Number(n) => {
                if let Some(i) = n.as_i64() {
                    write!(f, "{i}")
                } else if let Some(u) = n.as_u64() {
                    write!(f, "{u}")
                } else {
                    // `{:?}` is the shortest text that reads back to the same f64 and always
                    // has a '.' or an exponent, so it parses back as a float, not an integer.
                    write!(f, "{:?}", n.as_f64().unwrap_or_default())
                }
            }
            CompValue::String(s) => write!(f, "\"{}\"", escape_json(s)),
        }
    }
}

impl Display for Filter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Present(p) => write!(f, "{p} pr"),
            Filter::Compare(p, op, v) => write!(f, "{p} {op} {v}"),
            Filter::Not(inner) => write!(f, "not ({inner})"),
            Filter::And(l, r) => {
                write_operand(f, l, is_or(l))?;
                f.write_str(" and ")?;
                write_operand(f, r, is_or(r) || is_and(r))
            }
            Filter::Or(l, r) => {
                write_operand(f, l, false)?;
                f.write_str(" or ")?;
                write_operand(f, r, is_or(r))
            }
            Filter::ValuePath(p, inner) => write!(f, "{p}[{inner}]"),
        }
    }
}

impl Display for PatchPath {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.attr)?;
        if let Some(filter) = &self.value_filter {
            write!(f, "[{filter}]")?;
        }
        if let Some(sub) = &self.sub_attr {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

fn is_or(f: &Filter) -> bool {
    matches!(f, Filter::Or(..))
}

fn is_and(f: &Filter) -> bool {
    matches!(f, Filter::And(..))
}

fn write_operand(f: &mut Formatter<'_>, operand: &Filter, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({operand})")
    } else {
        write!(f, "{operand}")
    }
}

/// How deeply the canonical text nests `( )`, `not ( )` and `[ ]`; mirrors `Display` above.
pub(super) fn canonical_depth(f: &Filter) -> usize {
    match f {
        Filter::Present(_) | Filter::Compare(..) => 0,
        Filter::Not(inner) | Filter::ValuePath(_, inner) => 1 + canonical_depth(inner),
        Filter::And(l, r) => {
            let l = canonical_depth(l) + usize::from(is_or(l));
            let r = canonical_depth(r) + usize::from(is_or(r) || is_and(r));
            l.max(r)
        }
        Filter::Or(l, r) => canonical_depth(l).max(canonical_depth(r) + usize::from(is_or(r))),
    }
}

/// The inside of a JSON string literal for `s` (no surrounding quotes).
pub(super) fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse_filter, parse_patch_path, MAX_COMPARISONS};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Number;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn canon(text: &str) -> String {
        match parse_filter(text) {
            Ok(f) => f.to_string(),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn canonical_text() {
        assert_eq!(canon(r#"userName EQ "x""#), r#"userName eq "x""#);
        assert_eq!(
            canon("a eq 1 or b eq 2 and c eq 3"),
            "a eq 1 or b eq 2 and c eq 3"
        );
        assert_eq!(
            canon("(a eq 1 or b eq 2) and c eq 3"),
            "(a eq 1 or b eq 2) and c eq 3"
        );
        assert_eq!(
            canon("a eq 1 and (b eq 2 and c eq 3)"),
            "a eq 1 and (b eq 2 and c eq 3)"
        );
        assert_eq!(
            canon("a eq 1 or (b eq 2 or c eq 3)"),
            "a eq 1 or (b eq 2 or c eq 3)"
        );
        assert_eq!(canon("((a eq 1) and (b eq 2))"), "a eq 1 and b eq 2");
        assert_eq!(canon("NOT(a pr)"), "not (a pr)");
        assert_eq!(
            canon("active eq TRUE and x eq Null"),
            "active eq true and x eq null"
        );
        assert_eq!(
            canon(r#"emails[type eq "work"].value eq "x""#),
            r#"emails[type eq "work" and value eq "x"]"#
        );
        assert_eq!(
            canon(r#"emails[type eq "a" or type eq "b"].value pr"#),
            r#"emails[(type eq "a" or type eq "b") and value pr]"#
        );
        assert_eq!(
            canon(&format!("{ENT}:manager.value eq \"m\"")),
            format!("{ENT}:manager.value eq \"m\"")
        );
        assert_eq!(
            canon(r#"x eq "\u00e9\/\u0001\"\\\n""#),
            "x eq \"é/\\u0001\\\"\\\\\\n\""
        );
        assert_eq!(canon("x gt 1.50"), "x gt 1.5");
        assert_eq!(canon("x gt 1e15"), "x gt 1000000000000000.0");
        assert_eq!(canon("x gt 1E16"), "x gt 1e16");
        assert_eq!(canon("x gt -0"), "x gt 0");
        assert_eq!(canon("x gt -0.0"), "x gt -0.0");
    }

    #[test]
    fn patch_path_text() {
        for t in [
            "name.givenName",
            r#"members[value eq "2819c223"]"#,
            r#"emails[type eq "work"].value"#,
            &format!("{ENT}:manager.value"),
        ] {
            assert_eq!(parse_patch_path(t).map(|p| p.to_string()).as_deref(), Ok(t));
        }
        assert_eq!(CompareOp::Ge.as_str(), "ge");
        assert_eq!(CompareOp::Ew.to_string(), "ew");
    }

    #[test]
    fn deepest_parsed_ast_prints_evaluates_and_drops_on_a_small_stack() {
        // The deepest tree the limits allow: 256 comparisons in a left-leaning `and` chain under
        // 63 `not`s and a value filter. Printing, comparing, evaluating and dropping it must fit
        // comfortably in a small stack.
        let chain = vec!["a pr"; MAX_COMPARISONS].join(" and ");
        let text = format!("{}x[{chain}]{}", "not (".repeat(63), ")".repeat(63));
        let run = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let f = parse_filter(&text).map_err(|e| e.detail)?;
                let again = parse_filter(&f.to_string()).map_err(|e| e.detail)?;
                let json = serde_json::json!({"x": [{"a": 1}]});
                let hit = super::super::matches(&f, &json, &|_| false);
                let same = again == f;
                drop(f);
                drop(again);
                Ok::<_, String>((same, hit))
            });
        let out = run.ok().and_then(|h| h.join().ok());
        assert_eq!(out, Some(Ok((true, false))));
    }

    // ---- round trip property ----

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z][a-zA-Z0-9_-]{0,6}",
            Just("$ref".to_string()),
            Just("not".to_string()),
            Just("and".to_string()),
            Just("or".to_string()),
            Just("pr".to_string()),
            Just("eq".to_string()),
        ]
    }

    fn attr_path() -> impl Strategy<Value = AttrPath> {
        let urn = prop_oneof![
            4 => Just(None),
            1 => Just(Some(ENT.to_string())),
            1 => Just(Some("urn:ietf:params:scim:schemas:core:2.0:User".to_string())),
            1 => "urn:[a-z0-9]{1,5}(:[a-zA-Z0-9.-]{1,5}){0,3}".prop_map(Some),
        ];
        (urn, name(), proptest::option::of(name())).prop_map(|(urn, attr, sub_attr)| AttrPath {
            urn,
            attr,
            sub_attr,
        })
    }

    fn comp_value() -> impl Strategy<Value = CompValue> {
        prop_oneof![
            Just(CompValue::Null),
            any::<bool>().prop_map(CompValue::Bool),
            any::<i64>().prop_map(|n| CompValue::Number(n.into())),
            any::<u64>().prop_map(|n| CompValue::Number(n.into())),
            any::<f64>().prop_filter_map("finite", |x| Number::from_f64(x).map(CompValue::Number)),
            any::<String>().prop_map(CompValue::String),
            "[a-z\"\\\\/ \n\t\u{0}\u{1f}\u{7f}é😀]{0,8}".prop_map(CompValue::String),
        ]
    }

    fn leaf() -> impl Strategy<Value = Filter> {
        prop_oneof![
            attr_path().prop_map(Filter::Present),
            (
                attr_path(),
                proptest::sample::select(CompareOp::ALL.to_vec()),
                comp_value()
            )
                .prop_map(|(p, op, v)| Filter::Compare(p, op, v)),
        ]
    }

    fn combine(inner: impl Strategy<Value = Filter> + Clone) -> impl Strategy<Value = Filter> {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
        ]
    }

    /// Filters allowed inside `[ ]`: no nested value paths.
    fn inner_filter() -> impl Strategy<Value = Filter> {
        leaf().prop_recursive(4, 24, 2, combine)
    }

    fn value_path() -> impl Strategy<Value = Filter> {
        (attr_path(), inner_filter()).prop_map(|(mut p, f)| {
            p.sub_attr = None;
            Filter::ValuePath(p, Box::new(f))
        })
    }

    fn filter() -> impl Strategy<Value = Filter> {
        prop_oneof![3 => leaf(), 1 => value_path()].prop_recursive(4, 24, 2, combine)
    }

    fn patch_path() -> impl Strategy<Value = PatchPath> {
        prop_oneof![
            attr_path().prop_map(|attr| PatchPath {
                attr,
                value_filter: None,
                sub_attr: None
            }),
            (attr_path(), inner_filter(), proptest::option::of(name())).prop_map(
                |(mut attr, f, sub)| {
                    attr.sub_attr = None;
                    PatchPath {
                        attr,
                        value_filter: Some(f),
                        sub_attr: sub,
                    }
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn filter_round_trips(f in filter()) {
            let text = f.to_string();
            prop_assert_eq!(parse_filter(&text), Ok(f), "text: {}", text);
        }

        #[test]
        fn patch_path_round_trips(p in patch_path()) {
            let text = p.to_string();
            prop_assert_eq!(parse_patch_path(&text), Ok(p), "text: {}", text);
        }

        #[test]
        fn canonical_text_is_a_fixed_point(f in filter()) {
            let once = f.to_string();
            let twice = parse_filter(&once).map(|g| g.to_string());
            prop_assert_eq!(twice, Ok(once));
        }
    }
}
