//! deprovd: a SCIM 2.0 service provider that turns user lifecycle changes into action on MFA
//! factors and sessions. See `../shared/DESIGN.md` for the flow; each module's doc says its job.

pub mod scim;
pub mod config;
pub mod store;
pub mod auth;
// pub mod http; (lead: enabled once directory/auth land)
// pub mod cli;
