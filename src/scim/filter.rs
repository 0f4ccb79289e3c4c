//! SCIM filter expressions (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2): the AST, a bounded
//! parser that never recurses without limit, a printer whose output parses back to the same AST,
//! and in-memory evaluation against a JSON resource. No I/O here; `directory/` turns the AST into
//! SQL.
//!
//! Layout: `parse` (text → AST, with the input limits), `display` (AST → canonical text),
//! `eval` (AST × JSON resource → bool). Schema knowledge (does `emails` exist, is it caseExact)
//! comes from the caller.
//!
//! Trees are recursive (`Box<Filter>`), and printing, comparing, evaluating and dropping them
//! recurse. That is safe for every tree the parser builds: at most [`MAX_COMPARISONS`] leaves
//! and [`MAX_DEPTH`] levels of nesting, pinned by a test that runs the deepest one on a small
//! stack. Code that builds trees by hand should stay within the same bounds.

use serde_json::Number;

mod display;
mod eval;
mod parse;

use display::canonical_depth;
pub use eval::{matches, matches_element, values_at};
pub use parse::{
    parse_attr_path, parse_filter, parse_patch_path, MAX_COMPARISONS, MAX_DEPTH, MAX_FILTER_CHARS,
};

/// `urn:...:User:name.givenName` → urn = Some("urn:...:User"), attr = "name", sub_attr = Some("givenName").
/// Names keep the letter case they were written in; matching against the schema is case-insensitive.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrPath {
    pub urn: Option<String>,
    pub attr: String,
    pub sub_attr: Option<String>,
}

impl AttrPath {
    /// A plain attribute: `userName`.
    pub fn new(attr: impl Into<String>) -> Self {
        AttrPath {
            urn: None,
            attr: attr.into(),
            sub_attr: None,
        }
    }

    /// An attribute and its sub-attribute: `name.givenName`.
    pub fn with_sub(attr: impl Into<String>, sub_attr: impl Into<String>) -> Self {
        AttrPath {
            urn: None,
            attr: attr.into(),
            sub_attr: Some(sub_attr.into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    /// Every operator, in RFC order (`pr` is not one: it takes no value, see [`Filter::Present`]).
    pub const ALL: [CompareOp; 9] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Co,
        CompareOp::Sw,
        CompareOp::Ew,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ];

    /// The operator as written in a filter, lowercase.
    pub fn as_str(&self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

/// A comparison literal, as written in the filter.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
}

/// A parsed filter. `a and b and c` is `And(And(a, b), c)`; precedence is not > and > or.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `attr pr`
    Present(AttrPath),
    /// `attr op value`
    Compare(AttrPath, CompareOp, CompValue),
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    /// `emails[type eq "work" and primary eq true]`: the path names a multi-valued (complex)
    /// attribute; paths inside the inner filter are relative to one element of it
    /// (`AttrPath { urn: None, attr: "type", sub_attr: None }`).
    ValuePath(AttrPath, Box<Filter>),
}

/// A PATCH operation's `path` (RFC 7644 §3.5.2):
/// `attrPath` | `valuePath [ "." subAttr ]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    /// The attribute (and, without a value filter, possibly its sub-attribute).
    pub attr: AttrPath,
    /// `emails[type eq "work"]` → the filter selecting elements.
    pub value_filter: Option<Filter>,
    /// `emails[type eq "work"].value` → Some("value") (only with a value filter).
    pub sub_attr: Option<String>,
}
