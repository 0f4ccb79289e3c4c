//! SCIM filter AST → a parameterised SQL condition, per engine, so filters run in the database.
//!
//! Every literal and every JSON path is a bound parameter (`$N`); attribute names reach SQL only
//! after resolving against the schema registry, and then only as parameters too. The indexed
//! attributes map to columns (`id`, `userName` → `user_name_ci`, `externalId`, `displayName` →
//! `display_name_ci`, `active`, `meta.created`, `meta.lastModified`), so `userName eq "x"` is an
//! index lookup; everything else reads the stored JSON (`json_extract` / `jsonb` operators), with
//! multi-valued attributes matched element by element (`EXISTS` over `json_each` /
//! `jsonb_array_elements`). User `groups` and Group `members` come from `group_members`.
//!
//! Semantics follow `scim::filter::eval` (the in-memory evaluator): `ne` is the negation of
//! `eq` (an absent value is "not equal"), `eq null` matches absent values, a complex value
//! compared directly compares its `value`, a literal of the wrong type never matches. SQL NULLs
//! never leak through `not` (each negation is `NOT COALESCE(…, FALSE)`).
//!
//! Known limits: on SQLite, `lower()` folds ASCII letters only, so case-insensitive matching of
//! non-ASCII letters works on the indexed columns (folded in Rust) but not inside the JSON;
//! dateTime values inside the JSON compare as text in the fixed timestamp format.
//!
//! Not here: parsing filters (`scim::filter`), paging (`list.rs`).

use std::cell::Cell;

use chrono::{DateTime, Utc};
use serde_json::Number;

use super::{DirError, MAX_NESTING};
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{AttrType, AttributeDef, ResourceKind, SchemaRegistry};
use crate::scim::ScimError;
use crate::store::{ts_from, Engine};

pub use crate::store::{bind_args, SqlValue};

/// Collects the parameters of one statement; `$1` is conventionally the tenant id.
#[derive(Debug)]
pub struct SqlBuilder {
    pub engine: Engine,
    pub args: Vec<SqlValue>,
}

impl SqlBuilder {
    pub fn new(engine: Engine) -> Self {
        SqlBuilder {
            engine,
            args: Vec::new(),
        }
    }

    /// Add a parameter; returns its placeholder (`$N`).
    pub fn arg(&mut self, v: SqlValue) -> String {
        self.args.push(v);
        format!("${}", self.args.len())
    }

    pub fn text(&mut self, s: impl Into<String>) -> String {
        self.arg(SqlValue::Text(s.into()))
    }
}

/// What a filter is evaluated against, and the SQL aliases it assumes:
/// `Users` / `Groups`: table alias `r`; `Members`: `group_members gm` with `users mu` and
/// `groups mg` left-joined on the member id (paths are relative to one member: `value`, `type`,
/// `display`). The tenant id must be parameter `$1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Users,
    Groups,
    Members,
}

/// The SQL condition for `filter` (to AND with `r.tenant_id = $1`), its parameters added to `b`.
pub fn filter_sql(b: &mut SqlBuilder, target: Target, filter: &Filter) -> Result<String, DirError> {
    let mut t = Tr {
        b,
        used_depth: Cell::new(false),
    };
    let scope = match target {
        Target::Users => Scope::Resource(ResourceKind::User),
        Target::Groups => Scope::Resource(ResourceKind::Group),
        Target::Members => Scope::Member,
    };
    t.cond(&scope, filter, 0)
}

/// The type of a sort key as it comes back from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortTy {
    Text,
    Int,
    Real,
}

/// An expression to order by (NULL when the resource has no value).
#[derive(Debug, Clone)]
pub struct SortKey {
    pub expr: String,
    pub ty: SortTy,
}

/// The sort expression for `sortBy` (RFC 7644 §3.4.2.3): case-insensitive strings sort folded,
/// a multi-valued attribute sorts by its first value.
pub fn sort_sql(
    b: &mut SqlBuilder,
    kind: ResourceKind,
    path: &AttrPath,
) -> Result<SortKey, DirError> {
    let mut t = Tr {
        b,
        used_depth: Cell::new(false),
    };
    let node = t.resolve(&Scope::Resource(kind), path)?;
    let s = match node {
        Node::Scalar(s) => s,
        Node::Complex { keys, attr } => match attr.sub("value") {
            Some(v) => t.json_scalar(Doc::Resource, &keys_plus(&keys, &v.name), v),
            None => {
                return Err(bad_filter(format!(
                    "cannot sort by the complex attribute {}",
                    path_text(path)
                )))
            }
        },
        Node::Multi { keys, attr, sub } => {
            let mut k = keys.clone();
            k.push(Key::Index(0));
            match sub.or_else(|| attr.sub("value")) {
                Some(s) if attr.attr_type == AttrType::Complex => {
                    k.push(Key::Name(s.name.clone()));
                    t.json_scalar(Doc::Resource, &k, s)
                }
                _ => t.json_scalar(Doc::Resource, &k, attr),
            }
        }
        Node::UserGroups { .. } | Node::Members { .. } => {
            return Err(bad_filter(format!("cannot sort by {}", path_text(path))))
        }
    };
    let engine = t.b.engine;
    Ok(match s.ty {
        Ty::Str | Ty::DateTime => {
            let e = if !s.exact && !s.folded {
                format!("lower({})", s.expr)
            } else {
                s.expr
            };
            let e = if s.json && engine == Engine::Sqlite {
                format!("CAST({e} AS TEXT)")
            } else {
                e
            };
            SortKey {
                expr: e,
                ty: SortTy::Text,
            }
        }
        Ty::Bool => SortKey {
            expr: s.expr,
            ty: SortTy::Int,
        },
        Ty::Num => {
            let real = match engine {
                Engine::Sqlite => "REAL",
                Engine::Postgres => "DOUBLE PRECISION",
            };
            SortKey {
                expr: format!("CAST({} AS {real})", s.expr),
                ty: SortTy::Real,
            }
        }
    })
}

fn bad_filter(detail: impl Into<String>) -> DirError {
    DirError::Invalid(ScimError::invalid_filter(detail))
}

fn path_text(p: &AttrPath) -> String {
    let mut s = String::new();
    if let Some(u) = &p.urn {
        s.push_str(u);
        s.push(':');
    }
    s.push_str(&p.attr);
    if let Some(x) = &p.sub_attr {
        s.push('.');
        s.push_str(x);
    }
    s
}

/// Deepest filter nesting translated (the parser bounds it already; this is a second guard).
const MAX_DEPTH: usize = 64;
const FALSE: &str = "(1 = 0)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    DateTime,
    Bool,
    Num,
}

fn ty_of(def: &AttributeDef) -> Ty {
    match def.attr_type {
        AttrType::Boolean => Ty::Bool,
        AttrType::Integer | AttrType::Decimal => Ty::Num,
        AttrType::DateTime => Ty::DateTime,
        _ => Ty::Str,
    }
}

/// One value an SQL expression yields: text for strings and dateTimes, 0/1 for booleans,
/// a number for numbers (NULL when absent).
struct Scalar {
    expr: String,
    ty: Ty,
    /// Case-sensitive comparison.
    exact: bool,
    /// The expression is already lower-cased (a `*_ci` column): compare with a folded literal.
    folded: bool,
    /// Read from the JSON document (not a typed column).
    json: bool,
}

#[derive(Debug, Clone)]
enum Key {
    Name(String),
    Index(i64),
}

fn keys_plus(keys: &[Key], name: &str) -> Vec<Key> {
    let mut k = keys.to_vec();
    k.push(Key::Name(name.to_string()));
    k
}

/// Which JSON document an access reads: the resource row (`r.resource`) or the current element
/// of a multi-valued attribute (`e`).
#[derive(Clone, Copy)]
enum Doc {
    Resource,
    Elem,
}

enum Scope {
    Resource(ResourceKind),
    /// Elements of a JSON multi-valued attribute.
    Elem(&'static AttributeDef),
    /// Inside `name[givenName eq "x"]`: sub-attributes of a single complex value.
    Complex(Vec<Key>, &'static AttributeDef),
    /// One group of a user (`x.depth`, `g.*`).
    UserGroup,
    /// One member of a group (`gm`, `mu`, `mg`).
    Member,
}

enum Node {
    Scalar(Scalar),
    Complex {
        keys: Vec<Key>,
        attr: &'static AttributeDef,
    },
    Multi {
        keys: Vec<Key>,
        attr: &'static AttributeDef,
        sub: Option<&'static AttributeDef>,
    },
    UserGroups {
        sub: Option<&'static AttributeDef>,
    },
    Members {
        sub: Option<&'static AttributeDef>,
    },
}

struct Tr<'b> {
    b: &'b mut SqlBuilder,
    /// Set when a `groups[type …]` condition reads the nesting depth.
    used_depth: Cell<bool>,
}

fn col(expr: &str, ty: Ty, exact: bool, folded: bool) -> Scalar {
    Scalar {
        expr: expr.to_string(),
        ty,
        exact,
        folded,
        json: false,
    }
}

impl Tr<'_> {
    fn engine(&self) -> Engine {
        self.b.engine
    }

    fn cond(&mut self, scope: &Scope, f: &Filter, depth: usize) -> Result<String, DirError> {
        if depth > MAX_DEPTH {
            return Err(bad_filter("filter is nested too deeply"));
        }
        Ok(match f {
            Filter::And(l, r) => {
                format!(
                    "({} AND {})",
                    self.cond(scope, l, depth + 1)?,
                    self.cond(scope, r, depth + 1)?
                )
            }
            Filter::Or(l, r) => {
                format!(
                    "({} OR {})",
                    self.cond(scope, l, depth + 1)?,
                    self.cond(scope, r, depth + 1)?
                )
            }
            Filter::Not(x) => not(&self.cond(scope, x, depth + 1)?),
            Filter::Present(path) => {
                let node = self.resolve(scope, path)?;
                self.present(node)
            }
            Filter::Compare(path, op, lit) => {
                let node = self.resolve(scope, path)?;
                self.compare_node(node, path, *op, lit)?
            }
            Filter::ValuePath(path, inner) => {
                if !matches!(scope, Scope::Resource(_)) {
                    return Err(bad_filter("a value filter cannot be nested in another"));
                }
                match self.resolve(scope, path)? {
                    Node::Multi {
                        keys,
                        attr,
                        sub: None,
                    } => {
                        let c = self.cond(&Scope::Elem(attr), inner, depth + 1)?;
                        self.elems_exist(&keys, &c)
                    }
                    Node::Complex { keys, attr } => {
                        self.cond(&Scope::Complex(keys, attr), inner, depth + 1)?
                    }
                    Node::UserGroups { sub: None } => {
                        self.used_depth.set(false);
                        let c = self.cond(&Scope::UserGroup, inner, depth + 1)?;
                        self.user_groups_exist(&c)
                    }
                    Node::Members { sub: None } => {
                        let c = self.cond(&Scope::Member, inner, depth + 1)?;
                        members_exist(&c)
                    }
                    _ => {
                        return Err(bad_filter(format!(
                            "{} is not a multi-valued or complex attribute",
                            path_text(path)
                        )))
                    }
                }
            }
        })
    }

    /// Find what a path names in a scope, via the schema registry.
    fn resolve(&mut self, scope: &Scope, path: &AttrPath) -> Result<Node, DirError> {
        let reg = SchemaRegistry::get();
        let unknown = || {
            bad_filter(format!(
                "unknown attribute \"{}\" in filter",
                path_text(path)
            ))
        };
        let relative = |path: &AttrPath| path.urn.is_none() && path.sub_attr.is_none();
        match scope {
            Scope::Resource(kind) => {
                let r = reg
                    .resolve(*kind, path)
                    .map_err(|e| DirError::Invalid(ScimError::invalid_filter(e.detail)))?;
                let (attr, sub) = (r.attr, r.sub);
                let name = attr.name.as_str();
                if !r.extension {
                    match (name, *kind) {
                        ("id", _) => {
                            return Ok(Node::Scalar(col("r.id", Ty::Str, attr.case_exact, false)))
                        }
                        ("externalId", _) => {
                            return Ok(Node::Scalar(col(
                                "r.external_id",
                                Ty::Str,
                                attr.case_exact,
                                false,
                            )))
                        }
                        ("meta", _) => return self.meta(*kind, path, sub),
                        ("userName", ResourceKind::User) | ("displayName", _) => {
                            let (exact_col, ci_col) = if name == "userName" {
                                ("r.user_name", "r.user_name_ci")
                            } else {
                                ("r.display_name", "r.display_name_ci")
                            };
                            return Ok(Node::Scalar(if attr.case_exact {
                                col(exact_col, Ty::Str, true, false)
                            } else {
                                col(ci_col, Ty::Str, false, true)
                            }));
                        }
                        ("active", ResourceKind::User) => {
                            return Ok(Node::Scalar(col("r.active", Ty::Bool, true, false)))
                        }
                        ("groups", ResourceKind::User) => return Ok(Node::UserGroups { sub }),
                        ("members", ResourceKind::Group) => return Ok(Node::Members { sub }),
                        _ => {}
                    }
                }
                let mut keys = Vec::new();
                if r.extension {
                    keys.push(Key::Name(r.schema_urn.to_string()));
                }
                keys.push(Key::Name(attr.name.clone()));
                if attr.multi_valued {
                    return Ok(Node::Multi { keys, attr, sub });
                }
                Ok(match (attr.attr_type, sub) {
                    (AttrType::Complex, Some(s)) => {
                        Node::Scalar(self.json_scalar(Doc::Resource, &keys_plus(&keys, &s.name), s))
                    }
                    (AttrType::Complex, None) => Node::Complex { keys, attr },
                    _ => Node::Scalar(self.json_scalar(Doc::Resource, &keys, attr)),
                })
            }
            Scope::Elem(attr) => {
                if !relative(path) {
                    return Err(unknown());
                }
                if attr.attr_type == AttrType::Complex {
                    let s = attr.sub(&path.attr).ok_or_else(unknown)?;
                    Ok(Node::Scalar(self.json_scalar(
                        Doc::Elem,
                        &[Key::Name(s.name.clone())],
                        s,
                    )))
                } else if path.attr.eq_ignore_ascii_case("value") {
                    Ok(Node::Scalar(self.json_scalar(Doc::Elem, &[], attr)))
                } else {
                    Err(unknown())
                }
            }
            Scope::Complex(keys, attr) => {
                if !relative(path) {
                    return Err(unknown());
                }
                let s = attr.sub(&path.attr).ok_or_else(unknown)?;
                Ok(Node::Scalar(self.json_scalar(
                    Doc::Resource,
                    &keys_plus(keys, &s.name),
                    s,
                )))
            }
            Scope::UserGroup => {
                let def = reg
                    .core_schema(ResourceKind::User)
                    .attribute("groups")
                    .and_then(|g| g.sub(&path.attr))
                    .filter(|_| relative(path))
                    .ok_or_else(unknown)?;
                Ok(Node::Scalar(self.user_group_scalar(def, path)?))
            }
            Scope::Member => {
                let def = reg
                    .core_schema(ResourceKind::Group)
                    .attribute("members")
                    .and_then(|g| g.sub(&path.attr))
                    .filter(|_| relative(path))
                    .ok_or_else(unknown)?;
                Ok(Node::Scalar(member_scalar(def, path)?))
            }
        }
    }

    fn meta(
        &mut self,
        kind: ResourceKind,
        path: &AttrPath,
        sub: Option<&'static AttributeDef>,
    ) -> Result<Node, DirError> {
        let Some(sub) = sub else {
            return Err(bad_filter(
                "filter on a sub-attribute of meta (meta.lastModified, …)",
            ));
        };
        Ok(Node::Scalar(match sub.name.as_str() {
            "created" => col("r.created", Ty::DateTime, false, false),
            "lastModified" => col("r.last_modified", Ty::DateTime, false, false),
            "resourceType" => {
                let p = self.b.text(match kind {
                    ResourceKind::User => "User",
                    ResourceKind::Group => "Group",
                });
                col(&p, Ty::Str, sub.case_exact, false)
            }
            "version" => col(
                "('W/\"' || CAST(r.version AS TEXT) || '\"')",
                Ty::Str,
                true,
                false,
            ),
            _ => return Err(bad_filter(format!("cannot filter on {}", path_text(path)))),
        }))
    }

    fn user_group_scalar(
        &mut self,
        def: &AttributeDef,
        path: &AttrPath,
    ) -> Result<Scalar, DirError> {
        // Ids are lower-case UUIDs, so a folded literal compares exactly and uses indexes.
        Ok(match def.name.as_str() {
            "value" => col("g.id", Ty::Str, def.case_exact, !def.case_exact),
            "display" if def.case_exact => col("g.display_name", Ty::Str, true, false),
            "display" => col("g.display_name_ci", Ty::Str, false, true),
            "type" => {
                self.used_depth.set(true);
                col(
                    "(CASE WHEN x.depth = 1 THEN 'direct' ELSE 'indirect' END)",
                    Ty::Str,
                    def.case_exact,
                    true,
                )
            }
            _ => return Err(bad_filter(format!("cannot filter on groups.{}", path.attr))),
        })
    }

    /// JSON value at `keys` of a document, typed per the attribute definition.
    fn json_scalar(&mut self, doc: Doc, keys: &[Key], def: &AttributeDef) -> Scalar {
        let ty = ty_of(def);
        let expr = match self.engine() {
            Engine::Sqlite => {
                let base = match doc {
                    Doc::Resource => "r.resource",
                    Doc::Elem => "e.value",
                };
                if keys.is_empty() {
                    base.to_string()
                } else {
                    let p = self.b.text(sqlite_path(keys));
                    format!("json_extract({base}, {p})")
                }
            }
            Engine::Postgres => {
                let jsonb = self.pg_access(doc, keys, false);
                let text = self.pg_access(doc, keys, true);
                match ty {
                    Ty::Str | Ty::DateTime => text,
                    Ty::Bool => format!("(CASE {text} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"),
                    Ty::Num => format!(
                        "(CASE WHEN jsonb_typeof({jsonb}) = 'number' THEN CAST({text} AS NUMERIC) END)"
                    ),
                }
            }
        };
        Scalar {
            expr,
            ty,
            exact: def.case_exact,
            folded: false,
            json: true,
        }
    }

    /// PostgreSQL: `base -> $a -> $b` (jsonb) or `… ->> $b` (text); keys are parameters.
    fn pg_access(&mut self, doc: Doc, keys: &[Key], text: bool) -> String {
        let base = match doc {
            Doc::Resource => "CAST(r.resource AS jsonb)",
            Doc::Elem => "e.v",
        };
        if keys.is_empty() {
            return if text {
                format!("({base} #>> '{{}}')")
            } else {
                base.to_string()
            };
        }
        let mut s = format!("({base}");
        for (i, k) in keys.iter().enumerate() {
            let op = if text && i + 1 == keys.len() {
                "->>"
            } else {
                "->"
            };
            let step = match k {
                Key::Name(n) => self.b.text(n.clone()),
                Key::Index(i) => i.to_string(),
            };
            s.push_str(&format!(" {op} {step}"));
        }
        s.push(')');
        s
    }

    /// `EXISTS` over the elements of the JSON array at `keys` (alias `e`), with `cond` on one.
    fn elems_exist(&mut self, keys: &[Key], cond: &str) -> String {
        let from = match self.engine() {
            Engine::Sqlite => {
                let p = self.b.text(sqlite_path(keys));
                format!("json_each(r.resource, {p}) AS e")
            }
            Engine::Postgres => {
                let arr = self.pg_access(Doc::Resource, keys, false);
                format!(
                    "jsonb_array_elements(CASE WHEN jsonb_typeof({arr}) = 'array' THEN {arr} \
                     ELSE CAST('[]' AS jsonb) END) AS e(v)"
                )
            }
        };
        format!("EXISTS (SELECT 1 FROM {from} WHERE {cond})")
    }

    /// The current element (or object member) is present: not null, not "".
    fn elem_present(&self) -> &'static str {
        match self.engine() {
            Engine::Sqlite => "(e.type <> 'null' AND (e.type <> 'text' OR e.value <> ''))",
            Engine::Postgres => "(jsonb_typeof(e.v) <> 'null' AND e.v <> CAST('\"\"' AS jsonb))",
        }
    }

    fn user_groups_exist(&mut self, cond: &str) -> String {
        let prefilter = if self.used_depth.get() {
            String::new()
        } else {
            format!(
                "AND gm.group_id IN (SELECT g.id FROM groups g WHERE g.tenant_id = $1 AND {cond})"
            )
        };
        format!(
            "r.id IN (WITH RECURSIVE ug(origin, member_id, member_type, depth) AS ( \
               SELECT gm.group_id, gm.member_id, gm.member_type, 1 FROM group_members gm \
                 WHERE gm.tenant_id = $1 {prefilter} \
               UNION \
               SELECT ug.origin, gm.member_id, gm.member_type, ug.depth + 1 FROM group_members gm \
                 JOIN ug ON gm.group_id = ug.member_id \
                 WHERE gm.tenant_id = $1 AND ug.member_type = 'Group' AND ug.depth < {MAX_NESTING}) \
             SELECT x.member_id FROM (SELECT origin, member_id, MIN(depth) AS depth FROM ug \
               WHERE member_type = 'User' GROUP BY origin, member_id) x \
             JOIN groups g ON g.tenant_id = $1 AND g.id = x.origin WHERE {cond})"
        )
    }

    fn present(&mut self, node: Node) -> String {
        match node {
            Node::Scalar(s) => present_scalar(&s),
            Node::Complex { keys, .. } => {
                let from = match self.engine() {
                    Engine::Sqlite => {
                        let p = self.b.text(sqlite_path(&keys));
                        format!("json_each(r.resource, {p}) AS e")
                    }
                    Engine::Postgres => {
                        let obj = self.pg_access(Doc::Resource, &keys, false);
                        format!(
                            "jsonb_each(CASE WHEN jsonb_typeof({obj}) = 'object' THEN {obj} \
                             ELSE CAST('{{}}' AS jsonb) END) AS e(k, v)"
                        )
                    }
                };
                format!("EXISTS (SELECT 1 FROM {from} WHERE {})", self.elem_present())
            }
            Node::Multi { keys, attr, sub } => {
                let cond = match sub {
                    Some(s) if attr.attr_type == AttrType::Complex => {
                        present_scalar(&self.json_scalar(Doc::Elem, &[Key::Name(s.name.clone())], s))
                    }
                    _ => self.elem_present().to_string(),
                };
                self.elems_exist(&keys, &cond)
            }
            Node::UserGroups { .. } => {
                "EXISTS (SELECT 1 FROM group_members gm WHERE gm.tenant_id = $1 AND gm.member_id = r.id)".into()
            }
            Node::Members { .. } => {
                "EXISTS (SELECT 1 FROM group_members gm WHERE gm.tenant_id = $1 AND gm.group_id = r.id)".into()
            }
        }
    }

    fn compare_node(
        &mut self,
        node: Node,
        path: &AttrPath,
        op: CompareOp,
        lit: &CompValue,
    ) -> Result<String, DirError> {
        match node {
            Node::Scalar(s) => self.compare(&s, op, lit),
            Node::Complex { keys, attr } => {
                let v = attr.sub("value").ok_or_else(|| {
                    bad_filter(format!(
                        "cannot compare the complex attribute {}",
                        path_text(path)
                    ))
                })?;
                let s = self.json_scalar(Doc::Resource, &keys_plus(&keys, &v.name), v);
                self.compare(&s, op, lit)
            }
            Node::Multi { keys, attr, sub } => {
                let s = match sub.or_else(|| attr.sub("value")) {
                    Some(d) if attr.attr_type == AttrType::Complex => {
                        self.json_scalar(Doc::Elem, &[Key::Name(d.name.clone())], d)
                    }
                    _ if attr.attr_type == AttrType::Complex => {
                        return Err(bad_filter(format!(
                            "cannot compare the complex attribute {}",
                            path_text(path)
                        )))
                    }
                    _ => self.json_scalar(Doc::Elem, &[], attr),
                };
                self.any_element(op, lit, &s, |t, c| t.elems_exist(&keys, c))
            }
            Node::UserGroups { sub } => {
                let def = self.membership_sub(ResourceKind::User, "groups", sub)?;
                self.used_depth.set(false);
                let s = self.user_group_scalar(def, path)?;
                self.any_element(op, lit, &s, |t, c| t.user_groups_exist(c))
            }
            Node::Members { sub } => {
                let def = self.membership_sub(ResourceKind::Group, "members", sub)?;
                let s = member_scalar(def, path)?;
                self.any_element(op, lit, &s, |_, c| members_exist(c))
            }
        }
    }

    fn membership_sub(
        &self,
        kind: ResourceKind,
        attr: &str,
        sub: Option<&'static AttributeDef>,
    ) -> Result<&'static AttributeDef, DirError> {
        match sub {
            Some(s) => Ok(s),
            None => SchemaRegistry::get()
                .core_schema(kind)
                .attribute(attr)
                .and_then(|a| a.sub("value"))
                .ok_or_else(|| bad_filter(format!("cannot compare {attr}"))),
        }
    }

    /// A comparison on a multi-valued attribute: true if ANY element matches; `ne` is "no
    /// element equals"; `eq null` is "no element has a value".
    fn any_element(
        &mut self,
        op: CompareOp,
        lit: &CompValue,
        s: &Scalar,
        exists: impl Fn(&mut Self, &str) -> String,
    ) -> Result<String, DirError> {
        Ok(match (op, lit) {
            (CompareOp::Eq, CompValue::Null) => {
                not(&exists(self, &format!("({} IS NOT NULL)", s.expr)))
            }
            (CompareOp::Ne, CompValue::Null) => exists(self, &format!("({} IS NOT NULL)", s.expr)),
            (CompareOp::Ne, _) => {
                let eq = self.compare(s, CompareOp::Eq, lit)?;
                not(&exists(self, &eq))
            }
            _ => {
                let c = self.compare(s, op, lit)?;
                exists(self, &c)
            }
        })
    }

    /// `s op lit` as SQL (may be NULL for absent values; callers negate through `not`).
    fn compare(&mut self, s: &Scalar, op: CompareOp, lit: &CompValue) -> Result<String, DirError> {
        if op == CompareOp::Ne {
            return Ok(not(&self.compare(s, CompareOp::Eq, lit)?));
        }
        let sym = match op {
            CompareOp::Eq => "=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            _ => "",
        };
        Ok(match (s.ty, lit) {
            (_, CompValue::Null) => match op {
                CompareOp::Eq => format!("({} IS NULL)", s.expr),
                _ => FALSE.to_string(),
            },
            (Ty::Str | Ty::DateTime, CompValue::String(v)) => {
                let ordered = !sym.is_empty();
                if s.ty == Ty::DateTime && ordered {
                    let t = DateTime::parse_from_rfc3339(v)
                        .map_err(|_| bad_filter(format!("\"{v}\" is not an RFC 3339 dateTime")))?;
                    let p = self.b.text(ts_from(t.with_timezone(&Utc)));
                    return Ok(format!("({} {sym} {p})", s.expr));
                }
                let (e, v) = if s.exact || s.ty == Ty::DateTime {
                    (s.expr.clone(), v.clone())
                } else if s.folded {
                    (s.expr.clone(), v.to_lowercase())
                } else {
                    (format!("lower({})", s.expr), v.to_lowercase())
                };
                if ordered {
                    let p = self.b.text(v);
                    return Ok(format!("({e} {sym} {p})"));
                }
                self.substring(&e, op, &v, s.exact)?
            }
            (Ty::Bool, CompValue::Bool(v)) => match op {
                CompareOp::Eq => {
                    let p = self.b.arg(SqlValue::Int(i64::from(*v)));
                    format!("({} = {p})", s.expr)
                }
                _ => FALSE.to_string(),
            },
            (Ty::Num, CompValue::Number(n)) if !sym.is_empty() => {
                let p = self.b.arg(number_arg(n));
                format!("({} {sym} {p})", s.expr)
            }
            // A literal of another type than the attribute never matches.
            _ => FALSE.to_string(),
        })
    }

    /// co / sw / ew. Case-insensitive: LIKE on folded text, with %, _ and \ escaped. Exact:
    /// PostgreSQL's LIKE is case-sensitive; SQLite's is not, so it uses instr/substr.
    fn substring(
        &mut self,
        e: &str,
        op: CompareOp,
        v: &str,
        exact: bool,
    ) -> Result<String, DirError> {
        if exact && self.engine() == Engine::Sqlite {
            let p = self.b.text(v.to_string());
            return Ok(match op {
                CompareOp::Co => format!("(instr({e}, {p}) > 0)"),
                CompareOp::Sw => format!("(substr({e}, 1, length({p})) = {p})"),
                CompareOp::Ew => format!("(length({e}) >= length({p}) AND substr({e}, length({e}) - length({p}) + 1) = {p})"),
                _ => FALSE.to_string(),
            });
        }
        let esc = like_escape(v);
        let pat = match op {
            CompareOp::Co => format!("%{esc}%"),
            CompareOp::Sw => format!("{esc}%"),
            CompareOp::Ew => format!("%{esc}"),
            _ => return Ok(FALSE.to_string()),
        };
        let p = self.b.text(pat);
        Ok(format!("({e} LIKE {p} ESCAPE '\\')"))
    }
}

fn number_arg(n: &Number) -> SqlValue {
    match n.as_i64() {
        Some(i) => SqlValue::Int(i),
        None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn member_scalar(def: &AttributeDef, path: &AttrPath) -> Result<Scalar, DirError> {
    Ok(match def.name.as_str() {
        // Member ids are lower-case UUIDs: a folded literal compares exactly and uses the key.
        "value" => col("gm.member_id", Ty::Str, def.case_exact, !def.case_exact),
        "type" => col("gm.member_type", Ty::Str, def.case_exact, false),
        "display" => col(
            "COALESCE(mu.user_name, mg.display_name)",
            Ty::Str,
            def.case_exact,
            false,
        ),
        _ => {
            return Err(bad_filter(format!(
                "cannot filter on members.{}",
                path.attr
            )))
        }
    })
}

fn members_exist(cond: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM group_members gm \
           LEFT JOIN users mu ON mu.tenant_id = gm.tenant_id AND mu.id = gm.member_id \
           LEFT JOIN groups mg ON mg.tenant_id = gm.tenant_id AND mg.id = gm.member_id \
         WHERE gm.tenant_id = $1 AND gm.group_id = r.id AND {cond})"
    )
}

fn not(c: &str) -> String {
    format!("(NOT COALESCE({c}, {FALSE}))")
}

fn present_scalar(s: &Scalar) -> String {
    match s.ty {
        Ty::Str | Ty::DateTime => format!("({e} IS NOT NULL AND {e} <> '')", e = s.expr),
        Ty::Bool | Ty::Num => format!("({} IS NOT NULL)", s.expr),
    }
}

/// SQLite JSON path: `$."name"."givenName"`, `$."emails"[0]."value"`. Names come from the
/// schema registry; quotes are not legal in them, and the path is bound as a parameter anyway.
fn sqlite_path(keys: &[Key]) -> String {
    let mut p = String::from("$");
    for k in keys {
        match k {
            Key::Name(n) => {
                p.push_str(".\"");
                p.push_str(&n.replace('"', ""));
                p.push('"');
            }
            Key::Index(i) => p.push_str(&format!("[{i}]")),
        }
    }
    p
}

/// Escape LIKE metacharacters with `\`.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(engine: Engine, target: Target, f: &Filter) -> (String, Vec<SqlValue>) {
        let mut b = SqlBuilder::new(engine);
        b.text("tenant");
        let s = filter_sql(&mut b, target, f).unwrap();
        (s, b.args)
    }

    fn cmp(attr: &str, op: CompareOp, v: CompValue) -> Filter {
        Filter::Compare(crate::scim::filter::parse_attr_path(attr).unwrap(), op, v)
    }

    #[test]
    fn indexed_attributes_map_to_columns_and_fold_literals() {
        for engine in [Engine::Sqlite, Engine::Postgres] {
            let (s, a) = sql(
                engine,
                Target::Users,
                &cmp("USERNAME", CompareOp::Eq, CompValue::String("Bob@X".into())),
            );
            assert_eq!(s, "(r.user_name_ci = $2)");
            assert_eq!(a[1], SqlValue::Text("bob@x".into()));
            let (s, a) = sql(
                engine,
                Target::Users,
                &cmp("externalId", CompareOp::Eq, CompValue::String("AbC".into())),
            );
            assert_eq!(s, "(r.external_id = $2)");
            assert_eq!(a[1], SqlValue::Text("AbC".into()));
            let (s, _) = sql(
                engine,
                Target::Groups,
                &cmp("displayName", CompareOp::Eq, CompValue::String("A".into())),
            );
            assert_eq!(s, "(r.display_name_ci = $2)");
            let (s, _) = sql(
                engine,
                Target::Users,
                &cmp("id", CompareOp::Eq, CompValue::String("A".into())),
            );
            assert_eq!(s, "(r.id = $2)");
        }
    }

    #[test]
    fn literals_are_always_parameters() {
        let evil = "'; DROP TABLE users; --";
        for engine in [Engine::Sqlite, Engine::Postgres] {
            for attr in [
                "userName",
                "title",
                "emails",
                "name.givenName",
                "groups.display",
            ] {
                for op in CompareOp::ALL {
                    let (s, a) = sql(
                        engine,
                        Target::Users,
                        &cmp(attr, op, CompValue::String(evil.into())),
                    );
                    assert!(!s.contains("DROP"), "{s}");
                    assert!(
                        a.iter().any(
                            |x| matches!(x, SqlValue::Text(t) if t.to_lowercase().contains("drop"))
                        ) || s.contains(FALSE)
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_attributes_are_invalid_filters() {
        let mut b = SqlBuilder::new(Engine::Sqlite);
        b.text("t");
        let e = filter_sql(
            &mut b,
            Target::Users,
            &cmp("nope", CompareOp::Eq, CompValue::Null),
        )
        .unwrap_err();
        match e {
            DirError::Invalid(s) => {
                assert_eq!(s.scim_type, Some(crate::scim::ScimType::InvalidFilter));
                assert!(s.detail.contains("nope"), "{}", s.detail);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn like_escaping() {
        assert_eq!(like_escape(r"50%_a\b"), r"50\%\_a\\b");
    }
}
