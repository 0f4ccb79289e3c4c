//! The SCIM schemas (RFC 7643 §7) loaded from the JSON files in `scim-schemas/`, embedded in the
//! binary. Every attribute property that drives behaviour (type, multiValued, caseExact,
//! mutability, returned, uniqueness, subAttributes) is read from here and nowhere else.

use std::sync::OnceLock;

use serde_json::Value;

use crate::scim::error::ScimError;
use crate::scim::filter::AttrPath;

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
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const BULK_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
pub const BULK_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
pub const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const SERVICE_PROVIDER_CONFIG_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
pub const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// The embedded schema files. `CommonAttributes.json` holds `id`, `externalId` and `meta`
/// (RFC 7643 §3.1): they resolve like any attribute but are not listed under `/Schemas`, as in
/// RFC 7643 §8.7.1 and as scim2-models expects (its `Resource` already carries them).
const USER_JSON: &str = include_str!("../../scim-schemas/User.json");
const GROUP_JSON: &str = include_str!("../../scim-schemas/Group.json");
const ENTERPRISE_USER_JSON: &str = include_str!("../../scim-schemas/EnterpriseUser.json");
const COMMON_JSON: &str = include_str!("../../scim-schemas/CommonAttributes.json");
const SP_SCHEMAS_JSON: &str = include_str!("../../scim-schemas/ServiceProviderSchemas.json");
const SPC_JSON: &str = include_str!("../../scim-schemas/ServiceProviderConfig.json");
const RESOURCE_TYPES_JSON: &str = include_str!("../../scim-schemas/ResourceTypes.json");

/// The numbers the ServiceProviderConfig advertises; the service enforces exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `filter.maxResults`: the most resources one list answer holds.
    pub max_results: u64,
    /// `bulk.maxOperations`
    pub bulk_max_operations: u64,
    /// `bulk.maxPayloadSize`, in bytes
    pub bulk_max_payload: u64,
    /// `pagination.defaultPageSize` (RFC 9865): `count` when the client gives none.
    pub default_page_size: u64,
    /// `pagination.maxPageSize` (RFC 9865)
    pub max_page_size: u64,
    /// `pagination.cursorTimeout` (RFC 9865), in seconds
    pub cursor_timeout_secs: u64,
}

impl Limits {
    /// The largest `count` a list answer honours.
    pub fn page_cap(&self) -> u64 {
        self.max_results.min(self.max_page_size)
    }
}

/// One attribute a path names, found in the schemas of a resource type.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedAttr<'a> {
    /// The schema that defines the attribute (the core schema for `id`, `externalId`, `meta`).
    pub schema_urn: &'a str,
    /// True when the attribute lives in an extension, under the extension URN key.
    pub extension: bool,
    pub attr: &'a AttributeDef,
    pub sub: Option<&'a AttributeDef>,
}

impl ResolvedAttr<'_> {
    /// The definition the path ends at: the sub-attribute if named, else the attribute.
    pub fn target(&self) -> &AttributeDef {
        self.sub.unwrap_or(self.attr)
    }
}

impl AttributeDef {
    /// A sub-attribute by name, ignoring letter case (RFC 7643 §2.1).
    pub fn sub(&self, name: &str) -> Option<&AttributeDef> {
        self.sub_attributes
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// A complex attribute that has a `primary` sub-attribute (emails, phoneNumbers, …).
    pub fn has_primary(&self) -> bool {
        self.sub("primary").is_some()
    }
}

impl Schema {
    /// A top-level attribute by name, ignoring letter case.
    pub fn attribute(&self, name: &str) -> Option<&AttributeDef> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

/// Every schema, resource type and the service provider configuration, parsed once from the
/// files embedded at build time.
#[derive(Debug)]
pub struct SchemaRegistry {
    schemas: Vec<Schema>,
    common: Vec<AttributeDef>,
    resource_types: Vec<ResourceTypeDef>,
    service_provider_config: Value,
    limits: Limits,
}

static REGISTRY: OnceLock<SchemaRegistry> = OnceLock::new();

impl SchemaRegistry {
    /// The registry built from `scim-schemas/`. Those files are part of the binary, not input:
    /// a broken one is a build defect, found by this module's tests, so it panics here.
    pub fn get() -> &'static SchemaRegistry {
        REGISTRY.get_or_init(|| {
            Self::from_sources(&Sources::embedded())
                .unwrap_or_else(|e| panic!("embedded scim-schemas/ are invalid: {e}"))
        })
    }

    fn from_sources(src: &Sources<'_>) -> Result<SchemaRegistry, String> {
        let mut schemas = Vec::new();
        for (file, text) in [
            ("User.json", src.user),
            ("Group.json", src.group),
            ("EnterpriseUser.json", src.enterprise),
        ] {
            schemas
                .push(parse_schema(&parse_json(file, text)?).map_err(|e| format!("{file}: {e}"))?);
        }
        match parse_json("ServiceProviderSchemas.json", src.sp_schemas)? {
            Value::Array(items) => {
                for item in &items {
                    schemas.push(
                        parse_schema(item)
                            .map_err(|e| format!("ServiceProviderSchemas.json: {e}"))?,
                    );
                }
            }
            _ => return Err("ServiceProviderSchemas.json: expected an array".into()),
        }
        let common_raw = parse_json("CommonAttributes.json", src.common)?;
        let common = parse_attr_list(common_raw.get("attributes"))
            .map_err(|e| format!("CommonAttributes.json: {e}"))?;

        let rts = match parse_json("ResourceTypes.json", src.resource_types)? {
            Value::Array(items) => items,
            _ => return Err("ResourceTypes.json: expected an array".into()),
        };
        let mut resource_types = Vec::new();
        for raw in rts {
            let rt = parse_resource_type(raw).map_err(|e| format!("ResourceTypes.json: {e}"))?;
            for urn in std::iter::once(&rt.schema).chain(rt.extensions.iter().map(|(u, _)| u)) {
                if !schemas.iter().any(|s| s.id.eq_ignore_ascii_case(urn)) {
                    return Err(format!(
                        "ResourceTypes.json: {} names unknown schema {urn}",
                        rt.name
                    ));
                }
            }
            resource_types.push(rt);
        }
        for kind in [ResourceKind::User, ResourceKind::Group] {
            if resource_types.iter().filter(|r| r.kind == kind).count() != 1 {
                return Err(format!("ResourceTypes.json: need exactly one {kind:?}"));
            }
        }

        let spc = parse_json("ServiceProviderConfig.json", src.spc)?;
        let limits = read_limits(&spc).map_err(|e| format!("ServiceProviderConfig.json: {e}"))?;
        Ok(SchemaRegistry {
            schemas,
            common,
            resource_types,
            service_provider_config: spc,
            limits,
        })
    }

    /// Every schema served under `/Schemas`: the resource schemas, the Enterprise User extension
    /// and the three service provider schemas (RFC 7643 §8.7.2).
    pub fn schemas(&self) -> &[Schema] {
        &self.schemas
    }

    /// A schema by URN, ignoring letter case.
    pub fn schema(&self, urn: &str) -> Option<&Schema> {
        self.schemas.iter().find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// `id`, `externalId`, `meta` (RFC 7643 §3.1), shared by every resource type.
    pub fn common_attributes(&self) -> &[AttributeDef] {
        &self.common
    }

    pub fn resource_types(&self) -> &[ResourceTypeDef] {
        &self.resource_types
    }

    pub fn resource_type(&self, kind: ResourceKind) -> &ResourceTypeDef {
        // from_sources checked that each kind appears exactly once.
        match self.resource_types.iter().find(|r| r.kind == kind) {
            Some(rt) => rt,
            None => unreachable!("registry validated resource types at load"),
        }
    }

    /// The core schema of a resource type.
    pub fn core_schema(&self, kind: ResourceKind) -> &Schema {
        let urn = &self.resource_type(kind).schema;
        match self.schema(urn) {
            Some(s) => s,
            None => unreachable!("registry validated schema URNs at load"),
        }
    }

    /// The extension schemas a resource type allows, in ResourceTypes.json order.
    pub fn extensions(&self, kind: ResourceKind) -> Vec<&Schema> {
        self.resource_type(kind)
            .extensions
            .iter()
            .filter_map(|(u, _)| self.schema(u))
            .collect()
    }

    /// The extension schema of `kind` with this URN (letter case ignored).
    pub fn extension(&self, kind: ResourceKind, urn: &str) -> Option<&Schema> {
        self.extensions(kind)
            .into_iter()
            .find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// Splits a URN-qualified name (`urn:…:enterprise:2.0:User:manager.value`) into the
    /// canonical URN of a schema of `kind` and the rest (`manager.value`). Never splits on `.`
    /// inside the URN (`2.0`). None when the text does not start with such a URN and a colon.
    pub fn split_urn<'s>(&self, kind: ResourceKind, text: &'s str) -> Option<(&str, &'s str)> {
        let core = self.core_schema(kind);
        std::iter::once(core)
            .chain(self.extensions(kind))
            .find_map(|s| {
                let n = s.id.len();
                let head = text.get(..n)?;
                let rest = text.get(n..)?.strip_prefix(':')?;
                head.eq_ignore_ascii_case(&s.id)
                    .then_some((s.id.as_str(), rest))
            })
    }

    pub fn service_provider_config(&self) -> &Value {
        &self.service_provider_config
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Finds the attribute a path names for a resource type: names case-insensitive,
    /// URN-qualified or not (unqualified: common attributes, the core schema, then extensions).
    /// An unknown schema, attribute or sub-attribute is `400 invalidPath` naming it.
    pub fn resolve(
        &self,
        kind: ResourceKind,
        path: &AttrPath,
    ) -> Result<ResolvedAttr<'_>, ScimError> {
        let core = self.core_schema(kind);
        let found: Option<(&str, bool, &AttributeDef)> = match &path.urn {
            Some(urn) if urn.eq_ignore_ascii_case(&core.id) => self
                .common
                .iter()
                .find(|a| a.name.eq_ignore_ascii_case(&path.attr))
                .or_else(|| core.attribute(&path.attr))
                .map(|a| (core.id.as_str(), false, a)),
            Some(urn) => {
                let ext = self.extension(kind, urn).ok_or_else(|| {
                    ScimError::invalid_path(format!(
                        "unknown schema \"{urn}\" for a {}",
                        self.resource_type(kind).name
                    ))
                })?;
                ext.attribute(&path.attr)
                    .map(|a| (ext.id.as_str(), true, a))
            }
            None => self
                .common
                .iter()
                .find(|a| a.name.eq_ignore_ascii_case(&path.attr))
                .or_else(|| core.attribute(&path.attr))
                .map(|a| (core.id.as_str(), false, a))
                .or_else(|| {
                    self.extensions(kind)
                        .into_iter()
                        .find_map(|e| e.attribute(&path.attr).map(|a| (e.id.as_str(), true, a)))
                }),
        };
        let (schema_urn, extension, attr) = found.ok_or_else(|| {
            ScimError::invalid_path(format!(
                "unknown attribute \"{}\" for a {}",
                path_text(path),
                self.resource_type(kind).name
            ))
        })?;
        let sub = match &path.sub_attr {
            None => None,
            Some(name) => Some(attr.sub(name).ok_or_else(|| {
                ScimError::invalid_path(format!(
                    "unknown attribute \"{}\" for a {}",
                    path_text(path),
                    self.resource_type(kind).name
                ))
            })?),
        };
        Ok(ResolvedAttr {
            schema_urn,
            extension,
            attr,
            sub,
        })
    }

    /// Whether comparisons on the attribute a path names are case-sensitive. A complex
    /// attribute named without a sub-attribute compares on its `value` (RFC 7644 §3.4.2.2).
    /// Unknown paths are case-insensitive.
    pub fn case_exact(&self, kind: ResourceKind, path: &AttrPath) -> bool {
        match self.resolve(kind, path) {
            Ok(r) => match r.sub {
                Some(s) => s.case_exact,
                None if r.attr.attr_type == AttrType::Complex => {
                    r.attr.sub("value").map(|v| v.case_exact).unwrap_or(false)
                }
                None => r.attr.case_exact,
            },
            Err(_) => false,
        }
    }
}

/// `urn:x:name.sub` as a person wrote it, for error details.
pub(crate) fn path_text(p: &AttrPath) -> String {
    let mut s = String::new();
    if let Some(u) = &p.urn {
        s.push_str(u);
        s.push(':');
    }
    s.push_str(&p.attr);
    if let Some(sub) = &p.sub_attr {
        s.push('.');
        s.push_str(sub);
    }
    s
}

struct Sources<'a> {
    user: &'a str,
    group: &'a str,
    enterprise: &'a str,
    common: &'a str,
    sp_schemas: &'a str,
    spc: &'a str,
    resource_types: &'a str,
}

impl Sources<'static> {
    fn embedded() -> Self {
        Sources {
            user: USER_JSON,
            group: GROUP_JSON,
            enterprise: ENTERPRISE_USER_JSON,
            common: COMMON_JSON,
            sp_schemas: SP_SCHEMAS_JSON,
            spc: SPC_JSON,
            resource_types: RESOURCE_TYPES_JSON,
        }
    }
}

fn parse_json(file: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{file}: {e}"))
}

fn str_field<'v>(v: &'v Value, key: &str) -> Result<&'v str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string \"{key}\""))
}

fn bool_field(v: &Value, key: &str) -> Result<bool, String> {
    v.get(key)
        .and_then(Value::as_bool)
        .ok_or_else(|| format!("missing boolean \"{key}\""))
}

fn str_list(v: Option<&Value>) -> Result<Vec<String>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "expected strings".to_owned())
            })
            .collect(),
        Some(_) => Err("expected an array of strings".into()),
    }
}

fn parse_schema(v: &Value) -> Result<Schema, String> {
    let id = str_field(v, "id")?.to_owned();
    let name = str_field(v, "name")?.to_owned();
    let attributes = parse_attr_list(v.get("attributes")).map_err(|e| format!("{id}: {e}"))?;
    Ok(Schema {
        id,
        name,
        attributes,
        raw: v.clone(),
    })
}

fn parse_attr_list(v: Option<&Value>) -> Result<Vec<AttributeDef>, String> {
    match v {
        Some(Value::Array(items)) => {
            let attrs = items
                .iter()
                .map(|a| parse_attr(a, 0))
                .collect::<Result<Vec<_>, _>>()?;
            for (i, a) in attrs.iter().enumerate() {
                if attrs[..i]
                    .iter()
                    .any(|b| b.name.eq_ignore_ascii_case(&a.name))
                {
                    return Err(format!("attribute \"{}\" declared twice", a.name));
                }
            }
            Ok(attrs)
        }
        _ => Err("missing \"attributes\" array".into()),
    }
}

fn parse_attr(v: &Value, depth: usize) -> Result<AttributeDef, String> {
    let name = str_field(v, "name")?.to_owned();
    let ctx = |e: String| format!("attribute \"{name}\": {e}");
    let attr_type = match str_field(v, "type").map_err(ctx)? {
        "string" => AttrType::String,
        "boolean" => AttrType::Boolean,
        "decimal" => AttrType::Decimal,
        "integer" => AttrType::Integer,
        "dateTime" => AttrType::DateTime,
        "reference" => AttrType::Reference,
        "complex" => AttrType::Complex,
        "binary" => AttrType::Binary,
        other => return Err(ctx(format!("unknown type \"{other}\""))),
    };
    let mutability = match str_field(v, "mutability").map_err(ctx)? {
        "readOnly" => Mutability::ReadOnly,
        "readWrite" => Mutability::ReadWrite,
        "immutable" => Mutability::Immutable,
        "writeOnly" => Mutability::WriteOnly,
        other => return Err(ctx(format!("unknown mutability \"{other}\""))),
    };
    let returned = match str_field(v, "returned").map_err(ctx)? {
        "always" => Returned::Always,
        "never" => Returned::Never,
        "default" => Returned::Default,
        "request" => Returned::Request,
        other => return Err(ctx(format!("unknown returned \"{other}\""))),
    };
    let uniqueness = match str_field(v, "uniqueness").map_err(ctx)? {
        "none" => Uniqueness::None,
        "server" => Uniqueness::Server,
        "global" => Uniqueness::Global,
        other => return Err(ctx(format!("unknown uniqueness \"{other}\""))),
    };
    let sub_attributes = match v.get("subAttributes") {
        None => Vec::new(),
        // The meta-schema nests one level (attributes.subAttributes); nothing deeper exists.
        Some(_) if depth >= 2 => return Err(ctx("sub-attributes nested too deep".into())),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| parse_attr(s, depth + 1))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ctx("subAttributes must be an array".into())),
    };
    if (attr_type == AttrType::Complex) == sub_attributes.is_empty() {
        return Err(ctx(
            "complex attributes, and only they, have subAttributes".into()
        ));
    }
    Ok(AttributeDef {
        attr_type,
        multi_valued: bool_field(v, "multiValued").map_err(ctx)?,
        required: bool_field(v, "required").map_err(ctx)?,
        case_exact: bool_field(v, "caseExact").map_err(ctx)?,
        mutability,
        returned,
        uniqueness,
        canonical_values: str_list(v.get("canonicalValues")).map_err(ctx)?,
        reference_types: str_list(v.get("referenceTypes")).map_err(ctx)?,
        sub_attributes,
        name,
    })
}

fn parse_resource_type(raw: Value) -> Result<ResourceTypeDef, String> {
    let name = str_field(&raw, "name")?.to_owned();
    let kind = match name.as_str() {
        "User" => ResourceKind::User,
        "Group" => ResourceKind::Group,
        other => return Err(format!("unknown resource type \"{other}\"")),
    };
    let mut extensions = Vec::new();
    if let Some(exts) = raw.get("schemaExtensions") {
        for e in exts.as_array().ok_or("schemaExtensions must be an array")? {
            extensions.push((
                str_field(e, "schema")?.to_owned(),
                bool_field(e, "required")?,
            ));
        }
    }
    Ok(ResourceTypeDef {
        kind,
        endpoint: str_field(&raw, "endpoint")?.to_owned(),
        schema: str_field(&raw, "schema")?.to_owned(),
        extensions,
        name,
        raw,
    })
}

fn read_limits(spc: &Value) -> Result<Limits, String> {
    let num = |ptr: &str| {
        spc.pointer(ptr)
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("missing positive integer at {ptr}"))
    };
    Ok(Limits {
        max_results: num("/filter/maxResults")?,
        bulk_max_operations: num("/bulk/maxOperations")?,
        bulk_max_payload: num("/bulk/maxPayloadSize")?,
        default_page_size: num("/pagination/defaultPageSize")?,
        max_page_size: num("/pagination/maxPageSize")?,
        cursor_timeout_secs: num("/pagination/cursorTimeout")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(urn: Option<&str>, attr: &str, sub: Option<&str>) -> AttrPath {
        AttrPath {
            urn: urn.map(str::to_owned),
            attr: attr.to_owned(),
            sub_attr: sub.map(str::to_owned),
        }
    }

    #[test]
    fn embedded_files_load_and_list_every_schema() {
        let r = SchemaRegistry::get();
        let names: Vec<&str> = r.schemas().iter().map(|s| s.name.as_str()).collect();
        for n in [
            "User",
            "Group",
            "EnterpriseUser",
            "ServiceProviderConfig",
            "ResourceType",
            "Schema",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        // /Schemas follows RFC 7643 §8.7.1: common attributes are not listed in User.
        assert!(r.core_schema(ResourceKind::User).attribute("id").is_none());
        assert_eq!(r.common_attributes().len(), 3);
        assert!(r
            .schema("URN:IETF:PARAMS:SCIM:SCHEMAS:CORE:2.0:USER")
            .is_some());
        assert_eq!(r.resource_type(ResourceKind::User).endpoint, "/Users");
        assert_eq!(
            r.resource_type(ResourceKind::User).extensions,
            vec![(ENTERPRISE_USER_SCHEMA.to_owned(), false)]
        );
        assert!(r.resource_type(ResourceKind::Group).extensions.is_empty());
        assert_eq!(r.core_schema(ResourceKind::Group).id, GROUP_SCHEMA);
    }

    #[test]
    fn limits_are_the_advertised_numbers() {
        let r = SchemaRegistry::get();
        let l = r.limits();
        let spc = r.service_provider_config();
        assert_eq!(Some(l.max_results), spc["filter"]["maxResults"].as_u64());
        assert_eq!(
            Some(l.bulk_max_operations),
            spc["bulk"]["maxOperations"].as_u64()
        );
        assert_eq!(
            Some(l.bulk_max_payload),
            spc["bulk"]["maxPayloadSize"].as_u64()
        );
        assert_eq!(l.default_page_size, 100);
        assert_eq!(l.max_page_size, 1000);
        assert_eq!(l.cursor_timeout_secs, 3600);
        assert_eq!(l.page_cap(), 1000);
    }

    #[test]
    fn schema_properties_drive_behaviour() {
        let r = SchemaRegistry::get();
        let u = r
            .resolve(ResourceKind::User, &p(None, "USERNAME", None))
            .unwrap();
        assert_eq!(u.attr.name, "userName");
        assert!(u.attr.required && !u.attr.case_exact);
        assert_eq!(u.attr.uniqueness, Uniqueness::Server);
        let pw = r
            .resolve(ResourceKind::User, &p(None, "password", None))
            .unwrap();
        assert_eq!(
            (pw.attr.mutability, pw.attr.returned),
            (Mutability::WriteOnly, Returned::Never)
        );
        let groups = r
            .resolve(ResourceKind::User, &p(None, "groups", None))
            .unwrap();
        assert_eq!(groups.attr.mutability, Mutability::ReadOnly);
        let id = r
            .resolve(ResourceKind::Group, &p(None, "id", None))
            .unwrap();
        assert_eq!(
            (id.attr.returned, id.attr.mutability),
            (Returned::Always, Mutability::ReadOnly)
        );
        assert_eq!(id.schema_urn, GROUP_SCHEMA);
        let dn = r
            .resolve(ResourceKind::Group, &p(None, "displayName", None))
            .unwrap();
        assert!(dn.attr.required);
        let mv = r
            .resolve(ResourceKind::Group, &p(None, "members", Some("value")))
            .unwrap();
        assert_eq!(mv.sub.unwrap().mutability, Mutability::Immutable);
    }

    #[test]
    fn resolve_handles_urns_case_and_extensions() {
        let r = SchemaRegistry::get();
        let m = r
            .resolve(
                ResourceKind::User,
                &p(
                    Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:user"),
                    "Manager",
                    Some("VALUE"),
                ),
            )
            .unwrap();
        assert!(m.extension);
        assert_eq!(m.schema_urn, ENTERPRISE_USER_SCHEMA);
        assert_eq!(
            (m.attr.name.as_str(), m.sub.unwrap().name.as_str()),
            ("manager", "value")
        );
        // Unqualified extension attribute is found after the core schema.
        let e = r
            .resolve(ResourceKind::User, &p(None, "employeeNumber", None))
            .unwrap();
        assert!(e.extension);
        let core = r
            .resolve(
                ResourceKind::User,
                &p(Some(USER_SCHEMA), "name", Some("givenName")),
            )
            .unwrap();
        assert!(!core.extension);
        assert_eq!(core.target().name, "givenName");
        let meta = r
            .resolve(
                ResourceKind::User,
                &p(Some(USER_SCHEMA), "meta", Some("lastModified")),
            )
            .unwrap();
        assert_eq!(meta.target().attr_type, AttrType::DateTime);
    }

    #[test]
    fn resolve_errors_name_the_unknown_attribute() {
        let r = SchemaRegistry::get();
        for (path, needle) in [
            (p(None, "nosuch", None), "nosuch"),
            (p(None, "name", Some("nosub")), "name.nosub"),
            (
                p(Some("urn:example:custom:2.0:User"), "x", None),
                "urn:example:custom:2.0:User",
            ),
            // enterprise extension is not a Group extension
            (p(None, "employeeNumber", None), "employeeNumber"),
        ] {
            let kind = if needle == "employeeNumber" {
                ResourceKind::Group
            } else {
                ResourceKind::User
            };
            let e = r.resolve(kind, &path).unwrap_err();
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(crate::scim::ScimType::InvalidPath))
            );
            assert!(e.detail.contains(needle), "{} lacks {needle}", e.detail);
        }
    }

    #[test]
    fn case_exact_follows_the_schema() {
        let r = SchemaRegistry::get();
        assert!(r.case_exact(ResourceKind::User, &p(None, "id", None)));
        assert!(r.case_exact(ResourceKind::User, &p(None, "externalId", None)));
        assert!(!r.case_exact(ResourceKind::User, &p(None, "userName", None)));
        assert!(!r.case_exact(ResourceKind::User, &p(None, "emails", None)));
        assert!(r.case_exact(ResourceKind::Group, &p(None, "members", None)));
        assert!(!r.case_exact(ResourceKind::Group, &p(None, "displayName", None)));
        assert!(!r.case_exact(ResourceKind::User, &p(None, "unknown", None)));
    }

    #[test]
    fn split_urn_never_splits_on_the_version_dot() {
        let r = SchemaRegistry::get();
        let k = ResourceKind::User;
        assert_eq!(
            r.split_urn(
                k,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value"
            ),
            Some((ENTERPRISE_USER_SCHEMA, "manager.value"))
        );
        assert_eq!(
            r.split_urn(
                k,
                "URN:IETF:PARAMS:SCIM:SCHEMAS:CORE:2.0:USER:name.givenName"
            ),
            Some((USER_SCHEMA, "name.givenName"))
        );
        assert_eq!(r.split_urn(k, ENTERPRISE_USER_SCHEMA), None);
        assert_eq!(
            r.split_urn(
                k,
                "urn:ietf:params:scim:schemas:extension:ADSCIM:2.0:User:x"
            ),
            None
        );
        assert_eq!(
            r.split_urn(
                ResourceKind::Group,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:x"
            ),
            None
        );
        assert_eq!(r.split_urn(k, "é"), None);
    }

    #[test]
    fn broken_sources_are_reported_not_accepted() {
        let good = Sources::embedded();
        let bad_type = USER_JSON.replacen("\"type\": \"string\"", "\"type\": \"text\"", 1);
        let no_limit = SPC_JSON.replace("\"maxResults\": 1000", "\"maxResults\": 0");
        let bad_rt = RESOURCE_TYPES_JSON.replace(GROUP_SCHEMA, "urn:example:nope");
        for src in [
            Sources {
                user: "{",
                ..Sources::embedded()
            },
            Sources {
                user: &bad_type,
                ..Sources::embedded()
            },
            Sources {
                spc: &no_limit,
                ..Sources::embedded()
            },
            Sources {
                resource_types: &bad_rt,
                ..Sources::embedded()
            },
            Sources {
                sp_schemas: "{}",
                ..Sources::embedded()
            },
        ] {
            assert!(SchemaRegistry::from_sources(&src).is_err());
        }
        assert!(SchemaRegistry::from_sources(&good).is_ok());
    }

    #[test]
    fn every_attribute_of_the_served_schemas_has_full_properties() {
        // scim2-models validates /Schemas; every property must be spelled out in the files.
        fn check(a: &Value) {
            for k in [
                "name",
                "type",
                "multiValued",
                "description",
                "required",
                "caseExact",
                "mutability",
                "returned",
                "uniqueness",
            ] {
                assert!(a.get(k).is_some(), "{} lacks {k}", a["name"]);
            }
            for s in a
                .get("subAttributes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                check(s);
            }
        }
        for s in SchemaRegistry::get().schemas() {
            assert!(
                s.raw.get("meta").is_none(),
                "meta is added by the HTTP layer"
            );
            for a in s.raw["attributes"].as_array().unwrap() {
                check(a);
            }
        }
    }
}
