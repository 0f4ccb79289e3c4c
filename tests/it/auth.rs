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
        let r = app.send(reqwest::Method::GET, "/Users", None, Some("dpv_scim_wrong")).await;
        assert_eq!(r.status, 401);
        // an admin token is not a SCIM token
        let r = app.send(reqwest::Method::GET, "/Users", None, Some(&app.admin_token.clone())).await;
        assert_eq!(r.status, 403, "[{}] {}", app.engine, r.text);
    }
}

#[tokio::test]
async fn repeated_bad_tokens_are_slowed_with_429() {
    let app = spawn_app("sqlite").await;
    let mut got_429 = None;
    for i in 0..100 {
        let r = app.send(reqwest::Method::GET, "/Users", None, Some(&format!("dpv_scim_guess{i}"))).await;
        if r.status == 429 {
            got_429 = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
    }
    let r = got_429.expect("429 after repeated failures");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
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
            .write(move |conn| Box::pin(async move { deprovd::store::tenants::create_tenant(conn, &name).await }))
            .await
            .unwrap();
        let (token, _) = deprovd::cli::token::create(db, &t.id, deprovd::auth::Scope::Scim, "other-idp").await.unwrap();
        let other = |m: reqwest::Method, p: &str, b: Option<serde_json::Value>| {
            let token = token.clone();
            let p = p.to_string();
            let app = &app;
            async move { app.send(m, &p, b.as_ref(), Some(&token)).await }
        };
        assert_eq!(other(reqwest::Method::GET, &format!("/Users/{id}"), None).await.status, 404);
        assert_eq!(other(reqwest::Method::GET, "/Users", None).await.body["totalResults"], 0);
        assert_eq!(other(reqwest::Method::GET, "/Groups", None).await.body["totalResults"], 0);
        assert_eq!(other(reqwest::Method::DELETE, &format!("/Users/{id}"), None).await.status, 404);
        assert_eq!(other(reqwest::Method::PATCH, &format!("/Users/{id}"), Some(patch(json!([{"op": "replace", "path": "active", "value": false}])))).await.status, 404);
        // the same userName is free in the other tenant
        assert_eq!(other(reqwest::Method::POST, "/Users", Some(user("isolated@example.com"))).await.status, 201);
        // a group there that names this tenant's user id resolves to nothing of this tenant
        let r = other(reqwest::Method::POST, "/Groups", Some(json!({"schemas": [GROUP], "displayName": "X", "members": [{"value": id}]}))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let ogid = r.body["id"].as_str().unwrap().to_string();
        let r = other(reqwest::Method::GET, &format!("/Groups/{ogid}?attributes=members.display,members.value"), None).await;
        assert_eq!(r.body["members"][0]["value"], id.as_str(), "{}", r.text);
        assert!(r.body["members"][0].get("display").is_none(), "no display leaks across tenants: {}", r.text);
        let mine = app.get(&format!("/Users/{id}")).await;
        let groups: Vec<&str> = mine.body["groups"].as_array().map(|a| a.iter().filter_map(|g| g["value"].as_str()).collect()).unwrap_or_default();
        assert_eq!(groups, vec![gid.as_str()], "the other tenant's group does not show on this tenant's user");
        assert_eq!(other(reqwest::Method::GET, &format!("/Groups/{gid}"), None).await.status, 404);
        // the first tenant is untouched
        let r = app.get(&format!("/Users/{id}")).await;
        assert_eq!(r.body["active"], true);
    }
}
