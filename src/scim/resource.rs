//! Resource bodies in and out, driven by the schemas: validation and normalisation of what a
//! client sends (POST, PUT, the result of a PATCH) into the stored form, and projection of a
//! stored resource for an answer (`attributes` / `excludedAttributes`, `returned`).
//!
//! The stored form: canonical attribute names, extension attributes under their extension URN
//! key, `schemas` listing the core URN and each extension present, no read-only input, no
//! password, no Group `members` (kept apart, see [`Normalized::members`]), no User `groups`.
//!
//! Lenient where IdPs are sloppy and nothing is at stake (unknown attributes and extensions are
//! dropped, `"False"` is a boolean, a single object for a multi-valued attribute is a list of
//! one, a string `manager` is `{"value": id}`); strict where data would be wrong (types, required
//! attributes, more than one `primary`, immutable values). Not here: uniqueness (needs the
//! directory), ids and `meta` (assigned by the directory), PATCH (see `patch.rs`).

use serde_json::{Map, Value};

use crate::scim::error::ScimError;
use crate::scim::filter::{parse_attr_path, AttrPath};
use crate::scim::schema::{
    AttrType, AttributeDef, Mutability, ResourceKind, Returned, Schema, SchemaRegistry,
};

/// Longest string value accepted, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Most values of one multi-valued attribute.
pub const MAX_ARRAY_LEN: usize = 10_000;
/// Most members given in one Group body or PATCH operation.
pub const MAX_MEMBERS: usize = 100_000;

/// A validated body: the resource as it is stored, and for a Group the members it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub resource: Value,
    /// Group only. `Some` when the body had a `members` key (`null` and `[]` give `Some(vec![])`:
    /// the client asked for no members); `None` when it had none, so membership is left as is.
    pub members: Option<Vec<MemberRef>>,
}

/// One Group member as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberRef {
    pub value: String,
    /// `"User"` or `"Group"` when the client said which (letter case normalised).
    pub member_type: Option<String>,
}

/// Validates a POST body.
pub fn validate_create(kind: ResourceKind, body: &Value) -> Result<Normalized, ScimError> {
    let mut n = normalize_body(kind, body, true)?;
    check_required(kind, &n.resource)?;
    finish(kind, &mut n.resource);
    Ok(n)
}

/// Validates a PUT body against the stored resource. Read-only input is ignored and `id`/`meta`
/// are kept from `current`; an immutable value the body omits is kept, one it changes is
/// `400 mutability`.
pub fn validate_replace(
    kind: ResourceKind,
    body: &Value,
    current: &Value,
) -> Result<Normalized, ScimError> {
    let mut n = normalize_body(kind, body, true)?;
    check_immutable(kind, &mut n.resource, current, true)?;
    carry_read_only(&mut n.resource, current);
    check_required(kind, &n.resource)?;
    finish(kind, &mut n.resource);
    Ok(n)
}

/// Validates the result of `patch::apply_patch` against the resource it started from. Same
/// rules as a PUT, except that removing an immutable value is refused too.
pub fn validate_patched(
    kind: ResourceKind,
    patched: &Value,
    current: &Value,
) -> Result<Normalized, ScimError> {
    // The patched resource derives from stored data, which always lists its schemas.
    let mut n = normalize_body(kind, patched, false)?;
    check_immutable(kind, &mut n.resource, current, false)?;
    carry_read_only(&mut n.resource, current);
    check_required(kind, &n.resource)?;
    finish(kind, &mut n.resource);
    Ok(n)
}

/// Case-insensitive key lookup in a JSON object (RFC 7643 §2.1: names are case-insensitive).
pub(crate) fn get_ci<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Where a top-level key of a body belongs.
enum Slot<'r> {
    Core(&'r AttributeDef),
    Ext(&'r Schema, &'r AttributeDef),
    /// `name.givenName` or `urn:…:User:name.givenName` as a key.
    CoreSub(&'r AttributeDef, &'r AttributeDef),
    ExtSub(&'r Schema, &'r AttributeDef, &'r AttributeDef),
    /// A whole extension object under its URN.
    Extension(&'r Schema),
    Ignore,
}

/// Classifies a top-level key (or a no-path PATCH value key) of a `kind` resource.
fn slot_of<'r>(reg: &'r SchemaRegistry, kind: ResourceKind, key: &str) -> Slot<'r> {
    if key.eq_ignore_ascii_case("schemas") {
        return Slot::Ignore;
    }
    if let Some(ext) = reg.extension(kind, key) {
        return Slot::Extension(ext);
    }
    let core = reg.core_schema(kind);
    let (urn, rest) = match reg.split_urn(kind, key) {
        Some((u, r)) => (Some(u), r),
        // An unknown URN (Microsoft's ADSCIM, a custom extension): not ours, dropped.
        None if has_urn_prefix(key) => return Slot::Ignore,
        None => (None, key),
    };
    let (name, sub) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let ext = match urn {
        Some(u) if !u.eq_ignore_ascii_case(&core.id) => reg.extension(kind, u),
        _ => None,
    };
    let found: Option<(Option<&Schema>, &AttributeDef)> = match (urn, ext) {
        (Some(_), Some(e)) => e.attribute(name).map(|a| (Some(e), a)),
        _ => reg
            .common_attributes()
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .or_else(|| core.attribute(name))
            .map(|a| (None, a))
            .or_else(|| {
                // An unqualified name may be an extension attribute (RFC 7644 §3.10 allows
                // it when unambiguous); a core-qualified one may not.
                if urn.is_some() {
                    return None;
                }
                reg.extensions(kind)
                    .into_iter()
                    .find_map(|e| e.attribute(name).map(|a| (Some(e), a)))
            }),
    };
    match (found, sub) {
        (None, _) => Slot::Ignore,
        (Some((None, a)), None) => Slot::Core(a),
        (Some((Some(e), a)), None) => Slot::Ext(e, a),
        (Some((e, a)), Some(s)) => match a.sub(s) {
            Some(sd) if !a.multi_valued => match e {
                None => Slot::CoreSub(a, sd),
                Some(e) => Slot::ExtSub(e, a, sd),
            },
            _ => Slot::Ignore,
        },
    }
}

/// Stored JSON under construction: core attributes and one object per extension.
#[derive(Default)]
struct Builder {
    core: Map<String, Value>,
    ext: Vec<(String, Map<String, Value>)>,
}

impl Builder {
    fn target(&mut self, ext: Option<&Schema>) -> &mut Map<String, Value> {
        match ext {
            None => &mut self.core,
            Some(e) => {
                let i = match self.ext.iter().position(|(u, _)| *u == e.id) {
                    Some(i) => i,
                    None => {
                        self.ext.push((e.id.clone(), Map::new()));
                        self.ext.len() - 1
                    }
                };
                &mut self.ext[i].1
            }
        }
    }
}

/// Normalises a whole body. `require_schemas`: the body must list the core schema URN.
fn normalize_body(
    kind: ResourceKind,
    body: &Value,
    require_schemas: bool,
) -> Result<Normalized, ScimError> {
    let reg = SchemaRegistry::get();
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the request body must be a JSON object"))?;
    let core = reg.core_schema(kind);
    if require_schemas {
        let listed = get_ci(obj, "schemas")
            .and_then(Value::as_array)
            .is_some_and(|s| {
                s.iter()
                    .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(&core.id)))
            });
        if !listed {
            return Err(ScimError::invalid_syntax(format!(
                "\"schemas\" must be an array that contains \"{}\"",
                core.id
            )));
        }
    }
    let mut b = Builder::default();
    let mut members: Option<Vec<MemberRef>> = None;
    for (key, value) in obj {
        match slot_of(reg, kind, key) {
            Slot::Ignore => {}
            Slot::Extension(e) => match value {
                Value::Null => {}
                Value::Object(inner) => {
                    for (k, v) in inner {
                        let Some(a) = e.attribute(k) else { continue };
                        put_attr(&mut b, Some(e), a, v)?;
                    }
                }
                _ => {
                    return Err(ScimError::invalid_value(format!(
                        "\"{}\" must be an object of extension attributes",
                        e.id
                    )))
                }
            },
            Slot::Core(a) if kind == ResourceKind::Group && a.name == "members" => {
                members = Some(member_refs(value)?);
            }
            Slot::Core(a) => put_attr(&mut b, None, a, value)?,
            Slot::Ext(e, a) => put_attr(&mut b, Some(e), a, value)?,
            Slot::CoreSub(a, s) => put_sub(&mut b, None, a, s, value)?,
            Slot::ExtSub(e, a, s) => put_sub(&mut b, Some(e), a, s, value)?,
        }
    }
    let mut out = b.core;
    for (urn, m) in b.ext {
        if !m.is_empty() {
            out.insert(urn, Value::Object(m));
        }
    }
    Ok(Normalized {
        resource: Value::Object(out),
        members,
    })
}

/// Whether the client may set this attribute at all. Read-only input is ignored, never refused
/// (Okta sends `id`, `meta`, `groups` back on PUT). The password is write-only: deprovd never
/// authenticates anyone with it, so it is not stored, not even hashed.
fn accepted(a: &AttributeDef) -> bool {
    !matches!(a.mutability, Mutability::ReadOnly | Mutability::WriteOnly)
}

fn put_attr(
    b: &mut Builder,
    ext: Option<&Schema>,
    a: &AttributeDef,
    v: &Value,
) -> Result<(), ScimError> {
    if !accepted(a) {
        return Ok(());
    }
    let target = b.target(ext);
    match normalize_value(a, v, &a.name)? {
        Some(n) => match (target.get_mut(&a.name), n) {
            // `name` and `name.givenName` in one body: merge.
            (Some(Value::Object(old)), Value::Object(new)) if !a.multi_valued => old.extend(new),
            (_, n) => {
                target.insert(a.name.clone(), n);
            }
        },
        None => {
            target.remove(&a.name);
        }
    }
    Ok(())
}

fn put_sub(
    b: &mut Builder,
    ext: Option<&Schema>,
    a: &AttributeDef,
    s: &AttributeDef,
    v: &Value,
) -> Result<(), ScimError> {
    if !accepted(a) || !accepted(s) {
        return Ok(());
    }
    let name = format!("{}.{}", a.name, s.name);
    let n = normalize_scalar(s, v, &name)?;
    let target = b.target(ext);
    let slot = target
        .entry(a.name.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(m) = slot {
        match n {
            Some(n) => {
                m.insert(s.name.clone(), n);
            }
            None => {
                m.remove(&s.name);
            }
        }
        if m.is_empty() {
            target.remove(&a.name);
        }
    }
    Ok(())
}

fn is_absent(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Normalises the value of one attribute (multi-valued or not). `None`: the attribute is
/// absent (`null`, `""`, `[]`, an object with nothing we keep).
pub(crate) fn normalize_value(
    a: &AttributeDef,
    v: &Value,
    name: &str,
) -> Result<Option<Value>, ScimError> {
    if is_absent(v) {
        return Ok(None);
    }
    if !a.multi_valued {
        return match v {
            // A list of one for a single-valued attribute (`"manager": [{"value": id}]`): its
            // element. Refusing it would fail a whole Entra PATCH, `active: false` included.
            Value::Array(items) => match items.as_slice() {
                [] => Ok(None),
                [one] if !one.is_array() => normalize_single(a, one, name),
                _ => Err(ScimError::invalid_value(format!(
                    "\"{name}\" is single-valued; an array of {} values was given",
                    items.len()
                ))),
            },
            _ => normalize_single(a, v, name),
        };
    }
    let items: &[Value] = match v {
        Value::Array(items) => items,
        // One value for a multi-valued attribute: a list of one.
        other => std::slice::from_ref(other),
    };
    if items.len() > MAX_ARRAY_LEN {
        return Err(ScimError::invalid_value(format!(
            "\"{name}\" has {} values; at most {MAX_ARRAY_LEN} are accepted",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if item.is_array() {
            return Err(ScimError::invalid_value(format!(
                "\"{name}\" values cannot be arrays"
            )));
        }
        if let Some(n) = normalize_single(a, item, name)? {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    check_primary(a, &out, name)?;
    Ok(Some(Value::Array(out)))
}

/// RFC 7643 §2.4: "The primary attribute value 'true' MUST appear no more than once."
pub(crate) fn check_primary(
    a: &AttributeDef,
    items: &[Value],
    name: &str,
) -> Result<(), ScimError> {
    if !a.has_primary() {
        return Ok(());
    }
    let primaries = items
        .iter()
        .filter(|i| i.get("primary") == Some(&Value::Bool(true)))
        .count();
    if primaries > 1 {
        return Err(ScimError::invalid_value(format!(
            "\"{name}\" has {primaries} values with \"primary\": true; at most one may be primary"
        )));
    }
    Ok(())
}

/// One value of an attribute: a complex object or a scalar.
pub(crate) fn normalize_single(
    a: &AttributeDef,
    v: &Value,
    name: &str,
) -> Result<Option<Value>, ScimError> {
    if a.attr_type != AttrType::Complex {
        return normalize_scalar(a, v, name);
    }
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, sv) in m {
                // Unknown keys inside a known complex attribute are dropped, like unknown
                // attributes; read-only sub-attributes (manager.displayName) are ignored.
                let Some(s) = a.sub(k) else { continue };
                if !accepted(s) {
                    continue;
                }
                if let Some(n) = normalize_scalar(s, sv, &format!("{name}.{}", s.name))? {
                    out.insert(s.name.clone(), n);
                }
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
        // Entra sends `manager` as a plain id: a scalar for a complex attribute is its `value`.
        scalar => match a.sub("value") {
            Some(s) => Ok(normalize_scalar(s, scalar, &format!("{name}.value"))?
                .map(|n| Value::Object(Map::from_iter([(s.name.clone(), n)])))),
            None => Err(ScimError::invalid_value(format!(
                "\"{name}\" must be an object"
            ))),
        },
    }
}

/// A simple (non-complex) value, coerced the way IdPs need.
pub(crate) fn normalize_scalar(
    a: &AttributeDef,
    v: &Value,
    name: &str,
) -> Result<Option<Value>, ScimError> {
    if is_absent(v) {
        return Ok(None);
    }
    let wrong = |what: &str| ScimError::invalid_value(format!("\"{name}\" must be {what}"));
    if let Value::String(s) = v {
        if s.len() > MAX_STRING_BYTES {
            return Err(ScimError::invalid_value(format!(
                "\"{name}\" is longer than {MAX_STRING_BYTES} bytes"
            )));
        }
    }
    let out = match a.attr_type {
        AttrType::Boolean => match v {
            Value::Bool(b) => Value::Bool(*b),
            // Entra sends "True" / "False" / "false".
            Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(wrong("a boolean")),
        },
        AttrType::Integer => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => v.clone(),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                _ => return Err(wrong("an integer")),
            },
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => return Err(wrong("an integer")),
            },
            _ => return Err(wrong("an integer")),
        },
        AttrType::Decimal => match v {
            Value::Number(_) => v.clone(),
            Value::String(s) => match s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Value::Number(n),
                None => return Err(wrong("a decimal number")),
            },
            _ => return Err(wrong("a decimal number")),
        },
        AttrType::DateTime => match v {
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => v.clone(),
            _ => {
                return Err(wrong(
                    "an RFC 3339 date-time such as \"2024-05-01T12:00:00Z\"",
                ))
            }
        },
        AttrType::String => match v {
            Value::String(_) => v.clone(),
            // A number or boolean for a string (an employeeNumber sent as 1234) is its text.
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(wrong("a string")),
        },
        AttrType::Reference | AttrType::Binary => match v {
            Value::String(_) => v.clone(),
            _ => return Err(wrong("a string")),
        },
        AttrType::Complex => return Err(wrong("a simple value")),
    };
    Ok(Some(out))
}

/// Group members as given: `[{"value": id, "type": "User", "$ref": null, "display": …}]`.
pub(crate) fn member_refs(v: &Value) -> Result<Vec<MemberRef>, ScimError> {
    let items: &[Value] = match v {
        Value::Null => &[],
        Value::Array(items) => items,
        other => std::slice::from_ref(other),
    };
    if items.len() > MAX_MEMBERS {
        return Err(ScimError::invalid_value(format!(
            "{} members given; at most {MAX_MEMBERS} in one request",
            items.len()
        )));
    }
    let mut out: Vec<MemberRef> = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for item in items {
        let (value, ty) = match item {
            Value::String(s) => (Some(s.as_str()), None),
            Value::Object(m) => (
                get_ci(m, "value").and_then(Value::as_str),
                get_ci(m, "type").and_then(Value::as_str),
            ),
            _ => (None, None),
        };
        let value = match value {
            Some(s) if !s.is_empty() && s.len() <= MAX_STRING_BYTES => s,
            _ => {
                return Err(ScimError::invalid_value(
                    "each member needs a non-empty string \"value\": the member's id",
                ))
            }
        };
        let member_type = ty.and_then(|t| {
            ["User", "Group"]
                .into_iter()
                .find(|c| c.eq_ignore_ascii_case(t))
                .map(str::to_owned)
        });
        if seen.insert(value.to_owned()) {
            out.push(MemberRef {
                value: value.to_owned(),
                member_type,
            });
        }
    }
    Ok(out)
}

fn check_required(kind: ResourceKind, resource: &Value) -> Result<(), ScimError> {
    let reg = SchemaRegistry::get();
    let Some(obj) = resource.as_object() else {
        return Ok(());
    };
    let core = reg.core_schema(kind);
    let missing = |a: &AttributeDef, m: &Map<String, Value>| {
        a.required
            && accepted(a)
            && !(kind == ResourceKind::Group && a.name == "members")
            && m.get(&a.name).is_none()
    };
    if let Some(a) = core.attributes.iter().find(|a| missing(a, obj)) {
        return Err(ScimError::invalid_value(format!(
            "\"{}\" is required",
            a.name
        )));
    }
    for (urn, required) in &reg.resource_type(kind).extensions {
        match obj.get(urn).and_then(Value::as_object) {
            Some(m) => {
                if let Some(e) = reg.schema(urn) {
                    if let Some(a) = e.attributes.iter().find(|a| missing(a, m)) {
                        return Err(ScimError::invalid_value(format!(
                            "\"{urn}:{}\" is required",
                            a.name
                        )));
                    }
                }
            }
            None if *required => {
                return Err(ScimError::invalid_value(format!(
                    "the extension \"{urn}\" is required"
                )))
            }
            None => {}
        }
    }
    Ok(())
}

/// Keeps the server-assigned `id` and `meta` of the stored resource.
fn carry_read_only(resource: &mut Value, current: &Value) {
    let (Some(out), Some(cur)) = (resource.as_object_mut(), current.as_object()) else {
        return;
    };
    for key in ["id", "meta"] {
        if let Some(v) = get_ci(cur, key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
}

/// RFC 7643 §2.2 immutable: once set, a value may not change. `keep_missing`: a PUT that omits
/// it keeps it; a PATCH that removes it is refused. Members (multi-valued, immutable
/// sub-attributes) are identities, handled by membership changes, not here.
fn check_immutable(
    kind: ResourceKind,
    resource: &mut Value,
    current: &Value,
    keep_missing: bool,
) -> Result<(), ScimError> {
    let reg = SchemaRegistry::get();
    let (Some(out), Some(cur)) = (resource.as_object_mut(), current.as_object()) else {
        return Ok(());
    };
    immutable_scope(&reg.core_schema(kind).attributes, out, cur, keep_missing)?;
    for e in reg.extensions(kind) {
        let Some(cur_ext) = get_ci(cur, &e.id).and_then(Value::as_object) else {
            continue;
        };
        let mut ext = match out.remove(&e.id) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        immutable_scope(&e.attributes, &mut ext, cur_ext, keep_missing)?;
        if !ext.is_empty() {
            out.insert(e.id.clone(), Value::Object(ext));
        }
    }
    Ok(())
}

/// The immutable check over one schema's attributes (the resource, or one extension object).
fn immutable_scope(
    attrs: &[AttributeDef],
    out: &mut Map<String, Value>,
    cur: &Map<String, Value>,
    keep_missing: bool,
) -> Result<(), ScimError> {
    for a in attrs.iter().filter(|a| !a.multi_valued) {
        let Some(old) = get_ci(cur, &a.name).filter(|v| !v.is_null()) else {
            continue;
        };
        if a.mutability == Mutability::Immutable {
            immutable_one(out, &a.name, old, keep_missing, &a.name)?;
            continue;
        }
        let Some(old_m) = old.as_object() else {
            continue;
        };
        let subs: Vec<&AttributeDef> = a
            .sub_attributes
            .iter()
            .filter(|s| s.mutability == Mutability::Immutable)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let mut new_m = match out.remove(&a.name) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for s in subs {
            if let Some(ov) = get_ci(old_m, &s.name).filter(|v| !v.is_null()) {
                immutable_one(
                    &mut new_m,
                    &s.name,
                    ov,
                    keep_missing,
                    &format!("{}.{}", a.name, s.name),
                )?;
            }
        }
        if !new_m.is_empty() {
            out.insert(a.name.clone(), Value::Object(new_m));
        }
    }
    Ok(())
}

fn immutable_one(
    out: &mut Map<String, Value>,
    key: &str,
    old: &Value,
    keep_missing: bool,
    name: &str,
) -> Result<(), ScimError> {
    match out.get(key) {
        None if keep_missing => {
            out.insert(key.to_owned(), old.clone());
            Ok(())
        }
        Some(new) if new == old => Ok(()),
        _ => Err(ScimError::mutability(format!(
            "\"{name}\" is immutable and already set"
        ))),
    }
}

/// Rebuilds `schemas`: the core URN, then each extension that holds data.
fn finish(kind: ResourceKind, resource: &mut Value) {
    let reg = SchemaRegistry::get();
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let mut schemas = vec![Value::String(reg.core_schema(kind).id.clone())];
    for e in reg.extensions(kind) {
        if obj
            .get(&e.id)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            schemas.push(Value::String(e.id.clone()));
        }
    }
    obj.insert("schemas".to_owned(), Value::Array(schemas));
}

/// Which attributes an answer carries (RFC 7644 §3.4.2.5, §3.9). A path with an empty `attr`
/// and a `urn` names a whole schema (`attributes=urn:…:enterprise:2.0:User`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttrSelection {
    pub attributes: Vec<AttrPath>,
    pub excluded: Vec<AttrPath>,
}

/// Parses the `attributes` and `excludedAttributes` parameters (comma-separated, URN-qualified
/// names allowed). A malformed name is `400 invalidPath`; a well-formed unknown one is simply
/// ignored when projecting.
pub fn parse_selection(
    attributes: Option<&str>,
    excluded: Option<&str>,
) -> Result<AttrSelection, ScimError> {
    let list = |s: Option<&str>| -> Result<Vec<AttrPath>, ScimError> {
        s.unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(parse_attr_name)
            .collect()
    };
    Ok(AttrSelection {
        attributes: list(attributes)?,
        excluded: list(excluded)?,
    })
}

/// `userName`, `name.givenName`, `urn:…:User:manager.value`, or a bare schema URN (which the
/// filter module's path parser would split at its last colon, so it is checked first).
pub(crate) fn parse_attr_name(text: &str) -> Result<AttrPath, ScimError> {
    if let Some(s) = SchemaRegistry::get().schema(text) {
        return Ok(AttrPath {
            urn: Some(s.id.clone()),
            attr: String::new(),
            sub_attr: None,
        });
    }
    parse_attr_path(text)
}

/// How a selection applies to one attribute.
enum Pick {
    No,
    Whole,
    /// Only these sub-attributes (plus those returned always).
    Subs(Vec<String>),
}

fn path_names(p: &AttrPath, schema_urn: &str, attr: &str) -> bool {
    p.attr.eq_ignore_ascii_case(attr)
        && p.urn
            .as_deref()
            .is_none_or(|u| u.eq_ignore_ascii_case(schema_urn))
}

fn whole_schema(p: &AttrPath, schema_urn: &str) -> bool {
    p.attr.is_empty()
        && p.urn
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(schema_urn))
}

/// Projects a stored resource for an answer: `returned` per the schema, `attributes` and
/// `excludedAttributes`, and `schemas` listing only the extensions left in it.
pub fn project(kind: ResourceKind, resource: &Value, sel: &AttrSelection) -> Value {
    let reg = SchemaRegistry::get();
    let Some(obj) = resource.as_object() else {
        return resource.clone();
    };
    let core = reg.core_schema(kind);
    let mut out = Map::new();
    for (key, value) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            continue;
        }
        if let Some(ext) = reg.extension(kind, key) {
            let Some(inner) = value.as_object() else {
                continue;
            };
            let mut m = Map::new();
            for (k, v) in inner {
                if let Some(a) = ext.attribute(k) {
                    if let Some(pv) = project_attr(&ext.id, a, v, sel) {
                        m.insert(a.name.clone(), pv);
                    }
                }
            }
            if !m.is_empty() {
                out.insert(ext.id.clone(), Value::Object(m));
            }
            continue;
        }
        let def = reg
            .common_attributes()
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(key))
            .or_else(|| core.attribute(key));
        match def {
            Some(a) => {
                if let Some(pv) = project_attr(&core.id, a, value, sel) {
                    out.insert(a.name.clone(), pv);
                }
            }
            // Not in any schema (nothing we store): only in a default representation.
            None if sel.attributes.is_empty()
                && !sel
                    .excluded
                    .iter()
                    .any(|p| p.attr.eq_ignore_ascii_case(key)) =>
            {
                out.insert(key.clone(), value.clone());
            }
            None => {}
        }
    }
    let mut schemas = vec![Value::String(core.id.clone())];
    for e in reg.extensions(kind) {
        if out.contains_key(&e.id) {
            schemas.push(Value::String(e.id.clone()));
        }
    }
    out.insert("schemas".to_owned(), Value::Array(schemas));
    Value::Object(out)
}

fn project_attr(
    schema_urn: &str,
    a: &AttributeDef,
    v: &Value,
    sel: &AttrSelection,
) -> Option<Value> {
    match a.returned {
        Returned::Never => return None,
        Returned::Always => return Some(v.clone()),
        Returned::Default | Returned::Request => {}
    }
    let pick = if sel.attributes.is_empty() {
        if a.returned == Returned::Request {
            Pick::No
        } else {
            Pick::Whole
        }
    } else if sel.attributes.iter().any(|p| {
        whole_schema(p, schema_urn) || (path_names(p, schema_urn, &a.name) && p.sub_attr.is_none())
    }) {
        Pick::Whole
    } else {
        let subs: Vec<String> = sel
            .attributes
            .iter()
            .filter(|p| path_names(p, schema_urn, &a.name))
            .filter_map(|p| p.sub_attr.clone())
            .collect();
        if subs.is_empty() {
            Pick::No
        } else {
            Pick::Subs(subs)
        }
    };
    if matches!(pick, Pick::No) {
        return None;
    }
    if sel.excluded.iter().any(|p| {
        whole_schema(p, schema_urn) || (path_names(p, schema_urn, &a.name) && p.sub_attr.is_none())
    }) {
        return None;
    }
    let excluded_subs: Vec<&str> = sel
        .excluded
        .iter()
        .filter(|p| path_names(p, schema_urn, &a.name))
        .filter_map(|p| p.sub_attr.as_deref())
        .collect();
    if a.attr_type != AttrType::Complex {
        return Some(v.clone());
    }
    let keep = |k: &str| -> bool {
        let Some(s) = a.sub(k) else {
            return matches!(pick, Pick::Whole);
        };
        match s.returned {
            Returned::Never => false,
            Returned::Always => true,
            Returned::Default | Returned::Request => {
                let named = match &pick {
                    Pick::Subs(list) => list.iter().any(|n| n.eq_ignore_ascii_case(k)),
                    _ => s.returned == Returned::Default,
                };
                named && !excluded_subs.iter().any(|n| n.eq_ignore_ascii_case(k))
            }
        }
    };
    let filter_obj = |m: &Map<String, Value>| -> Option<Value> {
        let f: Map<String, Value> = m
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!f.is_empty()).then_some(Value::Object(f))
    };
    match v {
        Value::Object(m) => filter_obj(m),
        Value::Array(items) => {
            let f: Vec<Value> = items
                .iter()
                .filter_map(|i| match i {
                    Value::Object(m) => filter_obj(m),
                    other => Some(other.clone()),
                })
                .collect();
            (!f.is_empty()).then_some(Value::Array(f))
        }
        other => Some(other.clone()),
    }
}

/// `urn:` in any letter case (slicing by bytes could split a character: `get` cannot panic).
pub(crate) fn has_urn_prefix(s: &str) -> bool {
    s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::{
        Uniqueness, ENTERPRISE_USER_SCHEMA as ENT, GROUP_SCHEMA, USER_SCHEMA,
    };
    use crate::scim::ScimType;
    use serde_json::json;

    fn create_user(body: Value) -> Result<Value, ScimError> {
        validate_create(ResourceKind::User, &body).map(|n| n.resource)
    }

    fn kind_of(e: &ScimError) -> Option<ScimType> {
        e.scim_type
    }

    #[test]
    fn okta_create_user_is_normalised() {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "isaac.brock@example.com",
            "name": {"givenName": "Isaac", "familyName": "Brock"},
            "emails": [{"primary": true, "value": "isaac.brock@example.com", "type": "work"}],
            "displayName": "Isaac Brock",
            "locale": "en-US",
            "externalId": "00ujl29u0le5T6Aj10h7",
            "groups": [],
            "password": "1mz050nq",
            "active": true
        });
        let r = create_user(body).unwrap();
        assert_eq!(r["schemas"], json!([USER_SCHEMA]));
        assert_eq!(r["userName"], "isaac.brock@example.com");
        assert_eq!(r["emails"][0]["primary"], true);
        assert!(r.get("password").is_none(), "the password is never stored");
        assert!(r.get("groups").is_none(), "User.groups is never stored");
        assert!(r.get("id").is_none());
    }

    #[test]
    fn names_are_case_insensitive_and_canonicalised() {
        let r = create_user(json!({
            "SCHEMAS": ["URN:IETF:PARAMS:SCIM:SCHEMAS:CORE:2.0:USER"],
            "USERNAME": "a",
            "Name": {"GIVENNAME": "A", "nosuch": "dropped"},
            "EMAILS": {"VALUE": "a@x", "Type": "work"},
            "nosuchAttribute": 1,
            "urn:ietf:params:scim:schemas:extension:ADSCIM:2.0:User": {"x": 1}
        }))
        .unwrap();
        assert_eq!(
            r,
            json!({
                "schemas": [USER_SCHEMA],
                "userName": "a",
                "name": {"givenName": "A"},
                "emails": [{"value": "a@x", "type": "work"}]
            })
        );
    }

    #[test]
    fn enterprise_extension_and_manager_forms() {
        let r = create_user(json!({
            "schemas": [USER_SCHEMA, ENT],
            "userName": "a",
            ENT: {"employeeNumber": 701984, "Manager": "26118915-6090-4610-87e4-49d8ca9f808d"}
        }))
        .unwrap();
        assert_eq!(r["schemas"], json!([USER_SCHEMA, ENT]));
        assert_eq!(r[ENT]["employeeNumber"], "701984");
        assert_eq!(
            r[ENT]["manager"],
            json!({"value": "26118915-6090-4610-87e4-49d8ca9f808d"})
        );
        let r = create_user(json!({
            "schemas": [USER_SCHEMA],
            "userName": "a",
            ENT: {"manager": {"value": "m1", "displayName": "read-only, dropped"}},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "Sales"
        }))
        .unwrap();
        assert_eq!(
            r[ENT],
            json!({"manager": {"value": "m1"}, "department": "Sales"})
        );
        // Empty extension: not stored and not listed.
        let r = create_user(
            json!({"schemas": [USER_SCHEMA, ENT], "userName": "a", ENT: {"manager": ""}}),
        )
        .unwrap();
        assert!(r.get(ENT).is_none());
        assert_eq!(r["schemas"], json!([USER_SCHEMA]));
    }

    #[test]
    fn booleans_accept_entra_strings() {
        for (given, want) in [
            (json!("False"), false),
            (json!("false"), false),
            (json!("True"), true),
            (json!(true), true),
        ] {
            let r =
                create_user(json!({"schemas": [USER_SCHEMA], "userName": "a", "active": given}))
                    .unwrap();
            assert_eq!(r["active"], want);
        }
        let e = create_user(json!({"schemas": [USER_SCHEMA], "userName": "a", "active": "no"}))
            .unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidValue));
        assert!(e.detail.contains("active"));
    }

    #[test]
    fn structure_errors() {
        let e = create_user(json!([1])).unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidSyntax));
        let e = create_user(json!({"userName": "a"})).unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidSyntax));
        let e = create_user(json!({"schemas": [GROUP_SCHEMA], "userName": "a"})).unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidSyntax));
        for bad in [
            json!({"name": "Alice"}),
            json!({"emails": [[1]]}),
            json!({"title": {"a": 1}}),
            json!({"displayName": ["x", "y"]}),
            json!({"profileUrl": 3}),
            json!({ENT: "x"}),
        ] {
            let mut body = bad.clone();
            body["schemas"] = json!([USER_SCHEMA]);
            body["userName"] = json!("a");
            let e = create_user(body).unwrap_err();
            assert_eq!(kind_of(&e), Some(ScimType::InvalidValue), "{bad}");
        }
    }

    #[test]
    fn required_attributes_are_named() {
        for body in [
            json!({"schemas": [USER_SCHEMA]}),
            json!({"schemas": [USER_SCHEMA], "userName": ""}),
            json!({"schemas": [USER_SCHEMA], "userName": null}),
        ] {
            let e = create_user(body).unwrap_err();
            assert_eq!(kind_of(&e), Some(ScimType::InvalidValue));
            assert!(e.detail.contains("userName"), "{}", e.detail);
        }
        let e = validate_create(
            ResourceKind::Group,
            &json!({"schemas": [GROUP_SCHEMA], "members": []}),
        )
        .unwrap_err();
        assert!(e.detail.contains("displayName"));
    }

    #[test]
    fn at_most_one_primary() {
        let e = create_user(json!({
            "schemas": [USER_SCHEMA], "userName": "a",
            "emails": [{"value": "a@x", "primary": true}, {"value": "b@x", "primary": "True"}]
        }))
        .unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidValue));
        assert!(e.detail.contains("emails") && e.detail.contains("primary"));
        create_user(json!({
            "schemas": [USER_SCHEMA], "userName": "a",
            "emails": [{"value": "a@x", "primary": true}, {"value": "b@x", "primary": false}]
        }))
        .unwrap();
    }

    #[test]
    fn null_and_empty_mean_absent() {
        let r = create_user(json!({
            "schemas": [USER_SCHEMA], "userName": "a", "title": "", "nickName": null,
            "emails": [], "phoneNumbers": [null, {}], "name": {"givenName": ""}
        }))
        .unwrap();
        assert_eq!(r, json!({"schemas": [USER_SCHEMA], "userName": "a"}));
    }

    #[test]
    fn sizes_are_bounded() {
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        let e = create_user(json!({"schemas": [USER_SCHEMA], "userName": long})).unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidValue));
        let many: Vec<Value> = (0..=MAX_ARRAY_LEN)
            .map(|i| json!({"value": i.to_string()}))
            .collect();
        let e = create_user(json!({"schemas": [USER_SCHEMA], "userName": "a", "emails": many}))
            .unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidValue));
        // Members have their own, larger bound.
        let members: Vec<Value> = (0..MAX_ARRAY_LEN + 5)
            .map(|i| json!({"value": i.to_string()}))
            .collect();
        let n = validate_create(
            ResourceKind::Group,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": members}),
        )
        .unwrap();
        assert_eq!(n.members.unwrap().len(), MAX_ARRAY_LEN + 5);
        let too_many = Value::Array(vec![json!("x"); MAX_MEMBERS + 1]);
        assert!(member_refs(&too_many).is_err());
    }

    #[test]
    fn scalar_types() {
        let def = |t: AttrType| AttributeDef {
            name: "x".into(),
            attr_type: t,
            multi_valued: false,
            required: false,
            case_exact: false,
            mutability: Mutability::ReadWrite,
            returned: Returned::Default,
            uniqueness: Uniqueness::None,
            canonical_values: vec![],
            reference_types: vec![],
            sub_attributes: vec![],
        };
        let ok = |t, v: Value| normalize_scalar(&def(t), &v, "x").unwrap();
        let bad = |t, v: Value| normalize_scalar(&def(t), &v, "x").unwrap_err().scim_type;
        assert_eq!(
            ok(AttrType::DateTime, json!("2024-05-01T12:00:00Z")),
            Some(json!("2024-05-01T12:00:00Z"))
        );
        assert_eq!(
            bad(AttrType::DateTime, json!("yesterday")),
            Some(ScimType::InvalidValue)
        );
        assert_eq!(ok(AttrType::Integer, json!("42")), Some(json!(42)));
        assert_eq!(ok(AttrType::Integer, json!(42.0)), Some(json!(42)));
        assert_eq!(
            bad(AttrType::Integer, json!(4.5)),
            Some(ScimType::InvalidValue)
        );
        assert_eq!(ok(AttrType::Decimal, json!("1.5")), Some(json!(1.5)));
        assert_eq!(
            bad(AttrType::Decimal, json!("NaN")),
            Some(ScimType::InvalidValue)
        );
        assert_eq!(
            bad(AttrType::Binary, json!(1)),
            Some(ScimType::InvalidValue)
        );
        assert_eq!(ok(AttrType::String, json!(true)), Some(json!("true")));
    }

    #[test]
    fn group_members_are_split_off() {
        let n = validate_create(
            ResourceKind::Group,
            &json!({
                "schemas": [GROUP_SCHEMA, "urn:ietf:params:scim:schemas:extension:ADSCIM:2.0:Group"],
                "displayName": "Admins",
                "members": [{"value": "u1", "$ref": null, "type": "user"}, {"value": "u1"}, {"value": "g2", "type": "Group", "display": "x"}]
            }),
        )
        .unwrap();
        assert_eq!(
            n.resource,
            json!({"schemas": [GROUP_SCHEMA], "displayName": "Admins"})
        );
        assert_eq!(
            n.members,
            Some(vec![
                MemberRef {
                    value: "u1".into(),
                    member_type: Some("User".into())
                },
                MemberRef {
                    value: "g2".into(),
                    member_type: Some("Group".into())
                },
            ])
        );
        let n = validate_create(
            ResourceKind::Group,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": []}),
        )
        .unwrap();
        assert_eq!(n.members, Some(vec![]));
        let n = validate_create(
            ResourceKind::Group,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "g"}),
        )
        .unwrap();
        assert_eq!(n.members, None);
        let e = validate_create(
            ResourceKind::Group,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": [{"display": "x"}]}),
        )
        .unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidValue));
    }

    #[test]
    fn okta_put_with_read_only_attributes_deactivates() {
        let current =
            create_user(json!({"schemas": [USER_SCHEMA], "userName": "a", "active": true}))
                .unwrap();
        let mut current = current;
        current["id"] = json!("u1");
        current["meta"] = json!({"resourceType": "User", "version": "W/\"1\""});
        let n = validate_replace(
            ResourceKind::User,
            &json!({
                "schemas": [USER_SCHEMA], "id": "something-else", "userName": "a", "active": false,
                "groups": [{"value": "g1", "display": "Admins"}], "meta": {"resourceType": "Nope"}
            }),
            &current,
        )
        .unwrap();
        assert_eq!(n.resource["active"], false);
        assert_eq!(n.resource["id"], "u1");
        assert_eq!(n.resource["meta"], current["meta"]);
        assert!(n.resource.get("groups").is_none());
    }

    fn immutable_attrs() -> Vec<AttributeDef> {
        let base = |name: &str, m: Mutability, subs: Vec<AttributeDef>| AttributeDef {
            name: name.into(),
            attr_type: if subs.is_empty() {
                AttrType::String
            } else {
                AttrType::Complex
            },
            multi_valued: false,
            required: false,
            case_exact: true,
            mutability: m,
            returned: Returned::Default,
            uniqueness: Uniqueness::None,
            canonical_values: vec![],
            reference_types: vec![],
            sub_attributes: subs,
        };
        vec![
            base("badge", Mutability::Immutable, vec![]),
            base(
                "origin",
                Mutability::ReadWrite,
                vec![
                    base("code", Mutability::Immutable, vec![]),
                    base("note", Mutability::ReadWrite, vec![]),
                ],
            ),
        ]
    }

    #[test]
    fn immutable_values_cannot_change() {
        let attrs = immutable_attrs();
        let cur = json!({"badge": "B1", "origin": {"code": "C1", "note": "n"}});
        let cur = cur.as_object().unwrap();
        let obj = |v: Value| v.as_object().unwrap().clone();
        // Same values: fine. PUT omitting them: kept.
        let mut out = obj(json!({"badge": "B1", "origin": {"code": "C1"}}));
        immutable_scope(&attrs, &mut out, cur, false).unwrap();
        let mut out = obj(json!({}));
        immutable_scope(&attrs, &mut out, cur, true).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"badge": "B1", "origin": {"code": "C1"}})
        );
        // Changing, or removing through PATCH: 400 mutability.
        for (new, keep) in [
            (json!({"badge": "B2"}), true),
            (json!({"badge": "B1", "origin": {"code": "C2"}}), true),
            (json!({"origin": {"code": "C1"}}), false),
        ] {
            let mut out = obj(new.clone());
            let e = immutable_scope(&attrs, &mut out, cur, keep).unwrap_err();
            assert_eq!(kind_of(&e), Some(ScimType::Mutability), "{new}");
        }
        // Not set yet: may be set.
        let mut out = obj(json!({"badge": "B9"}));
        immutable_scope(&attrs, &mut out, &Map::new(), false).unwrap();
    }

    fn stored_user() -> Value {
        json!({
            "schemas": [USER_SCHEMA, ENT],
            "id": "u1",
            "externalId": "e1",
            "userName": "alice",
            "name": {"givenName": "Alice", "familyName": "Smith"},
            "emails": [{"value": "a@x", "type": "work", "primary": true}, {"value": "b@x", "type": "home"}],
            "password": "never stored, but dropped on output anyway",
            "meta": {"resourceType": "User", "created": "2024-01-01T00:00:00Z", "lastModified": "2024-01-02T00:00:00Z", "version": "W/\"2\""},
            ENT: {"employeeNumber": "42", "manager": {"value": "m1", "displayName": "Boss"}}
        })
    }

    fn sel(a: &str, x: &str) -> AttrSelection {
        parse_selection((!a.is_empty()).then_some(a), (!x.is_empty()).then_some(x)).unwrap()
    }

    #[test]
    fn projection_default_representation() {
        let p = project(
            ResourceKind::User,
            &stored_user(),
            &AttrSelection::default(),
        );
        let mut want = stored_user();
        want.as_object_mut().unwrap().remove("password");
        assert_eq!(p, want);
    }

    #[test]
    fn projection_attributes() {
        let u = stored_user();
        let p = project(ResourceKind::User, &u, &sel("userName", ""));
        assert_eq!(
            p,
            json!({"schemas": [USER_SCHEMA], "id": "u1", "userName": "alice"})
        );
        let p = project(
            ResourceKind::User,
            &u,
            &sel("NAME.givenName, emails.value", ""),
        );
        assert_eq!(
            p,
            json!({"schemas": [USER_SCHEMA], "id": "u1", "name": {"givenName": "Alice"}, "emails": [{"value": "a@x"}, {"value": "b@x"}]})
        );
        let p = project(ResourceKind::User, &u, &sel("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager,meta.lastModified", ""));
        assert_eq!(
            p,
            json!({"schemas": [USER_SCHEMA, ENT], "id": "u1", "meta": {"lastModified": "2024-01-02T00:00:00Z"},
                   ENT: {"manager": {"value": "m1", "displayName": "Boss"}}})
        );
        let p = project(ResourceKind::User, &u, &sel(ENT, ""));
        assert_eq!(p[ENT], u[ENT]);
        assert_eq!(p["schemas"], json!([USER_SCHEMA, ENT]));
        let p = project(ResourceKind::User, &u, &sel("nosuch,urn:example:x:y", ""));
        assert_eq!(p, json!({"schemas": [USER_SCHEMA], "id": "u1"}));
    }

    #[test]
    fn projection_excluded_attributes() {
        let u = stored_user();
        let p = project(ResourceKind::User, &u, &sel("", "emails,name.familyName,id,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"));
        assert!(p.get("emails").is_none());
        assert_eq!(p["name"], json!({"givenName": "Alice"}));
        assert_eq!(p["id"], "u1", "returned=always survives excludedAttributes");
        assert_eq!(
            p[ENT],
            json!({"manager": {"value": "m1", "displayName": "Boss"}})
        );
        let p = project(ResourceKind::User, &u, &sel("", ENT));
        assert!(p.get(ENT).is_none());
        assert_eq!(p["schemas"], json!([USER_SCHEMA]));
        // Entra reads groups with excludedAttributes=members.
        let g = json!({"schemas": [GROUP_SCHEMA], "id": "g1", "displayName": "Admins", "members": [{"value": "u1"}]});
        let p = project(ResourceKind::Group, &g, &sel("", "members"));
        assert_eq!(
            p,
            json!({"schemas": [GROUP_SCHEMA], "id": "g1", "displayName": "Admins"})
        );
        let p = project(ResourceKind::Group, &g, &sel("displayName", ""));
        assert!(p.get("members").is_none());
    }

    #[test]
    fn selection_syntax() {
        let s = sel(
            " userName , ,urn:ietf:params:scim:schemas:core:2.0:User:name.givenName",
            "",
        );
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(s.attributes[1].urn.as_deref(), Some(USER_SCHEMA));
        assert_eq!(s.attributes[1].sub_attr.as_deref(), Some("givenName"));
        let e = parse_selection(Some("emails[type eq \"work\"]"), None).unwrap_err();
        assert_eq!(kind_of(&e), Some(ScimType::InvalidPath));
        assert_eq!(
            parse_selection(None, None).unwrap(),
            AttrSelection::default()
        );
    }
}
