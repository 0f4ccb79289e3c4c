//! Authenticator and tenants/tokens storage against real databases (a SQLite file always,
//! PostgreSQL too when `DEPROVD_TEST_PG` is set) and a real JWKS endpoint on 127.0.0.1.

use std::net::IpAddr;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use sqlx::AnyConnection;

use super::jwt::testkit::{jwks, now, sign, JwksServer};
use super::*;
use crate::store::tenants::{self as ts, TenantError, TokenRow};
use crate::store::testing::fresh_dbs;

const IP: &str = "192.0.2.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn create_tenant(db: &Db, name: &str) -> Result<Tenant, TenantError> {
    let name = name.to_string();
    db.write(move |c: &mut AnyConnection| {
        Box::pin(async move { ts::create_tenant(c, &name).await })
    })
    .await
}

async fn mint(db: &Db, tenant_id: &str, scope: Scope, name: &str) -> (String, TokenRow) {
    let (plain, hash) = generate_token(scope);
    let (tid, name) = (tenant_id.to_string(), name.to_string());
    let row = db
        .write(move |c: &mut AnyConnection| {
            Box::pin(async move { ts::insert_token(c, &tid, scope, &name, &hash).await })
        })
        .await
        .unwrap();
    (plain, row)
}

async fn revoke(db: &Db, id: &str) -> bool {
    let id = id.to_string();
    db.write(move |c: &mut AnyConnection| {
        Box::pin(async move { ts::revoke_token(c, &id).await.map_err(TenantError::from) })
    })
    .await
    .unwrap()
}

fn bearer_of(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn tenants_create_find_list_and_reject_bad_or_duplicate_names() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "acme-corp.eu_1").await.unwrap();
        assert!(matches!(
            create_tenant(&db, "acme-corp.eu_1").await,
            Err(TenantError::DuplicateName(_))
        ));
        for bad in ["", "a b", "é", ".", "..", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    create_tenant(&db, bad).await,
                    Err(TenantError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(create_tenant(&db, &"x".repeat(64)).await.is_ok());
        assert_eq!(
            ts::tenant_by_name(&db.pool, "acme-corp.eu_1")
                .await
                .unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            ts::tenant_by_id(&db.pool, &a.id).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(ts::tenant_by_name(&db.pool, "nope").await.unwrap(), None);
        let names: Vec<String> = ts::list_tenants(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["acme-corp.eu_1".to_string(), "x".repeat(64)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_default_tenant_is_idempotent_under_concurrency() {
    for db in fresh_dbs().await {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let db = db.clone();
            tasks.push(tokio::spawn(
                async move { ts::ensure_default_tenant(&db).await },
            ));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap().id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "one default tenant, got {ids:?}");
        assert_eq!(ts::list_tenants(&db.pool).await.unwrap().len(), 1);
        // and across two handles on the same database ("two processes")
        let again = ts::ensure_default_tenant(&db).await.unwrap();
        assert_eq!(again.id, ids[0]);
        assert_eq!(again.name, ts::DEFAULT_TENANT);
    }
}

#[tokio::test]
async fn token_rows_list_count_revoke() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        let b = create_tenant(&db, "b").await.unwrap();
        assert_eq!(
            ts::count_tokens(&db.pool, &a.id, Scope::Scim, false)
                .await
                .unwrap(),
            0
        );
        let (plain, row) = mint(&db, &a.id, Scope::Scim, "okta").await;
        mint(&db, &a.id, Scope::Admin, "ops").await;
        mint(&db, &b.id, Scope::Scim, "entra").await;

        // lookup by hash finds the row and its tenant in one query, with the stored hash
        let m = ts::token_by_hash(&db.pool, &hash_token(&plain))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.token, row);
        assert_eq!(m.tenant, a);
        assert!(tokens::hashes_match(&m.token_hash, &hash_token(&plain)));
        assert!(ts::token_by_hash(&db.pool, &hash_token("dpv_scim_other"))
            .await
            .unwrap()
            .is_none());

        let listed = ts::list_tokens(&db.pool, &a.id).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|t| t.tenant_id == a.id));
        assert_eq!(
            ts::count_tokens(&db.pool, &a.id, Scope::Scim, false)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            ts::count_tokens(&db.pool, &a.id, Scope::Auditor, false)
                .await
                .unwrap(),
            0
        );

        // the admin API's revoke is scoped to its tenant
        let (rid, bid) = (row.id.clone(), b.id.clone());
        let other = db
            .write(move |c: &mut AnyConnection| {
                Box::pin(async move {
                    ts::revoke_tenant_token(c, &bid, &rid)
                        .await
                        .map_err(TenantError::from)
                })
            })
            .await
            .unwrap();
        assert!(!other, "tenant b cannot revoke tenant a's token");
        assert!(revoke(&db, &row.id).await);
        assert!(
            !revoke(&db, &row.id).await,
            "second revoke reports nothing to do"
        );
        assert!(!revoke(&db, "no-such-id").await);
        assert_eq!(
            ts::count_tokens(&db.pool, &a.id, Scope::Scim, true)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            ts::count_tokens(&db.pool, &a.id, Scope::Scim, false)
                .await
                .unwrap(),
            1
        );
        let r = ts::token_by_id(&db.pool, &row.id).await.unwrap().unwrap();
        assert!(r.revoked.is_some());

        // unknown tenant and bad names are refused cleanly
        let (_, hash) = generate_token(Scope::Scim);
        let h2 = hash.clone();
        let r = db
            .write(move |c: &mut AnyConnection| {
                Box::pin(async move { ts::insert_token(c, "nope", Scope::Scim, "x", &h2).await })
            })
            .await;
        assert!(matches!(r, Err(TenantError::NotFound(_))));
        let aid = a.id.clone();
        let r = db
            .write(move |c: &mut AnyConnection| {
                Box::pin(async move { ts::insert_token(c, &aid, Scope::Scim, "", &hash).await })
            })
            .await;
        assert!(matches!(r, Err(TenantError::InvalidTokenName)));
    }
}

#[tokio::test]
async fn opaque_tokens_authenticate_with_tenant_isolation_and_scopes() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        let b = create_tenant(&db, "b").await.unwrap();
        let (ta, ra) = mint(&db, &a.id, Scope::Scim, "okta").await;
        let (tb, _) = mint(&db, &b.id, Scope::Scim, "entra").await;
        let (adm, _) = mint(&db, &a.id, Scope::Admin, "ops").await;
        let (aud, _) = mint(&db, &a.id, Scope::Auditor, "auditors").await;
        let auth = Authenticator::new(db.clone(), reqwest::Client::new());

        let p = auth
            .authenticate(Some(&bearer_of(&ta)), ip(IP), &[Scope::Scim])
            .await
            .unwrap();
        assert_eq!(
            p,
            Principal {
                tenant_id: a.id.clone(),
                tenant_name: "a".into(),
                scope: Scope::Scim,
                token_id: ra.id.clone(),
                token_name: "okta".into(),
                via_jwt: false,
            }
        );
        let p = auth
            .authenticate(Some(&bearer_of(&tb)), ip(IP), &[Scope::Scim])
            .await
            .unwrap();
        assert_eq!(
            (p.tenant_id.as_str(), p.tenant_name.as_str()),
            (b.id.as_str(), "b")
        );

        // scopes: the route decides
        assert_eq!(
            auth.authenticate(
                Some(&bearer_of(&ta)),
                ip(IP),
                &[Scope::Admin, Scope::Auditor]
            )
            .await,
            Err(AuthError::WrongScope)
        );
        assert_eq!(
            auth.authenticate(Some(&bearer_of(&adm)), ip(IP), &[Scope::Scim])
                .await,
            Err(AuthError::WrongScope)
        );
        let p = auth
            .authenticate(
                Some(&bearer_of(&aud)),
                ip(IP),
                &[Scope::Admin, Scope::Auditor],
            )
            .await
            .unwrap();
        assert_eq!(p.scope, Scope::Auditor);
        assert_eq!(
            auth.authenticate(Some(&bearer_of(&ta)), ip(IP), &[]).await,
            Err(AuthError::WrongScope)
        );

        // header forms
        for h in [
            format!("bearer {ta}"),
            format!("BEARER   {ta}  "),
            format!("Bearer\t{ta}"),
        ] {
            assert!(
                auth.authenticate(Some(&h), ip(IP), &[Scope::Scim])
                    .await
                    .is_ok(),
                "{h:?}"
            );
        }
        assert_eq!(
            auth.authenticate(None, ip(IP), &[Scope::Scim]).await,
            Err(AuthError::Missing)
        );
        for h in [
            format!("Basic {ta}"),
            "Bearer".to_string(),
            "Bearer    ".to_string(),
            format!("Bearer {ta} extra"),
            ta.clone(),
            format!("Bearer {ta}x"),
            format!("Bearer dpv_scim_{}", "A".repeat(5000)),
            "Bearer not-one-of-ours".to_string(),
        ] {
            let r = auth
                .authenticate(Some(&h), ip("198.51.100.1"), &[Scope::Scim])
                .await;
            match r {
                Err(AuthError::Invalid(why)) => assert!(!why.contains(&ta)),
                other => panic!("{h:.40}: {other:?}"),
            }
        }
        // last_used is written in the background
        let mut used = None;
        for _ in 0..50 {
            used = ts::token_by_id(&db.pool, &ra.id)
                .await
                .unwrap()
                .unwrap()
                .last_used;
            if used.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(used.is_some(), "last_used recorded");
    }
}

#[tokio::test]
async fn revoked_tokens_are_refused_within_the_cache_ttl() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        let (t, row) = mint(&db, &a.id, Scope::Scim, "okta").await;
        let settings = AuthSettings {
            token_cache_ttl: Duration::from_millis(300),
            ..AuthSettings::default()
        };
        let auth = Authenticator::with_settings(db.clone(), reqwest::Client::new(), settings);
        let h = bearer_of(&t);
        assert!(auth
            .authenticate(Some(&h), ip(IP), &[Scope::Scim])
            .await
            .is_ok());
        assert!(revoke(&db, &row.id).await);
        // cached: still accepted right away (the documented window) ...
        assert!(auth
            .authenticate(Some(&h), ip(IP), &[Scope::Scim])
            .await
            .is_ok());
        // ... refused once the TTL has passed
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(
            auth.authenticate(Some(&h), ip(IP), &[Scope::Scim]).await,
            Err(AuthError::Invalid(_))
        ));

        // forget_cached_tokens makes it immediate
        let (t2, row2) = mint(&db, &a.id, Scope::Scim, "second").await;
        let auth = Authenticator::new(db.clone(), reqwest::Client::new());
        let h2 = bearer_of(&t2);
        assert!(auth
            .authenticate(Some(&h2), ip(IP), &[Scope::Scim])
            .await
            .is_ok());
        assert!(revoke(&db, &row2.id).await);
        auth.forget_cached_tokens();
        assert!(matches!(
            auth.authenticate(Some(&h2), ip(IP), &[Scope::Scim]).await,
            Err(AuthError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn failures_per_address_lead_to_429_that_decays() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        let (good, _) = mint(&db, &a.id, Scope::Scim, "okta").await;
        let settings = AuthSettings {
            rate_limit: RateLimitConfig {
                max_failures: 5,
                base_lockout: Duration::from_millis(400),
                ..RateLimitConfig::default()
            },
            ..AuthSettings::default()
        };
        let auth = Authenticator::with_settings(db.clone(), reqwest::Client::new(), settings);
        let attacker = ip("203.0.113.7");
        let (wrong, _) = generate_token(Scope::Scim);
        for _ in 0..4 {
            assert!(matches!(
                auth.authenticate(Some(&bearer_of(&wrong)), attacker, &[Scope::Scim])
                    .await,
                Err(AuthError::Invalid(_))
            ));
        }
        let e = auth
            .authenticate(Some(&bearer_of(&wrong)), attacker, &[Scope::Scim])
            .await
            .unwrap_err();
        assert_eq!(
            e,
            AuthError::TooManyAttempts {
                retry_after_secs: 1
            }
        );
        assert_eq!(e.status_code(), 429);
        assert_eq!(e.retry_after_secs(), Some(1));
        // locked out: even a valid token is not looked at
        assert!(matches!(
            auth.authenticate(Some(&bearer_of(&good)), attacker, &[Scope::Scim])
                .await,
            Err(AuthError::TooManyAttempts { .. })
        ));
        // another address (and loopback is not special) is unaffected
        assert!(auth
            .authenticate(Some(&bearer_of(&good)), ip("127.0.0.1"), &[Scope::Scim])
            .await
            .is_ok());
        // missing header is not a failure and is not counted
        // the lockout passes
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(auth
            .authenticate(Some(&bearer_of(&good)), attacker, &[Scope::Scim])
            .await
            .is_ok());
        // a success does not reset the count: 4 more failures, success, then 1 more locks
        // again
        let lo = ip("127.0.0.1");
        for _ in 0..4 {
            let _ = auth
                .authenticate(Some(&bearer_of(&wrong)), lo, &[Scope::Scim])
                .await;
        }
        assert!(auth
            .authenticate(Some(&bearer_of(&good)), lo, &[Scope::Scim])
            .await
            .is_ok());
        assert!(matches!(
            auth.authenticate(Some(&bearer_of(&wrong)), lo, &[Scope::Scim])
                .await,
            Err(AuthError::TooManyAttempts { .. })
        ));
        // Missing and WrongScope do not count
        let other = ip("203.0.113.99");
        for _ in 0..10 {
            assert_eq!(
                auth.authenticate(None, other, &[Scope::Scim]).await,
                Err(AuthError::Missing)
            );
            assert_eq!(
                auth.authenticate(Some(&bearer_of(&good)), other, &[Scope::Admin])
                    .await,
                Err(AuthError::WrongScope)
            );
        }
    }
}

#[test]
fn error_mapping_for_http() {
    assert_eq!(AuthError::Missing.status_code(), 401);
    assert_eq!(
        AuthError::Missing.www_authenticate().unwrap(),
        r#"Bearer realm="deprovd""#
    );
    let h = AuthError::Invalid("bad \"quote\" \\ é".into())
        .www_authenticate()
        .unwrap();
    assert!(h.starts_with(r#"Bearer realm="deprovd", error="invalid_token""#));
    assert!(h.ends_with(r#"error_description="bad quote  ""#), "{h}");
    assert_eq!(AuthError::WrongScope.status_code(), 403);
    assert!(AuthError::WrongScope
        .www_authenticate()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(AuthError::Unavailable("x".into()).status_code(), 503);
    assert_eq!(AuthError::Unavailable("x".into()).www_authenticate(), None);
}

// --- JWT ----------------------------------------------------------------------------------------

const ISS: &str = "https://tenant.okta.example/oauth2/default";

fn claims(aud: &str) -> serde_json::Value {
    json!({ "iss": ISS, "aud": aud, "sub": "0oa-scim-client", "exp": now() + 300 })
}

async fn set_jwt(
    db: &Db,
    tenant_id: &str,
    iss: &str,
    aud: &str,
    url: &str,
) -> Result<(), TenantError> {
    let (t, i, a, u) = (
        tenant_id.to_string(),
        iss.to_string(),
        aud.to_string(),
        url.to_string(),
    );
    db.write(move |c: &mut AnyConnection| {
        Box::pin(async move { ts::set_tenant_jwt(c, &t, &i, &a, &u).await })
    })
    .await
}

#[tokio::test]
async fn jwt_settings_are_validated_and_cleared() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        for bad_url in [
            "http://idp.example/jwks",
            "http://localhost.evil.example/jwks",
            "ftp://127.0.0.1/jwks",
            "not a url",
        ] {
            assert!(
                matches!(
                    set_jwt(&db, &a.id, ISS, "aud", bad_url).await,
                    Err(TenantError::InvalidJwt(_))
                ),
                "{bad_url}"
            );
        }
        assert!(matches!(
            set_jwt(&db, &a.id, "", "aud", "https://idp.example/jwks").await,
            Err(TenantError::InvalidJwt(_))
        ));
        assert!(matches!(
            set_jwt(&db, "nope", ISS, "aud", "https://idp.example/jwks").await,
            Err(TenantError::NotFound(_))
        ));
        for ok in [
            "https://idp.example/jwks",
            "http://127.0.0.1:9/j",
            "http://[::1]:9/j",
            "http://localhost/j",
        ] {
            set_jwt(&db, &a.id, ISS, "aud", ok).await.unwrap();
        }
        let t = ts::tenant_by_id(&db.pool, &a.id).await.unwrap().unwrap();
        assert_eq!(t.jwt().unwrap().issuer, ISS);
        assert_eq!(
            ts::tenants_by_issuer(&db.pool, ISS).await.unwrap(),
            vec![t.clone()]
        );
        assert_eq!(ts::jwt_tenants(&db.pool).await.unwrap(), vec![t]);
        let id = a.id.clone();
        db.write(move |c: &mut AnyConnection| {
            Box::pin(async move { ts::clear_tenant_jwt(c, &id).await })
        })
        .await
        .unwrap();
        assert!(ts::tenants_by_issuer(&db.pool, ISS)
            .await
            .unwrap()
            .is_empty());
        assert!(ts::tenant_by_id(&db.pool, &a.id)
            .await
            .unwrap()
            .unwrap()
            .jwt()
            .is_none());
    }
}

#[tokio::test]
async fn jwt_bearer_gives_scim_principal_of_the_right_tenant() {
    let srv = JwksServer::start(jwks(&["rsa1", "ec1", "ed1"])).await;
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        let b = create_tenant(&db, "b").await.unwrap();
        let c = create_tenant(&db, "c").await.unwrap();
        // a and b trust the same IdP with different audiences; c trusts no IdP
        set_jwt(&db, &a.id, ISS, "deprovd-a", &srv.url)
            .await
            .unwrap();
        set_jwt(&db, &b.id, ISS, "deprovd-b", &srv.url)
            .await
            .unwrap();
        let auth = Authenticator::new(db.clone(), reqwest::Client::new());

        let tok = sign(Algorithm::RS256, Some("rsa-1"), &claims("deprovd-a"));
        let p = auth
            .authenticate(Some(&bearer_of(&tok)), ip(IP), &[Scope::Scim])
            .await
            .unwrap();
        assert_eq!(
            p,
            Principal {
                tenant_id: a.id.clone(),
                tenant_name: "a".into(),
                scope: Scope::Scim,
                token_id: "jwt:0oa-scim-client".into(),
                token_name: "0oa-scim-client".into(),
                via_jwt: true,
            }
        );
        let tok = sign(Algorithm::EdDSA, Some("ed-1"), &claims("deprovd-b"));
        let p = auth
            .authenticate(Some(&bearer_of(&tok)), ip(IP), &[Scope::Scim])
            .await
            .unwrap();
        assert_eq!(p.tenant_id, b.id);
        assert_ne!(p.tenant_id, c.id);

        // JWTs only ever get the SCIM scope
        let tok = sign(Algorithm::ES256, Some("ec-1"), &claims("deprovd-a"));
        assert_eq!(
            auth.authenticate(
                Some(&bearer_of(&tok)),
                ip(IP),
                &[Scope::Admin, Scope::Auditor]
            )
            .await,
            Err(AuthError::WrongScope)
        );

        // client_id when there is no sub
        let mut cl = claims("deprovd-a");
        cl.as_object_mut().unwrap().remove("sub");
        cl["client_id"] = json!("entra-app");
        let p = auth
            .authenticate(
                Some(&bearer_of(&sign(Algorithm::RS256, Some("rsa-1"), &cl))),
                ip(IP),
                &[Scope::Scim],
            )
            .await
            .unwrap();
        assert_eq!(
            (p.token_id.as_str(), p.token_name.as_str()),
            ("jwt:entra-app", "entra-app")
        );

        // refusals: unknown audience, unknown issuer, expired, alg none
        let other_ip = ip("198.51.100.20");
        let mut refused = vec![
            sign(Algorithm::RS256, Some("rsa-1"), &claims("deprovd-c")),
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &json!({"iss": "https://evil.example", "aud": "deprovd-a", "sub": "x", "exp": now() + 60}),
            ),
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &json!({"iss": ISS, "aud": "deprovd-a", "sub": "x", "exp": now() - 3600}),
            ),
        ];
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        refused.push(format!(
            "{}.{}.",
            b64(json!({"alg": "none"})),
            b64(claims("deprovd-a"))
        ));
        for t in refused {
            let r = auth
                .authenticate(Some(&bearer_of(&t)), other_ip, &[Scope::Scim])
                .await;
            assert!(matches!(r, Err(AuthError::Invalid(_))), "{r:?}");
        }

        // if both tenants share an audience, the token is refused rather than handed to one
        set_jwt(&db, &b.id, ISS, "deprovd-a", &srv.url)
            .await
            .unwrap();
        auth.forget_cached_tokens();
        let tok = sign(Algorithm::RS256, Some("rsa-1"), &claims("deprovd-a"));
        assert!(matches!(
            auth.authenticate(Some(&bearer_of(&tok)), ip(IP), &[Scope::Scim])
                .await,
            Err(AuthError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn jwt_with_unreachable_keys_is_503() {
    for db in fresh_dbs().await {
        let a = create_tenant(&db, "a").await.unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", l.local_addr().unwrap());
        drop(l);
        set_jwt(&db, &a.id, ISS, "deprovd-a", &url).await.unwrap();
        let auth = Authenticator::new(db.clone(), reqwest::Client::new());
        let tok = sign(Algorithm::RS256, Some("rsa-1"), &claims("deprovd-a"));
        let r = auth
            .authenticate(Some(&bearer_of(&tok)), ip(IP), &[Scope::Scim])
            .await;
        assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
    }
}
