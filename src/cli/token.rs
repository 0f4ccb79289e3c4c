//! `deprovd token create|list|revoke`: API tokens. A new token is printed once, alone on
//! stdout (so `TOKEN=$(deprovd token create …)` works), with its details on stderr; only its
//! SHA-256 is stored.

use clap::Subcommand;

use crate::auth::{generate_token, Scope};
use crate::store::{tenants, Db};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it once.
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// scim (provisioning), admin (admin API, read and write) or auditor (admin API, read only)
        #[arg(long)]
        scope: String,
        /// A name that says who uses it (shown in the audit log).
        #[arg(long)]
        name: String,
    },
    /// List a tenant's tokens (never the secrets).
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

pub async fn run(db: &Db, cmd: TokenCmd) -> Result<i32, String> {
    match cmd {
        TokenCmd::Create {
            tenant,
            scope,
            name,
        } => {
            let scope = Scope::parse(&scope)
                .ok_or_else(|| format!("scope {scope:?} must be scim, admin or auditor"))?;
            let t = super::tenant_named(db, &tenant).await?;
            let (token, row) = create(db, &t.id, scope, &name).await?;
            eprintln!(
                "created {} token {} ({}) for tenant {}; it is shown once:",
                scope.as_str(),
                row.id,
                row.name,
                t.name
            );
            println!("{token}");
            Ok(0)
        }
        TokenCmd::List { tenant } => {
            let t = super::tenant_named(db, &tenant).await?;
            let rows = tenants::list_tokens(&db.pool, &t.id)
                .await
                .map_err(|e| format!("database error: {e}"))?;
            println!(
                "{:<36}  {:<8}  {:<27}  {:<27}  NAME",
                "ID", "SCOPE", "CREATED", "REVOKED"
            );
            for r in rows {
                println!(
                    "{:<36}  {:<8}  {:<27}  {:<27}  {}",
                    r.id,
                    r.scope.as_str(),
                    r.created,
                    r.revoked.as_deref().unwrap_or("-"),
                    r.name
                );
            }
            Ok(0)
        }
        TokenCmd::Revoke { id } => {
            let revoked = db
                .write(move |conn| {
                    Box::pin(async move {
                        tenants::revoke_token(conn, &id)
                            .await
                            .map_err(crate::store::StoreError::from)
                    })
                })
                .await
                .map_err(|e: crate::store::StoreError| format!("database error: {e}"))?;
            if revoked {
                eprintln!("revoked");
                Ok(0)
            } else {
                Err("no active token with that id".into())
            }
        }
    }
}

/// Generates a token and stores its hash; returns the plaintext (show once) and the row.
pub async fn create(
    db: &Db,
    tenant_id: &str,
    scope: Scope,
    name: &str,
) -> Result<(String, tenants::TokenRow), String> {
    let (token, hash) = generate_token(scope);
    let (tenant_id, name) = (tenant_id.to_string(), name.to_string());
    let row = db
        .write(move |conn| {
            Box::pin(
                async move { tenants::insert_token(conn, &tenant_id, scope, &name, &hash).await },
            )
        })
        .await
        .map_err(|e: tenants::TenantError| e.to_string())?;
    Ok((token, row))
}
