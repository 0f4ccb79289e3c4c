//! SCIM PATCH (RFC 7644 §3.5.2): parsing a PatchOp request and applying it to a resource's JSON,
//! atomically (on a copy: an operation that fails leaves nothing applied), with what Okta and
//! Entra ID actually send (see `shared/IDP-BEHAVIOUR.md`): capitalised `op`s, booleans as
//! `"False"`, no-path values with dotted and URN keys, value paths that create the element they
//! name, a plain-string `manager`, member removal by value list.
//!
//! Group membership is not in the stored Group JSON (a group may have 100k members):
//! [`split_group_ops`] turns member operations into [`MemberChange`] deltas for the directory,
//! and only the rest goes through [`apply_patch`]. The caller then runs
//! `resource::validate_patched` on the result. Not here: ETags, storage, the HTTP answer.
//!
//! Choices where the RFC leaves room or where IdPs need otherwise:
//! - a request that is not a PatchOp message (no PatchOp URN in `schemas`, no `Operations`, an
//!   unknown `op`) is `400 invalidSyntax`: its structure does not conform to the message schema;
//! - `add`/`replace` through a value filter that matches nothing creates the element from the
//!   filter's `eq` terms (Entra: `emails[type eq "work"].value`); `remove` that matches nothing
//!   succeeds (idempotent); only a filter that cannot describe a new element is `noTarget`;
//! - a path or no-path key in a URN namespace this service does not implement (an Entra custom
//!   extension) is skipped, as its attributes are dropped from POST/PUT bodies: refusing it would
//!   block an `active: false` in the same request;
//! - in a no-path value, unknown attribute names are skipped (as in a PUT body) and the
//!   read-only `id`, `meta`, `schemas` are ignored (Okta's group rename sends `id`); with a path,
//!   an unknown attribute is `invalidPath` and a read-only one is `mutability`;
//! - `null` or `""` as an `add`/`replace` value clears the target (Entra's null updates).

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::scim::error::ScimError;
use crate::scim::filter::{
    matches_element, parse_patch_path, AttrPath, CompValue, CompareOp, Filter, PatchPath,
};
use crate::scim::resource::{
    check_primary, get_ci, has_urn_prefix, member_refs, normalize_scalar, normalize_single,
    normalize_value, MemberRef, MAX_ARRAY_LEN,
};
use crate::scim::schema::{
    path_text, AttrType, AttributeDef, Mutability, ResourceKind, SchemaRegistry, GROUP_SCHEMA,
    PATCH_OP_SCHEMA,
};

/// Most operations in one PATCH request.
pub const MAX_OPERATIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOpKind {
    Add,
    Replace,
    Remove,
}

impl PatchOpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchOpKind::Add => "add",
            PatchOpKind::Replace => "replace",
            PatchOpKind::Remove => "remove",
        }
    }
}

/// One operation of a PatchOp request. `value` is `Some(Value::Null)` when the client sent
/// `"value": null` (which clears the target), `None` when it sent no value.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    pub op: PatchOpKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// A change to a Group's membership, for the directory to apply as a delta.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberChange {
    Add(Vec<MemberRef>),
    /// Remove these member ids (and only these).
    Remove(Vec<String>),
    RemoveAll,
    /// The membership becomes exactly this.
    Replace(Vec<MemberRef>),
    /// Remove the members matching this filter over member sub-attributes (`value`, `type`,
    /// `display`, `$ref`), as in `members[type eq "Group"]`.
    RemoveMatching(Filter),
}

fn at(n: usize, e: ScimError) -> ScimError {
    ScimError {
        detail: format!("operation {n}: {}", e.detail),
        ..e
    }
}

/// Parses a PatchOp request body (RFC 7644 §3.5.2). Names and `op` values are matched without
/// regard to letter case; keys an operation should not have (Entra sends `name`) are ignored.
pub fn parse_patch_request(body: &Value) -> Result<Vec<PatchOp>, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the PATCH body must be a JSON object"))?;
    let listed = get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter().any(|u| {
                u.as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(PATCH_OP_SCHEMA))
            })
        });
    if !listed {
        return Err(ScimError::invalid_syntax(format!(
            "\"schemas\" must be an array that contains \"{PATCH_OP_SCHEMA}\""
        )));
    }
    let raw_ops = match get_ci(obj, "Operations").and_then(Value::as_array) {
        Some(ops) if !ops.is_empty() => ops,
        _ => {
            return Err(ScimError::invalid_syntax(
                "\"Operations\" must be a non-empty array",
            ))
        }
    };
    if raw_ops.len() > MAX_OPERATIONS {
        return Err(ScimError::invalid_value(format!(
            "{} operations given; at most {MAX_OPERATIONS} in one PATCH request",
            raw_ops.len()
        )));
    }
    let mut out = Vec::with_capacity(raw_ops.len());
    for (i, raw) in raw_ops.iter().enumerate() {
        out.push(parse_op(raw).map_err(|e| at(i + 1, e))?);
    }
    Ok(out)
}

fn parse_op(raw: &Value) -> Result<PatchOp, ScimError> {
    let o = raw
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("an operation must be a JSON object"))?;
    let op = match get_ci(o, "op").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("add") => PatchOpKind::Add,
        Some(s) if s.eq_ignore_ascii_case("replace") => PatchOpKind::Replace,
        Some(s) if s.eq_ignore_ascii_case("remove") => PatchOpKind::Remove,
        _ => {
            return Err(ScimError::invalid_syntax(
                "\"op\" must be \"add\", \"replace\" or \"remove\"",
            ))
        }
    };
    let path = match get_ci(o, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(parse_patch_path(s)?),
        Some(_) => return Err(ScimError::invalid_path("\"path\" must be a string")),
    };
    let value = get_ci(o, "value").cloned();
    match op {
        PatchOpKind::Add | PatchOpKind::Replace if value.is_none() => Err(
            ScimError::invalid_value(format!("\"{}\" needs a \"value\"", op.as_str())),
        ),
        // RFC 7644 §3.5.2.2: "If path is unspecified, the operation fails with 400 noTarget".
        PatchOpKind::Remove if path.is_none() => {
            Err(ScimError::no_target("\"remove\" needs a \"path\""))
        }
        _ => Ok(PatchOp { op, path, value }),
    }
}

fn is_members_path(p: &AttrPath) -> bool {
    p.attr.eq_ignore_ascii_case("members")
        && p.urn
            .as_deref()
            .is_none_or(|u| u.eq_ignore_ascii_case(GROUP_SCHEMA))
}

/// Splits a Group PATCH into the operations on the Group's own attributes (for
/// [`apply_patch`]) and its membership changes, in the order they appear.
pub fn split_group_ops(ops: Vec<PatchOp>) -> Result<(Vec<PatchOp>, Vec<MemberChange>), ScimError> {
    let mut rest = Vec::with_capacity(ops.len());
    let mut changes = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        split_one(op, &mut rest, &mut changes).map_err(|e| at(i + 1, e))?;
    }
    Ok((rest, changes))
}

fn split_one(
    op: PatchOp,
    rest: &mut Vec<PatchOp>,
    changes: &mut Vec<MemberChange>,
) -> Result<(), ScimError> {
    let Some(path) = &op.path else {
        // A no-path add/replace may carry `members` next to other attributes.
        let Some(Value::Object(m)) = &op.value else {
            rest.push(op);
            return Ok(());
        };
        let Some(key) = m
            .keys()
            .find(|k| k.eq_ignore_ascii_case("members"))
            .cloned()
        else {
            rest.push(op);
            return Ok(());
        };
        let mut m = m.clone();
        let members = m.remove(&key).unwrap_or(Value::Null);
        let refs = member_refs(&members)?;
        changes.push(match op.op {
            PatchOpKind::Add => MemberChange::Add(refs),
            _ => MemberChange::Replace(refs),
        });
        if !m.is_empty() {
            rest.push(PatchOp {
                op: op.op,
                path: None,
                value: Some(Value::Object(m)),
            });
        }
        return Ok(());
    };
    if !is_members_path(&path.attr) {
        rest.push(op);
        return Ok(());
    }
    let shape_error = || {
        ScimError::invalid_path(
            "members are added (path \"members\"), removed (\"members\" with or without a value \
             list, or \"members[value eq \\\"id\\\"]\") or replaced as a whole (\"members\")",
        )
    };
    if path.attr.sub_attr.is_some() || path.sub_attr.is_some() {
        return Err(shape_error());
    }
    let value = op.value.as_ref();
    let change = match (op.op, &path.value_filter) {
        (PatchOpKind::Add, None) => match value {
            Some(v) if !v.is_null() => MemberChange::Add(member_refs(v)?),
            _ => {
                return Err(ScimError::invalid_value(
                    "\"add\" of members needs a list of members",
                ))
            }
        },
        (PatchOpKind::Replace, None) => {
            MemberChange::Replace(member_refs(value.unwrap_or(&Value::Null))?)
        }
        // Entra: remove path=members value=[{"value": id}] removes those, never all of them
        // (apache/directory-scimple #436 emptied whole groups).
        (PatchOpKind::Remove, None) => match value {
            None | Some(Value::Null) => MemberChange::RemoveAll,
            Some(v) => MemberChange::Remove(member_refs(v)?.into_iter().map(|r| r.value).collect()),
        },
        (PatchOpKind::Remove, Some(f)) => {
            check_filter_names(member_def(), f)?;
            let mut ids = Vec::new();
            if value_eq_ids(f, &mut ids) {
                MemberChange::Remove(ids)
            } else {
                MemberChange::RemoveMatching(f.clone())
            }
        }
        (_, Some(_)) => return Err(shape_error()),
    };
    changes.push(change);
    Ok(())
}

fn member_def() -> &'static AttributeDef {
    let reg = SchemaRegistry::get();
    match reg.core_schema(ResourceKind::Group).attribute("members") {
        Some(a) => a,
        None => unreachable!("Group.json defines members"),
    }
}

/// `value eq "a"` or `value eq "a" or value eq "b"` → the ids.
fn value_eq_ids(f: &Filter, out: &mut Vec<String>) -> bool {
    match f {
        Filter::Compare(p, CompareOp::Eq, CompValue::String(s))
            if p.urn.is_none() && p.sub_attr.is_none() && p.attr.eq_ignore_ascii_case("value") =>
        {
            out.push(s.clone());
            true
        }
        Filter::Or(l, r) => value_eq_ids(l, out) && value_eq_ids(r, out),
        _ => false,
    }
}

/// Every name in a value filter must be a sub-attribute of the attribute it filters.
fn check_filter_names(a: &AttributeDef, f: &Filter) -> Result<(), ScimError> {
    let check = |p: &AttrPath| {
        if p.urn.is_none() && p.sub_attr.is_none() && a.sub(&p.attr).is_some() {
            Ok(())
        } else {
            Err(ScimError::invalid_path(format!(
                "\"{}\" is not a sub-attribute of \"{}\"",
                path_text(p),
                a.name
            )))
        }
    };
    match f {
        Filter::Present(p) | Filter::Compare(p, _, _) => check(p),
        Filter::Not(inner) => check_filter_names(a, inner),
        Filter::And(l, r) | Filter::Or(l, r) => {
            check_filter_names(a, l)?;
            check_filter_names(a, r)
        }
        Filter::ValuePath(p, _) => check(p),
    }
}

/// Applies the operations to a copy of `resource` (the stored JSON) and returns the result;
/// on any error nothing is applied. For a Group, member operations must have been split off
/// with [`split_group_ops`] first.
pub fn apply_patch(
    kind: ResourceKind,
    resource: &Value,
    ops: &[PatchOp],
) -> Result<Value, ScimError> {
    let reg = SchemaRegistry::get();
    let mut res = resource.clone();
    let Some(obj) = res.as_object_mut() else {
        return Err(ScimError::internal(
            "the stored resource is not a JSON object",
        ));
    };
    for (i, op) in ops.iter().enumerate() {
        let cx = Cx {
            reg,
            kind,
            op: op.op,
        };
        match &op.path {
            Some(p) => cx.apply_path(obj, p, op.value.as_ref(), false),
            None => cx.apply_no_path(obj, op.value.as_ref()),
        }
        .map_err(|e| at(i + 1, e))?;
    }
    Ok(res)
}

struct Cx<'r> {
    reg: &'r SchemaRegistry,
    kind: ResourceKind,
    op: PatchOpKind,
}

/// The JSON object that holds an attribute: the resource, or an extension's object.
fn scope<'m>(
    obj: &'m mut Map<String, Value>,
    ext: Option<&str>,
    create: bool,
) -> Option<&'m mut Map<String, Value>> {
    let Some(urn) = ext else { return Some(obj) };
    canonical_key(obj, urn);
    if create {
        let slot = obj
            .entry(urn.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
    }
    obj.get_mut(urn).and_then(Value::as_object_mut)
}

/// Renames a key written in another letter case to its canonical name.
fn canonical_key(map: &mut Map<String, Value>, name: &str) {
    if map.contains_key(name) {
        return;
    }
    if let Some(k) = map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned() {
        if let Some(v) = map.remove(&k) {
            map.insert(name.to_owned(), v);
        }
    }
}

fn drop_empty_scope(obj: &mut Map<String, Value>, ext: Option<&str>) {
    if let Some(urn) = ext {
        if obj
            .get(urn)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            obj.remove(urn);
        }
    }
}

fn is_absent(v: &Value) -> bool {
    matches!(v, Value::Null) || v.as_str().is_some_and(str::is_empty)
}

impl Cx<'_> {
    fn is_common(&self, a: &AttributeDef) -> bool {
        self.reg
            .common_attributes()
            .iter()
            .any(|c| std::ptr::eq(c, a))
    }

    /// Whether a URN belongs to this resource type (its core schema or an extension).
    fn own_urn(&self, urn: &str) -> bool {
        self.reg.core_schema(self.kind).id.eq_ignore_ascii_case(urn)
            || self.reg.extension(self.kind, urn).is_some()
    }

    fn apply_no_path(
        &self,
        obj: &mut Map<String, Value>,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let Some(Value::Object(m)) = value else {
            return Err(ScimError::invalid_value(
                "an operation without \"path\" needs an object \"value\" of attributes",
            ));
        };
        for (key, v) in m {
            self.apply_key(obj, key, v)?;
        }
        Ok(())
    }

    /// One key of a no-path value: `active`, `name.givenName`, `emails[type eq "work"].value`,
    /// `urn:…:enterprise:2.0:User:employeeNumber`, or an extension URN with an object.
    fn apply_key(
        &self,
        obj: &mut Map<String, Value>,
        key: &str,
        v: &Value,
    ) -> Result<(), ScimError> {
        if key.eq_ignore_ascii_case("schemas") {
            return Ok(());
        }
        let core = self.reg.core_schema(self.kind);
        let whole = self
            .reg
            .extension(self.kind, key)
            .map(|e| e.id.as_str())
            .or_else(|| {
                core.id
                    .eq_ignore_ascii_case(key)
                    .then_some(core.id.as_str())
            });
        if let Some(urn) = whole {
            return self.apply_schema_object(obj, urn, v);
        }
        let (urn, rest) = match self.reg.split_urn(self.kind, key) {
            Some((u, r)) => (Some(u), r),
            // Another namespace (Microsoft's ADSCIM, a custom extension): not ours.
            None if has_urn_prefix(key) => return Ok(()),
            None => (None, key),
        };
        let mut path = parse_patch_path(rest)?;
        if let Some(u) = urn {
            path.attr.urn = Some(u.to_owned());
        }
        self.apply_path(obj, &path, Some(v), true)
    }

    /// `{"urn:…:enterprise:2.0:User": {"employeeNumber": "1", "manager": "id"}}`, or a path
    /// naming a whole extension.
    fn apply_schema_object(
        &self,
        obj: &mut Map<String, Value>,
        urn: &str,
        v: &Value,
    ) -> Result<(), ScimError> {
        let is_ext = !self.reg.core_schema(self.kind).id.eq_ignore_ascii_case(urn);
        match v {
            Value::Object(inner) => {
                for (k, iv) in inner {
                    let mut path = parse_patch_path(k)?;
                    path.attr.urn = Some(urn.to_owned());
                    self.apply_path(obj, &path, Some(iv), true)?;
                }
                Ok(())
            }
            v if is_absent(v) && is_ext => {
                canonical_key(obj, urn);
                obj.remove(urn);
                Ok(())
            }
            _ => Err(ScimError::invalid_value(format!(
                "\"{urn}\" must be an object of its attributes"
            ))),
        }
    }

    /// Applies one operation at a path. `keyed`: the path came from a no-path value's key, where
    /// unknown names are skipped and `id`/`meta` ignored.
    fn apply_path(
        &self,
        obj: &mut Map<String, Value>,
        path: &PatchPath,
        value: Option<&Value>,
        keyed: bool,
    ) -> Result<(), ScimError> {
        // A path naming a whole extension: `urn:…:enterprise:2.0:User`.
        if path.value_filter.is_none() && path.attr.sub_attr.is_none() {
            if let Some(u) = &path.attr.urn {
                if let Some(ext) = self
                    .reg
                    .extension(self.kind, &format!("{u}:{}", path.attr.attr))
                {
                    let urn = ext.id.as_str();
                    return match (self.op, value) {
                        (PatchOpKind::Remove, _) => {
                            canonical_key(obj, urn);
                            obj.remove(urn);
                            Ok(())
                        }
                        (_, Some(v)) => self.apply_schema_object(obj, urn, v),
                        (_, None) => Ok(()),
                    };
                }
            }
        }
        let resolved = match self.reg.resolve(self.kind, &path.attr) {
            Ok(r) => r,
            // A namespace this service does not implement: skipped (see the module doc).
            Err(_) if path.attr.urn.as_deref().is_some_and(|u| !self.own_urn(u)) => return Ok(()),
            Err(_) if keyed => return Ok(()),
            Err(e) => return Err(e),
        };
        let a = resolved.attr;
        let shown = path_text(&path.attr);
        if self.kind == ResourceKind::Group && a.name == "members" {
            return Err(ScimError::internal(
                "Group member operations must go through split_group_ops",
            ));
        }
        if a.mutability == Mutability::ReadOnly {
            if keyed && self.is_common(a) {
                return Ok(());
            }
            return Err(ScimError::mutability(format!("\"{shown}\" is read-only")));
        }
        let ext = resolved.extension.then_some(resolved.schema_urn);
        let value = value.unwrap_or(&Value::Null);
        let out = match (&path.value_filter, resolved.sub) {
            (Some(f), _) => {
                if !(a.multi_valued && a.attr_type == AttrType::Complex)
                    || path.attr.sub_attr.is_some()
                {
                    return Err(ScimError::invalid_path(format!(
                        "\"{shown}\" is not a multi-valued complex attribute; it takes no value filter"
                    )));
                }
                check_filter_names(a, f)?;
                let fsub = match &path.sub_attr {
                    None => None,
                    Some(n) => Some(a.sub(n).ok_or_else(|| {
                        ScimError::invalid_path(format!(
                            "\"{n}\" is not a sub-attribute of \"{}\"",
                            a.name
                        ))
                    })?),
                };
                if fsub.is_some_and(|s| s.mutability == Mutability::ReadOnly) {
                    if keyed {
                        return Ok(());
                    }
                    return Err(ScimError::mutability(format!("\"{shown}\" is read-only")));
                }
                let Some(map) = scope(obj, ext, self.op != PatchOpKind::Remove) else {
                    return Ok(());
                };
                canonical_key(map, &a.name);
                self.filtered(map, resolved.schema_urn, a, f, fsub, value)
            }
            (None, Some(s)) => {
                if s.mutability == Mutability::ReadOnly {
                    if keyed {
                        return Ok(());
                    }
                    return Err(ScimError::mutability(format!("\"{shown}\" is read-only")));
                }
                let Some(map) = scope(obj, ext, self.op != PatchOpKind::Remove) else {
                    return Ok(());
                };
                canonical_key(map, &a.name);
                if a.multi_valued {
                    self.every_element_sub(map, a, s, value)
                } else {
                    self.singular_sub(map, a, s, value)
                }
            }
            (None, None) => {
                let Some(map) = scope(obj, ext, self.op != PatchOpKind::Remove) else {
                    return Ok(());
                };
                canonical_key(map, &a.name);
                self.whole(map, a, value)
            }
        };
        drop_empty_scope(obj, ext);
        out
    }

    /// `add`/`replace`/`remove` of a whole attribute.
    fn whole(
        &self,
        map: &mut Map<String, Value>,
        a: &AttributeDef,
        value: &Value,
    ) -> Result<(), ScimError> {
        if self.op == PatchOpKind::Remove {
            if a.multi_valued && !is_absent(value) {
                return self.remove_listed(map, a, value);
            }
            map.remove(&a.name);
            return Ok(());
        }
        let Some(new) = normalize_value(a, value, &a.name)? else {
            map.remove(&a.name);
            return Ok(());
        };
        match new {
            Value::Array(items) if self.op == PatchOpKind::Add => {
                let mut arr = match map.remove(&a.name) {
                    Some(Value::Array(old)) => old,
                    Some(v) if !v.is_null() => vec![v],
                    _ => Vec::new(),
                };
                let first_new = arr.len();
                let mut seen: HashSet<String> = arr.iter().map(Value::to_string).collect();
                for item in items {
                    if seen.insert(item.to_string()) {
                        arr.push(item);
                    }
                }
                self.bound(a, &arr)?;
                let new_idx: Vec<usize> = (first_new..arr.len()).collect();
                if new_idx.iter().any(|&i| is_primary(&arr[i])) {
                    clear_primary(&mut arr, &new_idx);
                }
                map.insert(a.name.clone(), Value::Array(arr));
            }
            // RFC 7644 §3.5.2.1/§3.5.2.3: sub-attributes not given are left unchanged. A new
            // `value` (another manager) is another object: replace it whole, no stale `$ref`.
            Value::Object(new) if !a.multi_valued => match map.get_mut(&a.name) {
                Some(Value::Object(old))
                    if new.get("value").is_none_or(|v| old.get("value") == Some(v)) =>
                {
                    old.extend(new)
                }
                _ => {
                    map.insert(a.name.clone(), Value::Object(new));
                }
            },
            other => {
                map.insert(a.name.clone(), other);
            }
        }
        Ok(())
    }

    /// `remove` of a multi-valued attribute with a value list: only those values go.
    fn remove_listed(
        &self,
        map: &mut Map<String, Value>,
        a: &AttributeDef,
        value: &Value,
    ) -> Result<(), ScimError> {
        let listed = normalize_value(a, value, &a.name)?.unwrap_or(Value::Null);
        let listed: &[Value] = listed.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let value_ci = !a.sub("value").is_some_and(|s| s.case_exact);
        let same = |el: &Value, item: &Value| {
            if el == item {
                return true;
            }
            match (
                el.get("value").and_then(Value::as_str),
                item.get("value").and_then(Value::as_str),
            ) {
                (Some(x), Some(y)) => {
                    if value_ci {
                        x.eq_ignore_ascii_case(y)
                    } else {
                        x == y
                    }
                }
                _ => false,
            }
        };
        if let Some(Value::Array(arr)) = map.get_mut(&a.name) {
            arr.retain(|el| !listed.iter().any(|item| same(el, item)));
            if arr.is_empty() {
                map.remove(&a.name);
            }
        }
        Ok(())
    }

    /// `name.givenName`, `urn:…:User:manager.value`.
    fn singular_sub(
        &self,
        map: &mut Map<String, Value>,
        a: &AttributeDef,
        s: &AttributeDef,
        value: &Value,
    ) -> Result<(), ScimError> {
        let name = format!("{}.{}", a.name, s.name);
        let new = match self.op {
            PatchOpKind::Remove => None,
            _ => normalize_scalar(s, value, &name)?,
        };
        match new {
            Some(n) => {
                let slot = map
                    .entry(a.name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Some(m) = slot.as_object_mut() {
                    canonical_key(m, &s.name);
                    m.insert(s.name.clone(), n);
                }
            }
            None => {
                if let Some(m) = map.get_mut(&a.name).and_then(Value::as_object_mut) {
                    canonical_key(m, &s.name);
                    m.remove(&s.name);
                    if m.is_empty() {
                        map.remove(&a.name);
                    }
                }
            }
        }
        Ok(())
    }

    /// `emails.type` with no filter: every element; with none yet, `add`/`replace` creates one.
    fn every_element_sub(
        &self,
        map: &mut Map<String, Value>,
        a: &AttributeDef,
        s: &AttributeDef,
        value: &Value,
    ) -> Result<(), ScimError> {
        let name = format!("{}.{}", a.name, s.name);
        let new = match self.op {
            PatchOpKind::Remove => None,
            _ => normalize_scalar(s, value, &name)?,
        };
        let mut arr = match map.remove(&a.name) {
            Some(Value::Array(arr)) => arr,
            _ => Vec::new(),
        };
        match new {
            Some(n) if arr.is_empty() => {
                arr.push(Value::Object(Map::from_iter([(s.name.clone(), n)])))
            }
            Some(n) => {
                for el in arr.iter_mut().filter_map(Value::as_object_mut) {
                    canonical_key(el, &s.name);
                    el.insert(s.name.clone(), n.clone());
                }
            }
            None => {
                for el in arr.iter_mut().filter_map(Value::as_object_mut) {
                    canonical_key(el, &s.name);
                    el.remove(&s.name);
                }
                arr.retain(|el| !el.as_object().is_some_and(Map::is_empty));
            }
        }
        check_primary(a, &arr, &a.name)?;
        if !arr.is_empty() {
            map.insert(a.name.clone(), Value::Array(arr));
        }
        Ok(())
    }

    /// `emails[type eq "work"]` and `emails[type eq "work"].value`.
    fn filtered(
        &self,
        map: &mut Map<String, Value>,
        schema_urn: &str,
        a: &AttributeDef,
        f: &Filter,
        fsub: Option<&AttributeDef>,
        value: &Value,
    ) -> Result<(), ScimError> {
        let mut arr = match map.remove(&a.name) {
            Some(Value::Array(arr)) => arr,
            Some(v) if !v.is_null() => vec![v],
            _ => Vec::new(),
        };
        let attr_path = AttrPath {
            urn: Some(schema_urn.to_owned()),
            attr: a.name.clone(),
            sub_attr: None,
        };
        let case = |p: &AttrPath| self.reg.case_exact(self.kind, p);
        let hits: Vec<usize> = (0..arr.len())
            .filter(|&i| matches_element(&attr_path, f, &arr[i], &case))
            .collect();
        let result = self.filtered_on(&mut arr, a, f, fsub, value, &hits);
        // Put the array back before reporting, so `map` is never left without it on success.
        if !arr.is_empty() {
            map.insert(a.name.clone(), Value::Array(arr));
        }
        result
    }

    fn filtered_on(
        &self,
        arr: &mut Vec<Value>,
        a: &AttributeDef,
        f: &Filter,
        fsub: Option<&AttributeDef>,
        value: &Value,
        hits: &[usize],
    ) -> Result<(), ScimError> {
        let new = match (self.op, fsub) {
            (PatchOpKind::Remove, _) => None,
            (_, Some(s)) => normalize_scalar(s, value, &format!("{}.{}", a.name, s.name))?,
            (_, None) => normalize_single(a, value, &a.name)?,
        };
        let Some(new) = new else {
            // remove, or add/replace with null/"": clear what the path names.
            match fsub {
                Some(s) => {
                    for &i in hits {
                        if let Some(el) = arr.get_mut(i).and_then(Value::as_object_mut) {
                            canonical_key(el, &s.name);
                            el.remove(&s.name);
                        }
                    }
                    arr.retain(|el| !el.as_object().is_some_and(Map::is_empty));
                }
                None => {
                    let mut i = 0;
                    arr.retain(|_| {
                        i += 1;
                        !hits.contains(&(i - 1))
                    });
                }
            }
            return Ok(());
        };
        let touched: Vec<usize> = if hits.is_empty() {
            // Entra: add/replace on `emails[type eq "work"].value` with no work email creates it.
            let mut el = Map::new();
            if !eq_terms(f, a, &mut el) {
                return Err(ScimError::no_target(format!(
                    "no value of \"{}\" matches the filter, and the filter (only \"eq\" terms \
                     joined by \"and\" can) does not describe a new one",
                    a.name
                )));
            }
            match (&new, fsub) {
                (n, Some(s)) => {
                    el.insert(s.name.clone(), n.clone());
                }
                (Value::Object(m), None) => el.extend(m.clone()),
                _ => {}
            }
            arr.push(Value::Object(el));
            self.bound(a, arr)?;
            vec![arr.len() - 1]
        } else {
            for &i in hits {
                let Some(el) = arr.get_mut(i) else { continue };
                match (fsub, &new) {
                    (Some(s), n) => {
                        if let Some(m) = el.as_object_mut() {
                            canonical_key(m, &s.name);
                            m.insert(s.name.clone(), n.clone());
                        } else {
                            *el = Value::Object(Map::from_iter([(s.name.clone(), n.clone())]));
                        }
                    }
                    (None, Value::Object(nm)) => match (self.op, el.as_object_mut()) {
                        (PatchOpKind::Add, Some(m)) => m.extend(nm.clone()),
                        _ => {
                            // replace: the given object, still matching the filter's eq terms.
                            let mut m = Map::new();
                            eq_terms(f, a, &mut m);
                            m.extend(nm.clone());
                            *el = Value::Object(m);
                        }
                    },
                    (None, other) => *el = other.clone(),
                }
            }
            hits.to_vec()
        };
        if touched.iter().any(|&i| arr.get(i).is_some_and(is_primary)) {
            clear_primary(arr, &touched);
        }
        check_primary(a, arr, &a.name)
    }

    fn bound(&self, a: &AttributeDef, arr: &[Value]) -> Result<(), ScimError> {
        if arr.len() > MAX_ARRAY_LEN {
            return Err(ScimError::invalid_value(format!(
                "\"{}\" would have {} values; at most {MAX_ARRAY_LEN} are accepted",
                a.name,
                arr.len()
            )));
        }
        Ok(())
    }
}

fn is_primary(v: &Value) -> bool {
    v.get("primary") == Some(&Value::Bool(true))
}

/// RFC 7644 §3.5.2: a value set `primary: true` makes every other value `primary: false`.
fn clear_primary(arr: &mut [Value], keep: &[usize]) {
    for (i, el) in arr.iter_mut().enumerate() {
        if !keep.contains(&i) && is_primary(el) {
            if let Some(m) = el.as_object_mut() {
                m.insert("primary".to_owned(), Value::Bool(false));
            }
        }
    }
}

/// The `eq` terms of a filter made only of `eq` joined by `and`, as the sub-attributes of a new
/// element (`type eq "work"` → `{"type": "work"}`). False when the filter says anything else.
fn eq_terms(f: &Filter, a: &AttributeDef, out: &mut Map<String, Value>) -> bool {
    match f {
        Filter::Compare(p, CompareOp::Eq, lit) if p.urn.is_none() && p.sub_attr.is_none() => {
            let Some(s) = a.sub(&p.attr) else {
                return false;
            };
            let v = match lit {
                CompValue::Null => return false,
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::String(s) => Value::String(s.clone()),
            };
            match normalize_scalar(s, &v, &s.name) {
                Ok(Some(n)) => {
                    out.insert(s.name.clone(), n);
                    true
                }
                _ => false,
            }
        }
        Filter::And(l, r) => eq_terms(l, a, out) && eq_terms(r, a, out),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::resource::validate_patched;
    use crate::scim::schema::{ENTERPRISE_USER_SCHEMA as ENT, USER_SCHEMA};
    use crate::scim::ScimType;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": [USER_SCHEMA, ENT],
            "id": "u1",
            "externalId": "e1",
            "userName": "alice@example.com",
            "active": true,
            "displayName": "Alice Smith",
            "title": "Engineer",
            "name": {"givenName": "Alice", "familyName": "Smith"},
            "emails": [{"value": "alice@example.com", "type": "work", "primary": true}],
            "meta": {"resourceType": "User", "version": "W/\"1\""},
            ENT: {"employeeNumber": "42", "manager": {"value": "m1"}}
        })
    }

    fn group() -> Value {
        json!({"schemas": [crate::scim::schema::GROUP_SCHEMA], "id": "g1", "displayName": "Admins",
               "meta": {"resourceType": "Group"}})
    }

    fn req(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops})
    }

    /// parse → apply → validate, as the HTTP layer runs it.
    fn run(kind: ResourceKind, current: &Value, ops: Value) -> Result<Value, ScimError> {
        let ops = parse_patch_request(&req(ops))?;
        let patched = apply_patch(kind, current, &ops)?;
        validate_patched(kind, &patched, current).map(|n| n.resource)
    }

    fn user_patch(ops: Value) -> Result<Value, ScimError> {
        run(ResourceKind::User, &user(), ops)
    }

    // ---- parsing ----

    #[test]
    fn parse_accepts_idp_spellings_and_ignores_extra_keys() {
        let ops = parse_patch_request(&req(json!([
            {"op": "Replace", "path": "active", "value": "False", "name": "Entra sends this"},
            {"op": "ADD", "path": "", "value": {"title": "x"}},
            {"op": "remove", "path": "title"}
        ])))
        .unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].op, PatchOpKind::Replace);
        assert_eq!(ops[0].path.as_ref().unwrap().attr.attr, "active");
        assert_eq!(ops[1].op, PatchOpKind::Add);
        assert!(ops[1].path.is_none(), "an empty path is no path");
        assert_eq!(ops[2].value, None);
        let ops = parse_patch_request(&json!({"schemas": [PATCH_OP_SCHEMA.to_uppercase()], "operations": [{"op": "replace", "path": "title", "value": null}]})).unwrap();
        assert_eq!(ops[0].value, Some(Value::Null));
    }

    #[test]
    fn parse_errors() {
        let cases = [
            (
                json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]}),
                ScimType::InvalidSyntax,
            ),
            (req(json!([])), ScimType::InvalidSyntax),
            (req(json!({"op": "add"})), ScimType::InvalidSyntax),
            (
                req(json!([{"op": "copy", "path": "title", "value": "x"}])),
                ScimType::InvalidSyntax,
            ),
            (req(json!(["add"])), ScimType::InvalidSyntax),
            (
                req(json!([{"op": "add", "path": "title"}])),
                ScimType::InvalidValue,
            ),
            (req(json!([{"op": "remove"}])), ScimType::NoTarget),
            (
                req(json!([{"op": "remove", "value": {"title": "x"}}])),
                ScimType::NoTarget,
            ),
            (
                req(json!([{"op": "add", "path": 3, "value": "x"}])),
                ScimType::InvalidPath,
            ),
            (
                req(json!([{"op": "add", "path": "emails[type eq]", "value": "x"}])),
                ScimType::InvalidPath,
            ),
        ];
        for (body, want) in cases {
            let e = parse_patch_request(&body).unwrap_err();
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(want)),
                "{body}: {}",
                e.detail
            );
        }
        let many: Vec<Value> = (0..=MAX_OPERATIONS)
            .map(|_| json!({"op": "remove", "path": "title"}))
            .collect();
        assert_eq!(
            parse_patch_request(&req(Value::Array(many)))
                .unwrap_err()
                .scim_type,
            Some(ScimType::InvalidValue)
        );
        let e = parse_patch_request(&req(
            json!([{"op": "add", "path": "title", "value": "x"}, {"op": "remove"}]),
        ))
        .unwrap_err();
        assert!(e.detail.starts_with("operation 2:"), "{}", e.detail);
    }

    // ---- Okta ----

    #[test]
    fn okta_deactivation_no_path_replace() {
        let r = user_patch(json!([{"op": "replace", "value": {"active": false}}])).unwrap();
        assert_eq!(r["active"], false);
        assert_eq!(r["userName"], "alice@example.com");
        assert_eq!(r["id"], "u1");
    }

    #[test]
    fn okta_group_rename_carries_read_only_id() {
        let ops = parse_patch_request(&req(json!([
            {"op": "replace", "value": {"id": "g1", "displayName": "Admins EMEA", "schemas": ["x"], "meta": {}}}
        ])))
        .unwrap();
        let (rest, changes) = split_group_ops(ops).unwrap();
        assert!(changes.is_empty());
        let patched = apply_patch(ResourceKind::Group, &group(), &rest).unwrap();
        let n = validate_patched(ResourceKind::Group, &patched, &group()).unwrap();
        assert_eq!(n.resource["displayName"], "Admins EMEA");
        assert_eq!(n.resource["id"], "g1");
        assert_eq!(n.members, None);
    }

    #[test]
    fn okta_membership_remove_by_filter_then_add() {
        let ops = parse_patch_request(&req(json!([
            {"op": "remove", "path": "members[value eq \"00u1\"]"},
            {"op": "add", "path": "members", "value": [{"value": "00u2", "display": "b@x"}, {"value": "00u3"}]}
        ])))
        .unwrap();
        let (rest, changes) = split_group_ops(ops).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            changes,
            vec![
                MemberChange::Remove(vec!["00u1".into()]),
                MemberChange::Add(vec![
                    MemberRef {
                        value: "00u2".into(),
                        member_type: None
                    },
                    MemberRef {
                        value: "00u3".into(),
                        member_type: None
                    }
                ])
            ]
        );
    }

    // ---- Entra ----

    #[test]
    fn entra_disable_with_string_booleans() {
        for v in ["False", "false"] {
            let r = user_patch(json!([{"op": "Replace", "path": "active", "value": v}])).unwrap();
            assert_eq!(r["active"], false, "{v}");
        }
        let r = user_patch(json!([{"op": "Add", "path": "active", "value": "False"}])).unwrap();
        assert_eq!(r["active"], false);
        // aadOptscim062020: a real boolean, lowercase op.
        let r = user_patch(json!([{"op": "replace", "path": "active", "value": false}])).unwrap();
        assert_eq!(r["active"], false);
        // The patched JSON carries the string through; validation coerces it.
        let ops = parse_patch_request(&req(
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        ))
        .unwrap();
        let patched = apply_patch(ResourceKind::User, &user(), &ops).unwrap();
        assert_eq!(patched["active"], false);
    }

    #[test]
    fn entra_value_path_creates_missing_element() {
        let mut current = user();
        current.as_object_mut().unwrap().remove("emails");
        for op in ["Add", "Replace"] {
            let r = run(
                ResourceKind::User,
                &current,
                json!([{"op": op, "path": "emails[type eq \"work\"].value", "value": "alice@contoso.com"}]),
            )
            .unwrap();
            assert_eq!(
                r["emails"],
                json!([{"type": "work", "value": "alice@contoso.com"}]),
                "{op}"
            );
        }
        let r = run(
            ResourceKind::User,
            &current,
            json!([
                {"op": "Add", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1 555 0100"},
                {"op": "Add", "path": "addresses[type eq \"work\"].streetAddress", "value": "1 Main St"},
                {"op": "Add", "path": "addresses[type eq \"work\"].locality", "value": "Springfield"}
            ]),
        )
        .unwrap();
        assert_eq!(
            r["phoneNumbers"],
            json!([{"type": "mobile", "value": "+1 555 0100"}])
        );
        assert_eq!(
            r["addresses"],
            json!([{"type": "work", "streetAddress": "1 Main St", "locality": "Springfield"}])
        );
    }

    #[test]
    fn entra_value_path_updates_matching_element() {
        let r = user_patch(
            json!([{"op": "Replace", "path": "emails[type eq \"WORK\"].value", "value": "new@x"}]),
        )
        .unwrap();
        assert_eq!(
            r["emails"],
            json!([{"value": "new@x", "type": "work", "primary": true}])
        );
    }

    #[test]
    fn entra_manager_forms() {
        let path = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
        let r = user_patch(json!([{"op": "Add", "path": path, "value": "m2"}])).unwrap();
        assert_eq!(r[ENT]["manager"], json!({"value": "m2"}));
        let r =
            user_patch(json!([{"op": "Replace", "path": path, "value": {"value": "m3"}}])).unwrap();
        assert_eq!(r[ENT]["manager"], json!({"value": "m3"}));
        let r = user_patch(json!([{"op": "Remove", "path": path}])).unwrap();
        assert!(r[ENT].get("manager").is_none());
        assert_eq!(r[ENT]["employeeNumber"], "42");
        // Removing the last extension attribute drops the extension from `schemas`.
        let r = user_patch(json!([
            {"op": "Remove", "path": path},
            {"op": "Remove", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"}
        ]))
        .unwrap();
        assert!(r.get(ENT).is_none());
        assert_eq!(r["schemas"], json!([USER_SCHEMA]));
        // A list of one, as some clients send for single-valued attributes.
        let r = user_patch(json!([{"op": "Replace", "path": path, "value": [{"value": "m5"}]}]))
            .unwrap();
        assert_eq!(r[ENT]["manager"], json!({"value": "m5"}));
        // A string manager in the same request as a disable must not block it.
        let r = user_patch(json!([
            {"op": "Replace", "path": path, "value": "m9"},
            {"op": "Replace", "path": "active", "value": "False"}
        ]))
        .unwrap();
        assert_eq!(
            (r["active"].clone(), r[ENT]["manager"]["value"].clone()),
            (json!(false), json!("m9"))
        );
    }

    #[test]
    fn entra_aad_opt_no_path_replace_with_dotted_and_urn_keys() {
        let r = user_patch(json!([{
            "op": "replace",
            "value": {
                "displayName": "Pvlo",
                "emails[type eq \"work\"].value": "pvlo@test.example",
                "name.givenName": "Henry",
                "name.familyName": "Cavill",
                "externalId": "Eqpj",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "Eqpj",
                "active": false
            }
        }]))
        .unwrap();
        assert_eq!(r["displayName"], "Pvlo");
        assert_eq!(r["emails"][0]["value"], "pvlo@test.example");
        assert_eq!(
            r["name"],
            json!({"givenName": "Henry", "familyName": "Cavill"})
        );
        assert_eq!(r["externalId"], "Eqpj");
        assert_eq!(r[ENT]["employeeNumber"], "Eqpj");
        assert_eq!(r[ENT]["manager"]["value"], "m1");
        assert_eq!(r["active"], false);
    }

    #[test]
    fn no_path_extension_object_and_foreign_namespaces() {
        let r = user_patch(json!([{
            "op": "replace",
            "value": {
                ENT: {"department": "Sales", "manager": "m4"},
                "urn:ietf:params:scim:schemas:extension:CustomExt:2.0:User:costCode": "x",
                "urn:ietf:params:scim:schemas:extension:ADSCIM:2.0:User": {"x": 1},
                "nosuchAttribute": 1,
                "ACTIVE": "False"
            }
        }]))
        .unwrap();
        assert_eq!(r[ENT]["department"], "Sales");
        assert_eq!(r[ENT]["manager"], json!({"value": "m4"}));
        assert_eq!(r["active"], false);
        // With a path: a foreign namespace is skipped, the disable still happens.
        let r = user_patch(json!([
            {"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:CustomExt:2.0:User:costCode", "value": "x"},
            {"op": "Replace", "path": "active", "value": "False"}
        ]))
        .unwrap();
        assert_eq!(r["active"], false);
    }

    #[test]
    fn entra_member_add_and_remove_forms() {
        let ops = parse_patch_request(&req(json!([
            {"op": "Add", "path": "members", "value": [{"$ref": null, "value": "u1"}]},
            {"op": "Remove", "path": "members", "value": [{"value": "u2"}]},
            {"op": "remove", "path": "members[value eq \"u3\" or value eq \"u4\"]"},
            {"op": "remove", "path": "members[type eq \"Group\"]"},
            {"op": "Replace", "path": "members", "value": [{"value": "u5", "type": "User"}]},
            {"op": "Remove", "path": "members"},
            {"op": "Replace", "path": "displayName", "value": "New"}
        ])))
        .unwrap();
        let (rest, changes) = split_group_ops(ops).unwrap();
        assert_eq!(changes.len(), 6);
        assert_eq!(
            changes[0],
            MemberChange::Add(vec![MemberRef {
                value: "u1".into(),
                member_type: None
            }])
        );
        // Never "remove everyone" (apache/directory-scimple #436).
        assert_eq!(changes[1], MemberChange::Remove(vec!["u2".into()]));
        assert_eq!(
            changes[2],
            MemberChange::Remove(vec!["u3".into(), "u4".into()])
        );
        assert!(matches!(changes[3], MemberChange::RemoveMatching(_)));
        assert_eq!(
            changes[4],
            MemberChange::Replace(vec![MemberRef {
                value: "u5".into(),
                member_type: Some("User".into())
            }])
        );
        assert_eq!(changes[5], MemberChange::RemoveAll);
        assert_eq!(rest.len(), 1);
        let r = apply_patch(ResourceKind::Group, &group(), &rest).unwrap();
        assert_eq!(r["displayName"], "New");
    }

    #[test]
    fn member_ops_split_from_no_path_values_and_bad_shapes() {
        let ops = parse_patch_request(&req(json!([
            {"op": "replace", "value": {"displayName": "X", "Members": [{"value": "u1"}]}},
            {"op": "add", "value": {"members": [{"value": "u2"}]}}
        ])))
        .unwrap();
        let (rest, changes) = split_group_ops(ops).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].value, Some(json!({"displayName": "X"})));
        assert!(matches!(&changes[0], MemberChange::Replace(v) if v[0].value == "u1"));
        assert!(matches!(&changes[1], MemberChange::Add(v) if v[0].value == "u2"));
        for bad in [
            json!({"op": "add", "path": "members[value eq \"x\"]", "value": [{"value": "y"}]}),
            json!({"op": "replace", "path": "members[value eq \"x\"].display", "value": "y"}),
            json!({"op": "remove", "path": "members.value"}),
            json!({"op": "add", "path": "members", "value": [{"display": "no id"}]}),
            json!({"op": "remove", "path": "members[nosuch eq \"x\"]"}),
        ] {
            let ops = parse_patch_request(&req(json!([bad]))).unwrap();
            assert!(split_group_ops(ops).is_err(), "{bad}");
        }
        // Unsplit member ops never reach the stored JSON.
        let ops = parse_patch_request(&req(
            json!([{"op": "add", "path": "members", "value": [{"value": "u"}]}]),
        ))
        .unwrap();
        assert_eq!(
            apply_patch(ResourceKind::Group, &group(), &ops)
                .unwrap_err()
                .status,
            500
        );
    }

    // ---- general semantics ----

    #[test]
    fn atomic_a_failing_operation_applies_nothing() {
        let before = user();
        for bad in [
            json!({"op": "replace", "path": "nosuch", "value": 1}),
            json!({"op": "replace", "path": "title", "value": {"a": 1}}),
            json!({"op": "replace", "path": "id", "value": "x"}),
        ] {
            let ops = parse_patch_request(&req(
                json!([{"op": "replace", "path": "active", "value": false}, bad]),
            ))
            .unwrap();
            let e = apply_patch(ResourceKind::User, &before, &ops).unwrap_err();
            assert!(e.detail.starts_with("operation 2:"), "{}", e.detail);
            assert_eq!(before, user());
        }
    }

    #[test]
    fn unknown_paths_and_wrong_types() {
        let cases = [
            (
                json!({"op": "replace", "path": "nosuch", "value": 1}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op": "replace", "path": "name.nosuch", "value": 1}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op": "replace", "path": "title[value eq \"x\"]", "value": 1}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op": "replace", "path": "emails[nosuch eq \"x\"].value", "value": "v"}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op": "replace", "path": "emails[type eq \"work\"].nosuch", "value": "v"}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op": "replace", "path": "active", "value": "maybe"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"op": "replace", "path": "name", "value": [1]}),
                ScimType::InvalidValue,
            ),
            (
                json!({"op": "replace", "value": "not an object"}),
                ScimType::InvalidValue,
            ),
        ];
        for (op, want) in cases {
            let e = user_patch(json!([op])).unwrap_err();
            assert_eq!(e.scim_type, Some(want), "{op}: {}", e.detail);
        }
    }

    #[test]
    fn read_only_attributes_are_refused_with_a_path() {
        for path in [
            "id",
            "meta",
            "meta.lastModified",
            "groups",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.displayName",
        ] {
            let e = user_patch(json!([{"op": "replace", "path": path, "value": "x"}])).unwrap_err();
            assert_eq!(e.scim_type, Some(ScimType::Mutability), "{path}");
        }
        let e =
            user_patch(json!([{"op": "add", "value": {"groups": [{"value": "g1"}]}}])).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::Mutability));
    }

    #[test]
    fn null_and_empty_clear_the_target() {
        let r = user_patch(json!([
            {"op": "Replace", "path": "title", "value": ""},
            {"op": "Replace", "path": "displayName", "value": null},
            {"op": "replace", "value": {"name.givenName": null}},
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": ""}
        ]))
        .unwrap();
        assert!(r.get("title").is_none() && r.get("displayName").is_none());
        assert_eq!(r["name"], json!({"familyName": "Smith"}));
        assert_eq!(r["emails"], json!([{"type": "work", "primary": true}]));
    }

    #[test]
    fn sub_attributes_and_complex_merge() {
        let r = user_patch(json!([
            {"op": "replace", "path": "name.familyName", "value": "Jones"},
            {"op": "add", "path": "name", "value": {"middleName": "Q"}},
            {"op": "remove", "path": "name.givenName"}
        ]))
        .unwrap();
        assert_eq!(r["name"], json!({"familyName": "Jones", "middleName": "Q"}));
        let r = user_patch(json!([{"op": "replace", "path": "emails.type", "value": "other"}]))
            .unwrap();
        assert_eq!(r["emails"][0]["type"], "other");
        let r = user_patch(json!([{"op": "remove", "path": "name"}])).unwrap();
        assert!(r.get("name").is_none());
    }

    #[test]
    fn multi_valued_add_replace_remove() {
        // add appends, without duplicates
        let r = user_patch(json!([{"op": "add", "path": "emails", "value": [
            {"value": "alice@example.com", "type": "work", "primary": true},
            {"value": "home@x", "type": "home"}
        ]}]))
        .unwrap();
        assert_eq!(r["emails"].as_array().unwrap().len(), 2);
        // replace replaces the whole array (a single object is a list of one)
        let r =
            user_patch(json!([{"op": "replace", "path": "emails", "value": {"value": "only@x"}}]))
                .unwrap();
        assert_eq!(r["emails"], json!([{"value": "only@x"}]));
        // remove with a value list removes only those
        let r = user_patch(json!([
            {"op": "add", "path": "emails", "value": [{"value": "b@x"}, {"value": "c@x"}]},
            {"op": "remove", "path": "emails", "value": [{"value": "B@X"}]}
        ]))
        .unwrap();
        let values: Vec<&str> = r["emails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"].as_str().unwrap())
            .collect();
        assert_eq!(values, vec!["alice@example.com", "c@x"]);
        // remove through a filter that matches nothing is a no-op success
        let r = user_patch(json!([{"op": "remove", "path": "emails[type eq \"home\"]"}])).unwrap();
        assert_eq!(r["emails"], user()["emails"]);
        // a filter that cannot describe a new element: noTarget
        let e = user_patch(
            json!([{"op": "replace", "path": "emails[type ne \"work\"].value", "value": "x"}]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::NoTarget));
    }

    #[test]
    fn a_new_primary_clears_the_old_one() {
        let r = user_patch(json!([{"op": "add", "path": "emails", "value": [{"value": "new@x", "type": "home", "primary": true}]}])).unwrap();
        assert_eq!(r["emails"][0]["primary"], false);
        assert_eq!(r["emails"][1]["primary"], true);
        let r = user_patch(json!([
            {"op": "add", "path": "emails", "value": [{"value": "h@x", "type": "home"}]},
            {"op": "replace", "path": "emails[type eq \"home\"].primary", "value": "True"}
        ]))
        .unwrap();
        assert_eq!(r["emails"][0]["primary"], false);
        assert_eq!(r["emails"][1]["primary"], true);
        // Two primaries in one value: refused.
        let e = user_patch(json!([{"op": "replace", "path": "emails", "value": [
            {"value": "a@x", "primary": true}, {"value": "b@x", "primary": true}
        ]}]))
        .unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidValue));
    }

    #[test]
    fn whole_extension_paths() {
        let r = user_patch(json!([{"op": "remove", "path": ENT}])).unwrap();
        assert!(r.get(ENT).is_none());
        let r = user_patch(json!([{"op": "add", "path": ENT, "value": {"costCenter": "CC1"}}]))
            .unwrap();
        assert_eq!(r[ENT]["costCenter"], "CC1");
        assert_eq!(r[ENT]["employeeNumber"], "42");
    }

    #[test]
    fn password_is_accepted_but_never_kept() {
        let r =
            user_patch(json!([{"op": "replace", "path": "password", "value": "s3cret"}])).unwrap();
        assert!(r.get("password").is_none());
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z0-9 @.]{0,8}".prop_map(Value::String),
            prop_oneof![Just("False"), Just("true"), Just("work"), Just("")]
                .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let keys = prop_oneof![
                Just("value"),
                Just("type"),
                Just("primary"),
                Just("givenName"),
                Just("active"),
                Just("emails"),
                Just("name.givenName"),
                Just("members"),
                Just("id"),
                Just("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"),
                Just("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
            ]
            .prop_map(str::to_owned);
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn random_operations_never_panic(
            ops in proptest::collection::vec(
                (0usize..3, proptest::option::of(proptest::sample::select(vec![
                    "active", "emails", "emails.value", "emails[type eq \"work\"]",
                    "emails[type eq \"work\"].value", "emails[primary eq true].primary", "name",
                    "name.givenName", "title", "id", "meta.created", "members",
                    "members[value eq \"u1\"]", "addresses[type eq \"work\" and primary eq false].locality",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                    "urn:x:y:z", "emails[not (type eq \"x\")].value", "x509Certificates.value",
                ])), proptest::option::of(json_value())),
                1..5,
            ),
            group_kind in proptest::bool::ANY,
        ) {
            let kind = if group_kind { ResourceKind::Group } else { ResourceKind::User };
            let base = if group_kind { group() } else { user() };
            let ops: Vec<Value> = ops
                .into_iter()
                .map(|(op, path, value)| {
                    let mut m = Map::new();
                    m.insert("op".into(), json!(["add", "Replace", "remove"][op]));
                    if let Some(p) = path {
                        m.insert("path".into(), json!(p));
                    }
                    if let Some(v) = value {
                        m.insert("value".into(), v);
                    }
                    Value::Object(m)
                })
                .collect();
            if let Ok(parsed) = parse_patch_request(&req(Value::Array(ops))) {
                let parsed = if kind == ResourceKind::Group {
                    match split_group_ops(parsed) {
                        Ok((rest, _)) => rest,
                        Err(_) => return Ok(()),
                    }
                } else {
                    parsed
                };
                if let Ok(patched) = apply_patch(kind, &base, &parsed) {
                    let _ = validate_patched(kind, &patched, &base);
                }
            }
        }
    }
}
