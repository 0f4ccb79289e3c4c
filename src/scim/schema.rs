//! The SCIM schemas (RFC 7643 §7) loaded from the JSON files in `scim-schemas/`, embedded in the
//! binary. Every attribute property that drives behaviour (type, multiValued, caseExact,
//! mutability, returned, uniqueness, subAttributes) is read from here and nowhere else.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Reference,
    Complex,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    None,
    Server,
    Global,
}

#[derive(Debug, Clone)]
pub struct AttributeDef {
    pub name: String,
    pub attr_type: AttrType,
    pub multi_valued: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub uniqueness: Uniqueness,
    pub canonical_values: Vec<String>,
    pub reference_types: Vec<String>,
    pub sub_attributes: Vec<AttributeDef>,
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub id: String,
    pub name: String,
    pub attributes: Vec<AttributeDef>,
    /// The schema as served at `/Schemas/{id}` (without `meta`, which the HTTP layer adds).
    pub raw: serde_json::Value,
}

/// Which resource a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    User,
    Group,
}

#[derive(Debug, Clone)]
pub struct ResourceTypeDef {
    pub kind: ResourceKind,
    /// "User" / "Group"
    pub name: String,
    /// "/Users" / "/Groups"
    pub endpoint: String,
    /// core schema URN
    pub schema: String,
    /// (extension URN, required)
    pub extensions: Vec<(String, bool)>,
    pub raw: serde_json::Value,
}

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const BULK_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
pub const BULK_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
pub const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
