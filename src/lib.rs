//! deprovd: a SCIM 2.0 service provider that turns user lifecycle changes into action on MFA
//! factors and sessions. See `../shared/DESIGN.md` for the flow; each module's doc says its job.

pub mod scim;
pub mod config;
pub mod store;
pub mod directory;
pub mod auth;
pub mod http;
pub mod cli;
pub mod policy;
pub mod factors;
pub mod notify;
pub mod audit;
pub mod jobs;
pub mod engine;
pub mod offboarding;
