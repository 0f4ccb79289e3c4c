//! deprovd: a SCIM 2.0 service provider that turns user lifecycle changes into action on MFA
//! factors and sessions. See `../shared/DESIGN.md` for the flow; each module's doc says its job.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
pub mod engine;
pub mod factors;
pub mod http;
pub mod jobs;
pub mod notify;
pub mod offboarding;
pub mod policy;
pub mod scim;
pub mod store;
