//! `deprovd tenant create|list|set-jwt|clear-jwt`: tenants are isolated directories; each has
//! its own tokens, users, groups, policy and factor store.

use clap::Subcommand;

use crate::store::{tenants, Db};

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a new isolated tenant.
    Create { name: String },
    /// List tenants.
    List,
    /// Accept OAuth 2.0 bearer JWTs from an issuer for this tenant's SCIM endpoint.
    SetJwt {
        name: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        jwks_url: String,
    },
    /// Stop accepting JWTs for this tenant.
    ClearJwt { name: String },
}

pub async fn run(db: &Db, cmd: TenantCmd) -> Result<i32, String> {
    match cmd {
        TenantCmd::Create { name } => {
            let t = db
                .write(move |conn| {
                    Box::pin(async move { tenants::create_tenant(conn, &name).await })
                })
                .await
                .map_err(|e: tenants::TenantError| e.to_string())?;
            eprintln!("created tenant {} ({})", t.name, t.id);
            println!("{}", t.id);
            Ok(0)
        }
        TenantCmd::List => {
            let all = tenants::list_tenants(&db.pool)
                .await
                .map_err(|e| format!("database error: {e}"))?;
            println!("{:<36}  {:<24}  JWT ISSUER", "ID", "NAME");
            for t in all {
                println!(
                    "{:<36}  {:<24}  {}",
                    t.id,
                    t.name,
                    t.jwt_issuer.as_deref().unwrap_or("-")
                );
            }
            Ok(0)
        }
        TenantCmd::SetJwt {
            name,
            issuer,
            audience,
            jwks_url,
        } => {
            tenants::validate_jwt_settings(&issuer, &audience, &jwks_url)?;
            let t = super::tenant_named(db, &name).await?;
            db.write(move |conn| {
                Box::pin(async move {
                    tenants::set_tenant_jwt(conn, &t.id, &issuer, &audience, &jwks_url).await
                })
            })
            .await
            .map_err(|e: tenants::TenantError| e.to_string())?;
            eprintln!("tenant {name} now accepts JWTs from that issuer");
            Ok(0)
        }
        TenantCmd::ClearJwt { name } => {
            let t = super::tenant_named(db, &name).await?;
            db.write(move |conn| {
                Box::pin(async move { tenants::clear_tenant_jwt(conn, &t.id).await })
            })
            .await
            .map_err(|e: tenants::TenantError| e.to_string())?;
            eprintln!("tenant {name} no longer accepts JWTs");
            Ok(0)
        }
    }
}
