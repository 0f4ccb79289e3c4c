//! Users: create, read, replace, patch, delete, versions, uniqueness, lifecycle rows.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn create_returns_201_with_location_meta_and_no_password() {
    for app in apps().await {
        let mut body = user("alice@example.com");
        body["password"] = json!("s3cret-Passw0rd");
        body["groups"] = json!([{"value": "ignored"}]);
        let r = app.post("/Users", &body).await;
        assert_eq!(r.status, 201, "[{}] {}", app.engine, r.text);
        let id = r.body["id"].as_str().unwrap().to_string();
        let location = r.header("location").unwrap();
        assert_eq!(
            location,
            format!("{}/scim/v2/Users/{id}", app.base),
            "[{}] absolute Location",
            app.engine
        );
        assert_eq!(r.body["meta"]["location"], location);
        assert_eq!(r.body["meta"]["resourceType"], "User");
        assert_eq!(r.body["meta"]["version"], "W/\"1\"");
        assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
        assert!(
            r.body.get("password").is_none(),
            "[{}] password must never be returned",
            app.engine
        );
        assert!(
            r.body.get("groups").is_none_or(|g| g == &json!([])),
            "[{}] groups is computed, input ignored: {}",
            app.engine,
            r.text
        );
        assert!(
            !r.text.contains("s3cret"),
            "[{}] password leaked",
            app.engine
        );
        // not stored in clear either
        let g = app.get(&format!("/Users/{id}")).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.body["userName"], "alice@example.com");
        assert!(!g.text.contains("s3cret"));
    }
}

#[tokio::test]
async fn user_name_is_unique_case_insensitively() {
    for app in apps().await {
        app.create_user("Bob@Example.com").await;
        let r = app.post("/Users", &user("bob@example.COM")).await;
        assert_eq!(r.status, 409, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["scimType"], "uniqueness");
        assert_eq!(r.body["status"], "409");
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("username"),
            "{}",
            r.text
        );
    }
}

#[tokio::test]
async fn concurrent_duplicate_creates_give_one_201_and_409s_never_500() {
    for app in apps().await {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let client = app.client.clone();
            let url = app.url("/Users");
            let token = app.scim_token.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", SCIM)
                    .body(user("race@example.com").to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "[{}] {statuses:?}",
            app.engine
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "[{}] {statuses:?}",
            app.engine
        );
    }
}

#[tokio::test]
async fn get_unknown_is_404_scim_error() {
    for app in apps().await {
        let r = app.get("/Users/does-not-exist").await;
        assert_eq!(r.status, 404);
        assert_eq!(
            r.body["schemas"][0],
            "urn:ietf:params:scim:api:messages:2.0:Error"
        );
        assert_eq!(r.body["status"], "404");
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/scim+json"));
    }
}

#[tokio::test]
async fn etags_if_match_and_if_none_match() {
    for app in apps().await {
        let u = app.create_user("etag@example.com").await;
        let id = u["id"].as_str().unwrap();
        let path = format!("/Users/{id}");
        // If-None-Match with the current version → 304
        let r = app
            .client
            .get(app.url(&path))
            .bearer_auth(&app.scim_token)
            .header("if-none-match", "W/\"1\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 304, "[{}]", app.engine);
        // If-Match with a stale version → 412 and nothing changes
        let r = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&app.scim_token)
            .header("if-match", "W/\"7\"")
            .header("content-type", SCIM)
            .body(
                patch(json!([{"op": "replace", "path": "displayName", "value": "X"}])).to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 412, "[{}]", app.engine);
        let g = app.get(&path).await;
        assert!(g.body.get("displayName").is_none());
        // If-Match with the right version → 200 and version 2
        let r = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&app.scim_token)
            .header("if-match", "W/\"1\"")
            .header("content-type", SCIM)
            .body(
                patch(json!([{"op": "replace", "path": "displayName", "value": "X"}])).to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["etag"], "W/\"2\"");
        // a no-op PATCH does not bump the version
        let r = app
            .patch(
                &path,
                &patch(json!([{"op": "replace", "path": "displayName", "value": "X"}])),
            )
            .await;
        assert_eq!(
            r.body["meta"]["version"], "W/\"2\"",
            "[{}] {}",
            app.engine, r.text
        );
    }
}

#[tokio::test]
async fn put_replaces_and_ignores_read_only_and_keeps_immutable() {
    for app in apps().await {
        let u = app.create_user("put@example.com").await;
        let id = u["id"].as_str().unwrap();
        let mut body = u.clone();
        body["displayName"] = json!("Put User");
        body["name"] = json!({"givenName": "P"});
        body["meta"]["created"] = json!("1999-01-01T00:00:00Z");
        let r = app.put(&format!("/Users/{id}"), &body).await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["displayName"], "Put User");
        assert_eq!(r.body["name"], json!({"givenName": "P"}));
        assert_eq!(
            r.body["meta"]["created"], u["meta"]["created"],
            "read-only meta ignored"
        );
        assert_eq!(r.body["id"], u["id"]);
    }
}

#[tokio::test]
async fn patch_is_atomic() {
    for app in apps().await {
        let u = app.create_user("atomic@example.com").await;
        let id = u["id"].as_str().unwrap();
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([
                    {"op": "replace", "path": "displayName", "value": "Changed"},
                    {"op": "replace", "path": "noSuchAttribute", "value": "x"}
                ])),
            )
            .await;
        assert_eq!(r.status, 400, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["scimType"], "invalidPath");
        let g = app.get(&format!("/Users/{id}")).await;
        assert!(
            g.body.get("displayName").is_none(),
            "[{}] first op must not persist",
            app.engine
        );
        assert_eq!(g.body["meta"]["version"], "W/\"1\"");
    }
}

#[tokio::test]
async fn patch_returns_200_with_resource_respecting_attributes() {
    for app in apps().await {
        let u = app.create_user("attrs@example.com").await;
        let id = u["id"].as_str().unwrap();
        let r = app
            .patch(
                &format!("/Users/{id}?attributes=userName"),
                &patch(json!([{"op": "add", "path": "title", "value": "Boss"}])),
            )
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["userName"], "attrs@example.com");
        assert_eq!(r.body["id"], u["id"], "id is returned always");
        assert!(r.body.get("title").is_none(), "not requested: {}", r.text);
        assert!(r.body.get("emails").is_none());
    }
}

#[tokio::test]
async fn primary_is_unique_after_patch() {
    for app in apps().await {
        let u = app.create_user("primary@example.com").await;
        let id = u["id"].as_str().unwrap();
        let r = app
            .patch(&format!("/Users/{id}"), &patch(json!([{"op": "add", "path": "emails", "value": [{"value": "home@example.com", "type": "home", "primary": true}]}])))
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        let primaries: Vec<_> = r.body["emails"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["primary"] == json!(true))
            .collect();
        assert_eq!(primaries.len(), 1, "{}", r.text);
        assert_eq!(primaries[0]["value"], "home@example.com");
    }
}

#[tokio::test]
async fn delete_then_404_and_lifecycle_rows_recorded() {
    for app in apps().await {
        let u = app.create_user("gone@example.com").await;
        let id = u["id"].as_str().unwrap();
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "path": "active", "value": false}])),
            )
            .await;
        assert_eq!(r.status, 200);
        let r = app.delete(&format!("/Users/{id}")).await;
        assert_eq!(r.status, 204, "[{}] {}", app.engine, r.text);
        assert_eq!(app.get(&format!("/Users/{id}")).await.status, 404);
        assert_eq!(app.delete(&format!("/Users/{id}")).await.status, 404);
        let tenant = default_tenant_id(&app).await;
        let events = app
            .state
            .directory
            .lifecycle_events(&tenant, id)
            .await
            .unwrap();
        let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec!["created", "deactivated", "deleted"],
            "[{}]",
            app.engine
        );
        assert!(
            events.iter().all(|e| e.actor_name == "first-run scim"),
            "who did it is recorded"
        );
        assert!(events
            .iter()
            .all(|e| e.request_id.is_some() && e.client_ip.as_deref() == Some("127.0.0.1")));
    }
}

pub async fn default_tenant_id(app: &TestApp) -> String {
    deprovd::store::tenants::tenant_by_name(&app.state.db.pool, "default")
        .await
        .unwrap()
        .unwrap()
        .id
}
