//! Authentication and tenant isolation over HTTP.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn missing_or_wrong_token_is_401_with_www_authenticate() {
    for app in apps().await {
        let r = app.send(reqwest::Method::GET, "/Users", None, None).await;
        assert_eq!(r.status, 401, "[{}]", app.engine);
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert_eq!(r.body["status"], "401");
        let r = app
            .send(reqwest::Method::GET, "/Users", None, Some("dpv_scim_wrong"))
            .await;
        assert_eq!(r.status, 401);
        // an admin token is not a SCIM token
        let r = app
            .send(
                reqwest::Method::GET,
                "/Users",
                None,
                Some(&app.admin_token.clone()),
            )
            .await;
        assert_eq!(r.status, 403, "[{}] {}", app.engine, r.text);
    }
}

#[tokio::test]
async fn repeated_bad_tokens_are_slowed_with_429() {
    let app = spawn_app("sqlite").await;
    let mut got_429 = None;
    for i in 0..100 {
        let r = app
            .send(
                reqwest::Method::GET,
                "/Users",
                None,
                Some(&format!("dpv_scim_guess{i}")),
            )
            .await;
        if r.status == 429 {
            got_429 = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
    }
    let r = got_429.expect("429 after repeated failures");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // even the right token waits while the address is slowed
    let r = app.get("/Users").await;
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn tenants_are_isolated() {
    for app in apps().await {
        let u = app.create_user("isolated@example.com").await;
        let id = u["id"].as_str().unwrap().to_string();
        let g = app.create_group("Iso", &[&id]).await;
        let gid = g["id"].as_str().unwrap().to_string();
        // a second tenant with its own token
        let db = &app.state.db;
        let name = "other".to_string();
        let t = db
            .write(move |conn| {
                Box::pin(async move { deprovd::store::tenants::create_tenant(conn, &name).await })
            })
            .await
            .unwrap();
        let (token, _) =
            deprovd::cli::token::create(db, &t.id, deprovd::auth::Scope::Scim, "other-idp")
                .await
                .unwrap();
        let other = |m: reqwest::Method, p: &str, b: Option<serde_json::Value>| {
            let token = token.clone();
            let p = p.to_string();
            let app = &app;
            async move { app.send(m, &p, b.as_ref(), Some(&token)).await }
        };
        assert_eq!(
            other(reqwest::Method::GET, &format!("/Users/{id}"), None)
                .await
                .status,
            404
        );
        assert_eq!(
            other(reqwest::Method::GET, "/Users", None).await.body["totalResults"],
            0
        );
        assert_eq!(
            other(reqwest::Method::GET, "/Groups", None).await.body["totalResults"],
            0
        );
        assert_eq!(
            other(reqwest::Method::DELETE, &format!("/Users/{id}"), None)
                .await
                .status,
            404
        );
        assert_eq!(
            other(
                reqwest::Method::PATCH,
                &format!("/Users/{id}"),
                Some(patch(
                    json!([{"op": "replace", "path": "active", "value": false}])
                ))
            )
            .await
            .status,
            404
        );
        // the same userName is free in the other tenant
        assert_eq!(
            other(
                reqwest::Method::POST,
                "/Users",
                Some(user("isolated@example.com"))
            )
            .await
            .status,
            201
        );
        // a group there that names this tenant's user id resolves to nothing of this tenant
        let r = other(
            reqwest::Method::POST,
            "/Groups",
            Some(json!({"schemas": [GROUP], "displayName": "X", "members": [{"value": id}]})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let ogid = r.body["id"].as_str().unwrap().to_string();
        let r = other(
            reqwest::Method::GET,
            &format!("/Groups/{ogid}?attributes=members.display,members.value"),
            None,
        )
        .await;
        assert_eq!(r.body["members"][0]["value"], id.as_str(), "{}", r.text);
        assert!(
            r.body["members"][0].get("display").is_none(),
            "no display leaks across tenants: {}",
            r.text
        );
        let mine = app.get(&format!("/Users/{id}")).await;
        let groups: Vec<&str> = mine.body["groups"]
            .as_array()
            .map(|a| a.iter().filter_map(|g| g["value"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            groups,
            vec![gid.as_str()],
            "the other tenant's group does not show on this tenant's user"
        );
        assert_eq!(
            other(reqwest::Method::GET, &format!("/Groups/{gid}"), None)
                .await
                .status,
            404
        );
        // the first tenant is untouched
        let r = app.get(&format!("/Users/{id}")).await;
        assert_eq!(r.body["active"], true);
    }
}

/// OAuth 2.0 bearer JWTs from a tenant's configured issuer, verified against a JWKS the test
/// serves on loopback with keys committed under src/auth/testdata (test-only keys).
#[tokio::test]
async fn oauth_jwt_from_the_tenants_issuer_is_accepted_and_forgeries_are_not() {
    use actix_web::{web, App, HttpResponse, HttpServer};
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    let keys: serde_json::Value =
        serde_json::from_str(include_str!("../../src/auth/testdata/jwks_keys.json")).unwrap();
    let jwks = json!({"keys": [keys["rsa1"].clone()]});
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_url = format!(
        "http://127.0.0.1:{}/jwks.json",
        listener.local_addr().unwrap().port()
    );
    let served = jwks.clone();
    let server = HttpServer::new(move || {
        let body = served.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let body = body.clone();
                async move { HttpResponse::Ok().json(body) }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);

    for app in apps().await {
        let e = app.engine;
        let tenant = crate::users::default_tenant_id(&app).await;
        let (iss, aud, url) = (
            "https://idp.example.com/".to_string(),
            "deprovd-scim".to_string(),
            jwks_url.clone(),
        );
        app.state
            .db
            .write(move |conn| {
                Box::pin(async move {
                    deprovd::store::tenants::set_tenant_jwt(conn, &tenant, &iss, &aud, &url).await
                })
            })
            .await
            .unwrap();
        let now = chrono::Utc::now().timestamp();
        let sign = |claims: serde_json::Value, kid: &str, pem: &[u8]| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(kid.to_string());
            encode(&header, &claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
        };
        let good = json!({"iss": "https://idp.example.com/", "aud": "deprovd-scim", "sub": "okta-provisioning", "exp": now + 300, "nbf": now - 10});
        let rsa1 = include_bytes!("../../src/auth/testdata/rsa1.pem");
        let rsa2 = include_bytes!("../../src/auth/testdata/rsa2.pem");
        let token = sign(good.clone(), "rsa-1", rsa1);
        let r = app
            .send(
                reqwest::Method::POST,
                "/Users",
                Some(&user("jwt-made@example.com")),
                Some(&token),
            )
            .await;
        assert_eq!(r.status, 201, "[{e}] valid JWT: {}", r.text);
        let tenant_id = crate::users::default_tenant_id(&app).await;
        let id = r.body["id"].as_str().unwrap().to_string();
        let events = app
            .state
            .directory
            .lifecycle_events(&tenant_id, &id)
            .await
            .unwrap();
        assert_eq!(
            events[0].actor_name, "okta-provisioning",
            "[{e}] the JWT subject is the actor"
        );

        let mut expired = good.clone();
        expired["exp"] = json!(now - 600);
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("someone-else");
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("https://evil.example.com/");
        for (what, t) in [
            ("expired", sign(expired, "rsa-1", rsa1)),
            ("wrong audience", sign(wrong_aud, "rsa-1", rsa1)),
            ("wrong issuer", sign(wrong_iss, "rsa-1", rsa1)),
            ("key not in the JWKS", sign(good.clone(), "rsa-1", rsa2)),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none","kid":"rsa-1"}"#),
                    b64(&good.to_string())
                ),
            ),
        ] {
            let r = app
                .send(reqwest::Method::GET, "/Users", None, Some(&t))
                .await;
            assert_eq!(r.status, 401, "[{e}] {what} must be refused: {}", r.text);
        }
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
