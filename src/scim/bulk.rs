//! SCIM Bulk (RFC 7644 §3.7): parsing a BulkRequest, `bulkId` references (`"bulkId:qwerty"`)
//! and the order that lets them resolve, and the BulkResponse message. Executing the operations
//! (and `failOnErrors` counting) is the HTTP layer's job; the payload size limit is checked on the
//! raw body there, before JSON parsing, with `Limits::bulk_max_payload`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::scim::error::ScimError;
use crate::scim::resource::get_ci;
use crate::scim::schema::{Limits, ResourceKind, BULK_REQUEST_SCHEMA, BULK_RESPONSE_SCHEMA};

const BULK_ID_PREFIX: &str = "bulkId:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkOperation {
    pub method: Method,
    pub bulk_id: Option<String>,
    /// The ETag the client expects (`If-Match` of the operation).
    pub version: Option<String>,
    /// `/Users`, `/Groups/{id}`, `/Groups/bulkId:qwerty`.
    pub path: String,
    /// The resource (POST, PUT) or PatchOp message (PATCH); None for DELETE.
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkRequest {
    pub fail_on_errors: Option<u64>,
    pub operations: Vec<BulkOperation>,
}

fn at(n: usize, e: ScimError) -> ScimError {
    ScimError {
        detail: format!("operation {n}: {}", e.detail),
        ..e
    }
}

/// Parses a BulkRequest. More operations than `bulk.maxOperations` is `413` (RFC 7644 §3.7.4);
/// a malformed operation fails the whole request with `400`, naming it.
pub fn parse_bulk_request(body: &Value, limits: &Limits) -> Result<BulkRequest, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the bulk request must be a JSON object"))?;
    let listed = get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter().any(|u| {
                u.as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(BULK_REQUEST_SCHEMA))
            })
        });
    if !listed {
        return Err(ScimError::invalid_syntax(format!(
            "\"schemas\" must be an array that contains \"{BULK_REQUEST_SCHEMA}\""
        )));
    }
    let fail_on_errors = match get_ci(obj, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ScimError::invalid_value("\"failOnErrors\" must be a non-negative integer")
        })?),
    };
    let raw = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::invalid_syntax("\"Operations\" must be an array"))?;
    if raw.len() as u64 > limits.bulk_max_operations {
        return Err(ScimError::too_large(format!(
            "the bulk request has {} operations; maxOperations is {}",
            raw.len(),
            limits.bulk_max_operations
        )));
    }
    let mut operations = Vec::with_capacity(raw.len());
    let mut ids = HashSet::new();
    for (i, op) in raw.iter().enumerate() {
        let op = parse_operation(op).map_err(|e| at(i + 1, e))?;
        if let Some(id) = &op.bulk_id {
            if !ids.insert(id.clone()) {
                return Err(at(
                    i + 1,
                    ScimError::invalid_value(format!("bulkId \"{id}\" is used twice")),
                ));
            }
        }
        operations.push(op);
    }
    Ok(BulkRequest {
        fail_on_errors,
        operations,
    })
}

fn parse_operation(v: &Value) -> Result<BulkOperation, ScimError> {
    let o = v
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("an operation must be a JSON object"))?;
    let text = |name: &str| -> Result<Option<String>, ScimError> {
        match get_ci(o, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ScimError::invalid_syntax(format!(
                "\"{name}\" must be a string"
            ))),
        }
    };
    let method = match text("method")?.as_deref() {
        Some(m) if m.eq_ignore_ascii_case("POST") => Method::Post,
        Some(m) if m.eq_ignore_ascii_case("PUT") => Method::Put,
        Some(m) if m.eq_ignore_ascii_case("PATCH") => Method::Patch,
        Some(m) if m.eq_ignore_ascii_case("DELETE") => Method::Delete,
        _ => {
            return Err(ScimError::invalid_syntax(
                "\"method\" must be POST, PUT, PATCH or DELETE",
            ))
        }
    };
    let path = text("path")?.ok_or_else(|| ScimError::invalid_syntax("\"path\" is required"))?;
    let (_, id) = parse_bulk_path(&path)?;
    match (method, id.is_some()) {
        (Method::Post, true) => {
            return Err(ScimError::invalid_syntax(
                "POST takes a resource endpoint such as \"/Users\"",
            ))
        }
        (Method::Put | Method::Patch | Method::Delete, false) => {
            return Err(ScimError::invalid_syntax(format!(
                "{} takes a resource path such as \"/Users/{{id}}\"",
                method.as_str()
            )))
        }
        _ => {}
    }
    let bulk_id = text("bulkId")?.filter(|s| !s.is_empty());
    if method == Method::Post && bulk_id.is_none() {
        return Err(ScimError::invalid_syntax(
            "\"bulkId\" is required with POST",
        ));
    }
    let data = match (method, get_ci(o, "data")) {
        (Method::Delete, _) => None,
        (_, Some(d @ Value::Object(_))) => Some(d.clone()),
        _ => {
            return Err(ScimError::invalid_syntax(format!(
                "{} needs \"data\": a JSON object",
                method.as_str()
            )))
        }
    };
    Ok(BulkOperation {
        method,
        bulk_id,
        version: text("version")?,
        path,
        data,
    })
}

/// `/Users` → (User, None); `/Groups/abc` → (Group, Some("abc")). The endpoint name is matched
/// without regard to letter case.
pub fn parse_bulk_path(path: &str) -> Result<(ResourceKind, Option<String>), ScimError> {
    let bad = || {
        ScimError::invalid_syntax(format!(
            "\"path\" must be \"/Users\", \"/Groups\" or one of them followed by \"/{{id}}\"; got \"{}\"",
            path.chars().take(100).collect::<String>()
        ))
    };
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    let (endpoint, id) = match rest.split_once('/') {
        Some((e, id)) if !id.is_empty() && !id.contains('/') => (e, Some(id.to_owned())),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    let kind = if endpoint.eq_ignore_ascii_case("Users") {
        ResourceKind::User
    } else if endpoint.eq_ignore_ascii_case("Groups") {
        ResourceKind::Group
    } else {
        return Err(bad());
    };
    Ok((kind, id))
}

/// The bulkId a string refers to: the whole string `bulkId:x`, or a path segment of it
/// (`/Groups/bulkId:x`).
fn refs_in_str(s: &str) -> impl Iterator<Item = &str> {
    s.split('/')
        .filter_map(|seg| seg.strip_prefix(BULK_ID_PREFIX))
}

fn resolve_str(s: &str, ids: &HashMap<String, String>) -> Result<Option<String>, String> {
    if !s.contains(BULK_ID_PREFIX) {
        return Ok(None);
    }
    let mut changed = false;
    let mut parts = Vec::new();
    for seg in s.split('/') {
        match seg.strip_prefix(BULK_ID_PREFIX) {
            Some(id) => {
                let real = ids.get(id).ok_or_else(|| id.to_owned())?;
                parts.push(real.as_str());
                changed = true;
            }
            None => parts.push(seg),
        }
    }
    Ok(changed.then(|| parts.join("/")))
}

/// Replaces every `bulkId:x` (a whole string, or a path segment such as `/Groups/bulkId:x`)
/// anywhere in `value` with the id `ids` maps `x` to. `Err(x)`: `x` is not (yet) known.
/// Works on a path too: `resolve_bulk_ids(&Value::String(op.path), ids)`.
pub fn resolve_bulk_ids(value: &Value, ids: &HashMap<String, String>) -> Result<Value, String> {
    let mut out = value.clone();
    // An explicit stack: no recursion on client data.
    let mut stack: Vec<&mut Value> = vec![&mut out];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                if let Some(new) = resolve_str(s, ids)? {
                    *s = new;
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(m) => stack.extend(m.values_mut()),
            _ => {}
        }
    }
    Ok(out)
}

/// Every bulkId an operation refers to, in its path and data.
pub fn bulk_refs(op: &BulkOperation) -> Vec<String> {
    let mut out: Vec<String> = refs_in_str(&op.path).map(str::to_owned).collect();
    let mut stack: Vec<&Value> = op.data.iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => out.extend(refs_in_str(s).map(str::to_owned)),
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The order to run a bulk request in so that every `bulkId` reference is defined first
/// (RFC 7644 §3.7.1), keeping the request's order where references allow. Operations in (or
/// waiting on) a circular reference are left out of `order` and listed in `circular`: answer
/// each with [`circular_error`]. A reference to a bulkId no operation defines is not an ordering
/// matter: it fails when resolved ([`unresolved_error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPlan {
    pub order: Vec<usize>,
    pub circular: Vec<usize>,
}

pub fn bulk_dependencies(ops: &[BulkOperation]) -> BulkPlan {
    let defined: HashMap<&str, usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.method == Method::Post)
        .filter_map(|(i, o)| o.bulk_id.as_deref().map(|b| (b, i)))
        .collect();
    let mut indegree = vec![0usize; ops.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    let mut self_ref = vec![false; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        for r in bulk_refs(op) {
            match defined.get(r.as_str()) {
                Some(&j) if j == i => self_ref[i] = true,
                Some(&j) => {
                    dependents[j].push(i);
                    indegree[i] += 1;
                }
                None => {}
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..ops.len())
        .filter(|&i| indegree[i] == 0 && !self_ref[i])
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(ops.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 && !self_ref[d] {
                ready.push(Reverse(d));
            }
        }
    }
    let placed: HashSet<usize> = order.iter().copied().collect();
    let circular = (0..ops.len()).filter(|i| !placed.contains(i)).collect();
    BulkPlan { order, circular }
}

/// The answer for an operation caught in a circular bulkId reference.
pub fn circular_error() -> ScimError {
    ScimError::new(
        409,
        None,
        "circular bulkId reference: these operations refer to each other",
    )
}

/// The answer for an operation that refers to a bulkId no successful operation defined.
pub fn unresolved_error(bulk_id: &str) -> ScimError {
    ScimError::new(
        409,
        None,
        format!("bulkId \"{bulk_id}\" does not name a resource created earlier in this request"),
    )
}

/// The outcome of one operation, for the BulkResponse.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkResult {
    pub method: Method,
    pub bulk_id: Option<String>,
    pub version: Option<String>,
    pub location: Option<String>,
    pub status: u16,
    /// The error resource for a failed operation (or a resource, if one is returned).
    pub response: Option<Value>,
}

impl BulkResult {
    /// A failed operation: its status and the error resource.
    pub fn error(op: &BulkOperation, e: &ScimError) -> BulkResult {
        BulkResult {
            method: op.method,
            bulk_id: op.bulk_id.clone(),
            version: None,
            location: None,
            status: e.status,
            response: Some(e.to_json()),
        }
    }
}

/// A BulkResponse message; `status` is a string, as in RFC 7644 §3.7.3.
pub fn bulk_response(results: Vec<BulkResult>) -> Value {
    let ops: Vec<Value> = results
        .into_iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("method".into(), Value::String(r.method.as_str().into()));
            if let Some(b) = r.bulk_id {
                m.insert("bulkId".into(), Value::String(b));
            }
            if let Some(v) = r.version {
                m.insert("version".into(), Value::String(v));
            }
            if let Some(l) = r.location {
                m.insert("location".into(), Value::String(l));
            }
            m.insert("status".into(), Value::String(r.status.to_string()));
            if let Some(resp) = r.response {
                m.insert("response".into(), resp);
            }
            Value::Object(m)
        })
        .collect();
    let mut out = Map::new();
    out.insert(
        "schemas".into(),
        Value::Array(vec![Value::String(BULK_RESPONSE_SCHEMA.into())]),
    );
    out.insert("Operations".into(), Value::Array(ops));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::SchemaRegistry;
    use crate::scim::ScimType;
    use serde_json::json;

    fn limits() -> Limits {
        SchemaRegistry::get().limits()
    }

    fn rfc_example() -> Value {
        // RFC 7644 §3.7.2: a group whose member is a user created in the same request.
        json!({
            "schemas": [BULK_REQUEST_SCHEMA],
            "failOnErrors": 1,
            "Operations": [
                {"method": "POST", "path": "/Groups", "bulkId": "ytrewq",
                 "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                          "displayName": "Tour Guides",
                          "members": [{"type": "User", "value": "bulkId:qwerty"}]}},
                {"method": "post", "path": "/Users", "bulkId": "qwerty",
                 "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Alice"}},
                {"method": "PATCH", "path": "/Groups/bulkId:ytrewq",
                 "data": {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                          "Operations": [{"op": "remove", "path": "members"}]}},
                {"method": "DELETE", "path": "/Users/b7c14771", "version": "W/\"1\""}
            ]
        })
    }

    #[test]
    fn parses_the_rfc_example() {
        let r = parse_bulk_request(&rfc_example(), &limits()).unwrap();
        assert_eq!(r.fail_on_errors, Some(1));
        assert_eq!(r.operations.len(), 4);
        assert_eq!(r.operations[1].method, Method::Post);
        assert_eq!(r.operations[3].data, None);
        assert_eq!(r.operations[3].version.as_deref(), Some("W/\"1\""));
        assert_eq!(
            parse_bulk_path("/users/abc").unwrap(),
            (ResourceKind::User, Some("abc".into()))
        );
        assert_eq!(
            parse_bulk_path("/Groups").unwrap(),
            (ResourceKind::Group, None)
        );
    }

    #[test]
    fn too_many_operations_is_413() {
        let l = limits();
        let op = json!({"method": "DELETE", "path": "/Users/x"});
        let ops: Vec<Value> = (0..=l.bulk_max_operations).map(|_| op.clone()).collect();
        let e = parse_bulk_request(
            &json!({"schemas": [BULK_REQUEST_SCHEMA], "Operations": ops}),
            &l,
        )
        .unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.detail.contains(&l.bulk_max_operations.to_string()));
    }

    #[test]
    fn malformed_operations_are_refused() {
        let l = limits();
        for op in [
            json!({"method": "POST", "path": "/Users", "data": {}}), // no bulkId
            json!({"method": "POST", "path": "/Users/x", "bulkId": "a", "data": {}}),
            json!({"method": "PUT", "path": "/Users", "data": {}}),
            json!({"method": "PATCH", "path": "/Users/x"}), // no data
            json!({"method": "GET", "path": "/Users/x"}),
            json!({"method": "DELETE", "path": "/Widgets/x"}),
            json!({"method": "DELETE", "path": "Users/x"}),
            json!({"method": "DELETE", "path": "/Users/x/y"}),
            json!("DELETE /Users/x"),
        ] {
            let e = parse_bulk_request(
                &json!({"schemas": [BULK_REQUEST_SCHEMA], "Operations": [op]}),
                &l,
            )
            .unwrap_err();
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(ScimType::InvalidSyntax)),
                "{op}"
            );
            assert!(e.detail.starts_with("operation 1:"), "{}", e.detail);
        }
        let dup = json!({"schemas": [BULK_REQUEST_SCHEMA], "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "a", "data": {}},
            {"method": "POST", "path": "/Users", "bulkId": "a", "data": {}}]});
        assert_eq!(
            parse_bulk_request(&dup, &l).unwrap_err().scim_type,
            Some(ScimType::InvalidValue)
        );
        assert!(parse_bulk_request(&json!({"Operations": []}), &l).is_err());
        let e = parse_bulk_request(
            &json!({"schemas": [BULK_REQUEST_SCHEMA], "failOnErrors": -1, "Operations": []}),
            &l,
        );
        assert_eq!(e.unwrap_err().scim_type, Some(ScimType::InvalidValue));
    }

    #[test]
    fn resolves_bulk_ids_in_data_and_paths() {
        let ids: HashMap<String, String> = [("qwerty".to_string(), "u-1".to_string())].into();
        let data = json!({"members": [{"type": "User", "value": "bulkId:qwerty"}], "x": ["bulkId:qwerty", 3]});
        let out = resolve_bulk_ids(&data, &ids).unwrap();
        assert_eq!(
            out,
            json!({"members": [{"type": "User", "value": "u-1"}], "x": ["u-1", 3]})
        );
        assert_eq!(
            resolve_bulk_ids(&json!("/Groups/bulkId:qwerty"), &ids).unwrap(),
            json!("/Groups/u-1")
        );
        assert_eq!(
            resolve_bulk_ids(&json!({"v": "bulkId:nope"}), &ids),
            Err("nope".to_string())
        );
        // Text that merely mentions the prefix mid-segment is left alone.
        assert_eq!(
            resolve_bulk_ids(&json!("see bulkId:qwerty"), &ids).unwrap(),
            json!("see bulkId:qwerty")
        );
    }

    #[test]
    fn dependencies_order_definitions_first() {
        let r = parse_bulk_request(&rfc_example(), &limits()).unwrap();
        let plan = bulk_dependencies(&r.operations);
        // user (1) before the group (0) that names it, group before its PATCH (2).
        assert_eq!(plan.order, vec![1, 0, 2, 3]);
        assert!(plan.circular.is_empty());
        assert_eq!(bulk_refs(&r.operations[2]), vec!["ytrewq".to_string()]);
    }

    #[test]
    fn circular_references_are_reported() {
        let ops = json!({"schemas": [BULK_REQUEST_SCHEMA], "Operations": [
            {"method": "POST", "path": "/Groups", "bulkId": "a", "data": {"members": [{"value": "bulkId:b"}]}},
            {"method": "POST", "path": "/Groups", "bulkId": "b", "data": {"members": [{"value": "bulkId:a"}]}},
            {"method": "POST", "path": "/Groups", "bulkId": "c", "data": {"members": [{"value": "bulkId:c"}]}},
            {"method": "POST", "path": "/Users", "bulkId": "d", "data": {"userName": "x"}},
            {"method": "PATCH", "path": "/Groups/bulkId:a", "data": {}}
        ]});
        let r = parse_bulk_request(&ops, &limits()).unwrap();
        let plan = bulk_dependencies(&r.operations);
        assert_eq!(plan.order, vec![3]);
        assert_eq!(plan.circular, vec![0, 1, 2, 4]);
        assert_eq!(circular_error().status, 409);
        assert_eq!(unresolved_error("x").status, 409);
    }

    #[test]
    fn response_shape() {
        let op = BulkOperation {
            method: Method::Post,
            bulk_id: Some("q".into()),
            version: None,
            path: "/Users".into(),
            data: None,
        };
        let v = bulk_response(vec![
            BulkResult {
                method: Method::Post,
                bulk_id: Some("q".into()),
                version: Some("W/\"1\"".into()),
                location: Some("https://x/scim/v2/Users/1".into()),
                status: 201,
                response: None,
            },
            BulkResult::error(&op, &ScimError::uniqueness("userName taken")),
        ]);
        assert_eq!(v["schemas"][0], BULK_RESPONSE_SCHEMA);
        assert_eq!(v["Operations"][0]["status"], "201");
        assert_eq!(v["Operations"][0]["location"], "https://x/scim/v2/Users/1");
        assert_eq!(v["Operations"][1]["status"], "409");
        assert_eq!(v["Operations"][1]["response"]["scimType"], "uniqueness");
        assert!(v["Operations"][1].get("location").is_none());
    }
}
