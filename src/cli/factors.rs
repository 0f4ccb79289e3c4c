//! `deprovd factors list|enroll|revoke`: administer the built-in factor store from the command
//! line. `--user` is the SCIM userName; it is mapped to the factor-store key with the tenant's
//! `[link] by` rule. Enrolling TOTP/HOTP prints the `otpauth://` URI and recovery codes print
//! their codes, once. Every change is audited.
//!
//! Not here: the store itself (`factors/builtin.rs`).

use std::sync::Arc;

use clap::Subcommand;

use crate::audit::AuditActor;
use crate::factors::{self, link_key, EnrollMaterial, FactorType, LinkBy, MasterKey};
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub enum FactorsCmd {
    /// List a user's factors (every status).
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// SCIM userName.
        #[arg(long)]
        user: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enroll a factor for a user.
    Enroll {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// SCIM userName.
        #[arg(long)]
        user: String,
        /// totp, hotp, webauthn, sms, voice, email, push, recovery_codes, hardware_otp, certificate
        #[arg(long = "type", value_name = "TYPE")]
        factor_type: String,
        #[arg(long)]
        label: Option<String>,
        /// WebAuthn credential id / certificate id (webauthn, certificate).
        #[arg(long)]
        credential_id: Option<String>,
        /// Public key of the credential (webauthn, certificate).
        #[arg(long)]
        public_key: Option<String>,
        /// Phone number, address or device (sms, voice, email, push) or token serial.
        #[arg(long)]
        destination: Option<String>,
    },
    /// Revoke a factor by id.
    Revoke {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        id: String,
    },
}

/// (SCIM id, factor-store key) of the user called `user_name` in the tenant.
async fn resolve_user(
    db: &Db,
    tenant_id: &str,
    user_name: &str,
) -> Result<(String, String), String> {
    let link_by = tenant_link_by(db, tenant_id).await?;
    find_user(db, tenant_id, user_name, link_by)
        .await?
        .ok_or_else(|| format!("no user with userName {user_name:?} in this tenant"))
}

/// The tenant policy's `[link] by`.
async fn tenant_link_by(db: &Db, tenant_id: &str) -> Result<LinkBy, String> {
    let (policy, _) = crate::policy::current_policy(db, tenant_id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(policy.link_by)
}

/// [`resolve_user`], None when no live user has that name.
async fn find_user(
    db: &Db,
    tenant_id: &str,
    user_name: &str,
    link_by: LinkBy,
) -> Result<Option<(String, String)>, String> {
    let Some(user) = crate::directory::Directory::new(db.clone())
        .find_user_by_user_name(tenant_id, user_name)
        .await
        .map_err(|e| format!("database error: {e}"))?
    else {
        return Ok(None);
    };
    let key = link_key(&user.resource, link_by).ok_or_else(|| {
        format!(
            "user {user_name:?} has no {} value, which the tenant's policy ([link] by) uses to find them in the factor store",
            link_by.as_str()
        )
    })?;
    Ok(Some((user.id, key)))
}

/// The factor-store key whose factors `factors list --user` shows: the live user's; or, when
/// no live user has the name and the tenant links by userName, the name itself, so a deleted
/// user's factors (kept, revoked, as evidence) can still be listed by name. True when the
/// user is live.
async fn listing_key(db: &Db, tenant_id: &str, user_name: &str) -> Result<(String, bool), String> {
    let link_by = tenant_link_by(db, tenant_id).await?;
    if let Some((_, key)) = find_user(db, tenant_id, user_name, link_by).await? {
        return Ok((key, true));
    }
    let not_found = || {
        format!(
            "no user with userName {user_name:?} in this tenant (a deleted user's factors: \
             GET /admin/v1/users/{{id}}/factors with their SCIM id)"
        )
    };
    if link_by != LinkBy::UserName {
        return Err(not_found());
    }
    // The same normalisation as a live user's key.
    let key =
        link_key(&serde_json::json!({ "userName": user_name }), link_by).ok_or_else(not_found)?;
    let held = factors::list(db, tenant_id, &key)
        .await
        .map_err(|e| e.to_string())?;
    if held.is_empty() {
        return Err(not_found());
    }
    Ok((key, false))
}

fn material(
    t: FactorType,
    credential_id: Option<String>,
    public_key: Option<String>,
    destination: Option<String>,
) -> Result<EnrollMaterial, String> {
    match (credential_id, public_key, destination) {
        (None, None, None) => Ok(EnrollMaterial::None),
        (Some(credential_id), Some(public_key), None) => Ok(EnrollMaterial::Webauthn {
            credential_id,
            public_key,
        }),
        (None, None, Some(value)) => Ok(EnrollMaterial::Destination { value }),
        (Some(_), None, None) | (None, Some(_), None) => Err(format!(
            "a {t} factor needs both --credential-id and --public-key"
        )),
        _ => Err("give either --credential-id with --public-key, or --destination".into()),
    }
}

pub async fn run(db: &Db, key: Arc<MasterKey>, cmd: FactorsCmd) -> Result<(), String> {
    match cmd {
        FactorsCmd::List { tenant, user, json } => {
            let t = super::tenant_named(db, &tenant).await?;
            let (user_key, live) = listing_key(db, &t.id, &user).await?;
            if !live {
                eprintln!(
                    "no live user is called {user:?}: these are the factors the store keeps \
                     under that userName (a deleted user's)"
                );
            }
            let list = factors::list(db, &t.id, &user_key)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                for f in &list {
                    println!("{}", serde_json::to_string(f).map_err(|e| e.to_string())?);
                }
            } else {
                println!(
                    "{:<36}  {:<14}  {:<9}  {:<27}  {:<27}  LABEL",
                    "ID", "TYPE", "STATUS", "CREATED", "LAST USED"
                );
                for f in &list {
                    println!(
                        "{:<36}  {:<14}  {:<9}  {:<27}  {:<27}  {}",
                        f.id,
                        f.factor_type.as_str(),
                        f.status.as_str(),
                        f.created,
                        f.last_used.as_deref().unwrap_or("-"),
                        f.label.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        FactorsCmd::Enroll {
            tenant,
            user,
            factor_type,
            label,
            credential_id,
            public_key,
            destination,
        } => {
            let t = super::tenant_named(db, &tenant).await?;
            let ft: FactorType = factor_type.parse()?;
            let m = material(ft, credential_id, public_key, destination)?;
            let (user_id, user_key) = resolve_user(db, &t.id, &user).await?;
            let by = factors::AuditedBy {
                actor: AuditActor::cli("factors enroll"),
                subject: Some(user_id),
            };
            let enrolled = factors::enroll_audited(db, &key, &t.id, &user_key, ft, label, m, by)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string(&enrolled.factor).map_err(|e| e.to_string())?
            );
            if let Some(uri) = &enrolled.otpauth_uri {
                eprintln!("scan this into the authenticator now; it is not shown again:");
                println!("{uri}");
            }
            if let Some(codes) = &enrolled.recovery_codes {
                eprintln!("recovery codes, shown once; each works once:");
                for c in codes {
                    println!("{c}");
                }
            }
            Ok(())
        }
        FactorsCmd::Revoke { tenant, id } => {
            let t = super::tenant_named(db, &tenant).await?;
            let by = factors::AuditedBy {
                actor: AuditActor::cli("factors revoke"),
                subject: None,
            };
            let (f, changed) = factors::revoke_by_id_audited(db, &t.id, &id, by)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no factor {id} in tenant {}", t.name))?;
            if !changed {
                eprintln!("already revoked");
            }
            println!("{}", serde_json::to_string(&f).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Actor, Directory};
    use crate::factors::crypto::KeySource;
    use crate::factors::FactorStatus;
    use serde_json::json;
    use sqlx::AnyConnection;

    #[test]
    fn material_flags() {
        let t = FactorType::Webauthn;
        assert_eq!(material(t, None, None, None).unwrap(), EnrollMaterial::None);
        assert!(matches!(
            material(t, Some("c".into()), Some("k".into()), None),
            Ok(EnrollMaterial::Webauthn { .. })
        ));
        assert!(matches!(
            material(t, None, None, Some("+1".into())),
            Ok(EnrollMaterial::Destination { .. })
        ));
        assert!(material(t, Some("c".into()), None, None).is_err());
        assert!(material(t, Some("c".into()), Some("k".into()), Some("d".into())).is_err());
    }

    #[tokio::test]
    async fn enroll_list_revoke_by_user_name() {
        for db in crate::store::testing::fresh_dbs().await {
            let tenant = db
                .write(|c: &mut AnyConnection| {
                    Box::pin(async move { crate::store::tenants::create_tenant(c, "fx").await })
                })
                .await
                .unwrap();
            let t = tenant.id.as_str();
            let dir = Directory::new(db.clone());
            let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Erin@Example.com"});
            let created = dir.create_user(&Actor::system(t), user).await.unwrap();
            let key = Arc::new(MasterKey::generate(KeySource::Ephemeral));
            let enroll = |ty: &str| FactorsCmd::Enroll {
                tenant: "fx".into(),
                user: "erin@example.com".into(),
                factor_type: ty.into(),
                label: Some("laptop".into()),
                credential_id: None,
                public_key: None,
                destination: None,
            };
            run(&db, key.clone(), enroll("totp")).await.unwrap();
            run(&db, key.clone(), enroll("recovery-codes"))
                .await
                .unwrap();
            assert!(run(&db, key.clone(), enroll("pigeon"))
                .await
                .unwrap_err()
                .contains("pigeon"));
            assert!(run(&db, key.clone(), enroll("webauthn")).await.is_err());
            // keyed by the lower-cased userName (the default [link] by)
            let fs = factors::list(&db, t, "erin@example.com").await.unwrap();
            assert_eq!(fs.len(), 2);
            run(
                &db,
                key.clone(),
                FactorsCmd::List {
                    tenant: "fx".into(),
                    user: "ERIN@example.com".into(),
                    json: true,
                },
            )
            .await
            .unwrap();
            assert!(run(
                &db,
                key.clone(),
                FactorsCmd::List {
                    tenant: "fx".into(),
                    user: "nobody".into(),
                    json: false
                }
            )
            .await
            .unwrap_err()
            .contains("nobody"));
            run(
                &db,
                key.clone(),
                FactorsCmd::Revoke {
                    tenant: "fx".into(),
                    id: fs[0].id.clone(),
                },
            )
            .await
            .unwrap();
            assert_eq!(
                factors::list(&db, t, "erin@example.com").await.unwrap()[0].status,
                FactorStatus::Revoked
            );
            assert!(run(
                &db,
                key.clone(),
                FactorsCmd::Revoke {
                    tenant: "fx".into(),
                    id: "nope".into()
                }
            )
            .await
            .is_err());
            assert!(run(
                &db,
                key.clone(),
                FactorsCmd::Revoke {
                    tenant: "nope".into(),
                    id: "x".into()
                }
            )
            .await
            .is_err());

            // Deleted: its factors stay in the store and are still listed by name; enrolling
            // for it is refused; a name that never had factors is still unknown.
            assert_eq!(
                listing_key(&db, t, "Erin@Example.com").await.unwrap(),
                ("erin@example.com".to_string(), true)
            );
            dir.delete_user(&Actor::system(t), t, &created.id, None)
                .await
                .unwrap();
            assert_eq!(
                listing_key(&db, t, "ERIN@example.com").await.unwrap(),
                ("erin@example.com".to_string(), false)
            );
            let list = FactorsCmd::List {
                tenant: "fx".into(),
                user: "erin@example.com".into(),
                json: true,
            };
            run(&db, key.clone(), list).await.unwrap();
            assert!(run(&db, key.clone(), enroll("totp"))
                .await
                .unwrap_err()
                .contains("no user"));
            let why = listing_key(&db, t, "nobody").await.unwrap_err();
            assert!(why.contains("/admin/v1/users/{id}/factors"), "{why}");
        }
    }
}
