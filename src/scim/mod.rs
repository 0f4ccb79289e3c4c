//! The SCIM 2.0 protocol (RFC 7643, RFC 7644, RFC 9865) with no I/O: schemas, filters, PATCH,
//! resource validation and projection, list parameters, bulk. Nothing here knows about HTTP or
//! databases.

pub mod bulk;
pub mod error;
pub mod filter;
pub mod list;
pub mod patch;
pub mod resource;
pub mod schema;

pub use error::{ScimError, ScimType};
