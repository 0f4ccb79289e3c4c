//! List requests and answers: query parameters of `GET /Users` / `GET /Groups` (RFC 7644
//! §3.4.2), the SearchRequest body of `POST /.search` (§3.4.3), cursor pagination (RFC 9865),
//! and the ListResponse message. The numbers (`count` caps, default page size) come from the
//! ServiceProviderConfig through [`Limits`]. Not here: running the query (that is `directory/`),
//! cursor encoding.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::scim::error::ScimError;
use crate::scim::filter::{parse_attr_path, parse_filter, AttrPath, Filter};
use crate::scim::resource::{get_ci, parse_attr_name, parse_selection, AttrSelection};
use crate::scim::schema::{Limits, LIST_RESPONSE_SCHEMA, SEARCH_REQUEST_SCHEMA};

/// What a list request asks for, checked and with limits applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ListParams {
    pub filter: Option<Filter>,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    /// 1-based; values below 1 are read as 1 (RFC 7644 §3.4.2.4).
    pub start_index: u64,
    /// Capped at the advertised maximum; negative is 0 (only `totalResults` is wanted).
    pub count: u64,
    /// Cursor pagination (RFC 9865) when `Some`: `Some("")` asks for the first page. When both
    /// `cursor` and `startIndex` are given, cursor mode applies.
    pub cursor: Option<String>,
    pub selection: AttrSelection,
}

/// Reads the query parameters of a list request. Parameter names are matched without regard to
/// letter case.
pub fn parse_list_query(
    q: &HashMap<String, String>,
    limits: &Limits,
) -> Result<ListParams, ScimError> {
    let get = |name: &str| -> Option<&str> {
        q.get(name)
            .or_else(|| {
                q.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    };
    Ok(ListParams {
        filter: filter_of(get("filter"))?,
        sort_by: sort_by_of(get("sortBy"))?,
        descending: descending_of(get("sortOrder"))?,
        start_index: match get("startIndex") {
            None => 1,
            Some(s) => start_index_of(int_text(s, "startIndex")?),
        },
        count: match get("count") {
            None => default_count(limits),
            Some(s) => count_of(int_text(s, "count")?, limits),
        },
        cursor: get("cursor").map(str::to_owned),
        selection: parse_selection(get("attributes"), get("excludedAttributes"))?,
    })
}

/// Reads a SearchRequest body (`POST /.search`). Same rules as the query, with numbers as JSON
/// numbers and `attributes` / `excludedAttributes` as arrays of names.
pub fn parse_search_request(body: &Value, limits: &Limits) -> Result<ListParams, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the search request must be a JSON object"))?;
    let listed = get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter().any(|u| {
                u.as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(SEARCH_REQUEST_SCHEMA))
            })
        });
    if !listed {
        return Err(ScimError::invalid_syntax(format!(
            "\"schemas\" must be an array that contains \"{SEARCH_REQUEST_SCHEMA}\""
        )));
    }
    let text = |name: &str| -> Result<Option<&str>, ScimError> {
        match get_ci(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ScimError::invalid_value(format!(
                "\"{name}\" must be a string"
            ))),
        }
    };
    let int = |name: &str| -> Result<Option<i64>, ScimError> {
        match get_ci(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Ok(Some(i)),
                (None, Some(_)) => Ok(Some(i64::MAX)),
                _ => Err(ScimError::invalid_value(format!(
                    "\"{name}\" must be an integer"
                ))),
            },
            Some(_) => Err(ScimError::invalid_value(format!(
                "\"{name}\" must be an integer"
            ))),
        }
    };
    let names = |name: &str| -> Result<Vec<AttrPath>, ScimError> {
        match get_ci(obj, name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i.as_str() {
                    Some(s) => parse_attr_name(s.trim()),
                    None => Err(ScimError::invalid_value(format!(
                        "\"{name}\" must list strings"
                    ))),
                })
                .collect(),
            // A comma-separated string, as in the query form: accepted too.
            Some(Value::String(s)) => Ok(parse_selection(Some(s), None)?.attributes),
            Some(_) => Err(ScimError::invalid_value(format!(
                "\"{name}\" must be an array of names"
            ))),
        }
    };
    Ok(ListParams {
        filter: filter_of(text("filter")?)?,
        sort_by: sort_by_of(text("sortBy")?)?,
        descending: descending_of(text("sortOrder")?)?,
        start_index: int("startIndex")?.map_or(1, start_index_of),
        count: int("count")?.map_or_else(|| default_count(limits), |c| count_of(c, limits)),
        cursor: text("cursor")?.map(str::to_owned),
        selection: AttrSelection {
            attributes: names("attributes")?,
            excluded: names("excludedAttributes")?,
        },
    })
}

fn filter_of(s: Option<&str>) -> Result<Option<Filter>, ScimError> {
    match s {
        Some(s) if !s.trim().is_empty() => parse_filter(s).map(Some),
        _ => Ok(None),
    }
}

fn sort_by_of(s: Option<&str>) -> Result<Option<AttrPath>, ScimError> {
    match s {
        Some(s) if !s.trim().is_empty() => parse_attr_path(s).map(Some),
        _ => Ok(None),
    }
}

fn descending_of(s: Option<&str>) -> Result<bool, ScimError> {
    match s.map(str::trim) {
        None | Some("") => Ok(false),
        Some(s) if s.eq_ignore_ascii_case("ascending") => Ok(false),
        Some(s) if s.eq_ignore_ascii_case("descending") => Ok(true),
        Some(_) => Err(ScimError::invalid_value(
            "\"sortOrder\" must be \"ascending\" or \"descending\"",
        )),
    }
}

/// An integer parameter; digits beyond the range of i64 saturate rather than fail.
fn int_text(s: &str, name: &str) -> Result<i64, ScimError> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Ok(i);
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(if t.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        });
    }
    Err(ScimError::invalid_value(format!(
        "\"{name}\" must be an integer"
    )))
}

fn start_index_of(i: i64) -> u64 {
    u64::try_from(i).unwrap_or(0).max(1)
}

fn count_of(c: i64, limits: &Limits) -> u64 {
    u64::try_from(c).unwrap_or(0).min(limits.page_cap())
}

fn default_count(limits: &Limits) -> u64 {
    limits.default_page_size.min(limits.page_cap())
}

/// A ListResponse message (RFC 7644 §3.4.2; `nextCursor` / `previousCursor` per RFC 9865).
pub fn list_response(
    total: u64,
    start_index: u64,
    resources: Vec<Value>,
    next_cursor: Option<String>,
    previous_cursor: Option<String>,
) -> Value {
    let mut m = Map::new();
    m.insert("schemas".into(), json!([LIST_RESPONSE_SCHEMA]));
    m.insert("totalResults".into(), json!(total));
    m.insert("itemsPerPage".into(), json!(resources.len()));
    m.insert("startIndex".into(), json!(start_index));
    if let Some(c) = next_cursor {
        m.insert("nextCursor".into(), json!(c));
    }
    if let Some(c) = previous_cursor {
        m.insert("previousCursor".into(), json!(c));
    }
    m.insert("Resources".into(), Value::Array(resources));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::SchemaRegistry;
    use crate::scim::ScimType;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn limits() -> Limits {
        SchemaRegistry::get().limits()
    }

    #[test]
    fn okta_lookup_query() {
        let p = parse_list_query(
            &q(&[
                ("filter", "userName eq \"x@example.com\""),
                ("startIndex", "1"),
                ("count", "100"),
            ]),
            &limits(),
        )
        .unwrap();
        assert!(p.filter.is_some());
        assert_eq!((p.start_index, p.count, p.descending), (1, 100, false));
        assert_eq!(p.cursor, None);
    }

    #[test]
    fn defaults_and_clamps() {
        let l = limits();
        let p = parse_list_query(&q(&[]), &l).unwrap();
        assert_eq!((p.start_index, p.count), (1, l.default_page_size));
        assert!(p.filter.is_none() && p.sort_by.is_none());
        let p = parse_list_query(&q(&[("STARTINDEX", "0"), ("Count", "-5")]), &l).unwrap();
        assert_eq!((p.start_index, p.count), (1, 0));
        let p = parse_list_query(&q(&[("startIndex", "-3"), ("count", "1000000")]), &l).unwrap();
        assert_eq!((p.start_index, p.count), (1, l.page_cap()));
        let p = parse_list_query(&q(&[("count", "99999999999999999999999")]), &l).unwrap();
        assert_eq!(p.count, l.page_cap());
    }

    #[test]
    fn non_integers_are_invalid_value() {
        for (k, v) in [
            ("startIndex", "one"),
            ("count", "1.5"),
            ("count", ""),
            ("startIndex", "-"),
        ] {
            let e = parse_list_query(&q(&[(k, v)]), &limits()).unwrap_err();
            assert_eq!(e.scim_type, Some(ScimType::InvalidValue), "{k}={v}");
        }
    }

    #[test]
    fn sort_cursor_and_selection() {
        let p = parse_list_query(
            &q(&[
                ("sortBy", "name.familyName"),
                ("sortorder", "Descending"),
                ("cursor", ""),
                ("excludedAttributes", "members"),
                (
                    "attributes",
                    "userName,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
                ),
            ]),
            &limits(),
        )
        .unwrap();
        assert_eq!(p.sort_by, Some(AttrPath::with_sub("name", "familyName")));
        assert!(p.descending);
        assert_eq!(p.cursor.as_deref(), Some(""));
        assert_eq!(p.selection.excluded, vec![AttrPath::new("members")]);
        assert_eq!(p.selection.attributes.len(), 2);
        assert_eq!(p.selection.attributes[1].attr, "manager");
        let e = parse_list_query(&q(&[("sortOrder", "up")]), &limits()).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidValue));
        let e = parse_list_query(&q(&[("filter", "userName eq")]), &limits()).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidFilter));
    }

    #[test]
    fn search_request_body() {
        let body = json!({
            "schemas": [SEARCH_REQUEST_SCHEMA],
            "attributes": ["displayName", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "excludedAttributes": ["members"],
            "filter": "displayName sw \"smith\"",
            "startIndex": 0,
            "count": 5000,
            "sortOrder": "descending"
        });
        let p = parse_search_request(&body, &limits()).unwrap();
        assert_eq!(
            (p.start_index, p.count, p.descending),
            (1, limits().page_cap(), true)
        );
        assert_eq!(p.selection.attributes[1].attr, "");
        assert!(p.filter.is_some());
        let p =
            parse_search_request(&json!({"schemas": [SEARCH_REQUEST_SCHEMA]}), &limits()).unwrap();
        assert_eq!(p.count, limits().default_page_size);
        for bad in [
            json!({"schemas": [SEARCH_REQUEST_SCHEMA], "count": "10"}),
            json!({"schemas": [SEARCH_REQUEST_SCHEMA], "count": 1.5}),
            json!({"schemas": [SEARCH_REQUEST_SCHEMA], "attributes": [1]}),
            json!({"schemas": [SEARCH_REQUEST_SCHEMA], "filter": 3}),
        ] {
            assert_eq!(
                parse_search_request(&bad, &limits()).unwrap_err().scim_type,
                Some(ScimType::InvalidValue)
            );
        }
        for bad in [json!([]), json!({"count": 1})] {
            assert_eq!(
                parse_search_request(&bad, &limits()).unwrap_err().scim_type,
                Some(ScimType::InvalidSyntax)
            );
        }
    }

    #[test]
    fn list_response_shape() {
        let r = list_response(0, 1, vec![], None, None);
        assert_eq!(
            r,
            json!({"schemas": [LIST_RESPONSE_SCHEMA], "totalResults": 0, "itemsPerPage": 0, "startIndex": 1, "Resources": []})
        );
        let r = list_response(
            3,
            1,
            vec![json!({"id": "a"})],
            Some("n".into()),
            Some("p".into()),
        );
        assert_eq!(r["itemsPerPage"], 1);
        assert_eq!(r["nextCursor"], "n");
        assert_eq!(r["previousCursor"], "p");
    }
}
