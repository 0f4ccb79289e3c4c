//! Integration tests: each spawns the real application on a random loopback port with a fresh
//! database and drives it over HTTP, on SQLite and (with DEPROVD_TEST_PG) on PostgreSQL.

mod helpers;

mod auth;
mod discovery;
mod entra;
mod groups;
mod hostile;
mod lifecycle;
mod listing;
mod notifications;
mod okta;
mod resilience;
mod users;
