//! Discovery endpoints, health, metrics, /Me and Bulk.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn discovery_tells_the_truth() {
    for app in apps().await {
        let r = app.get("/ServiceProviderConfig").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["patch"]["supported"], true);
        assert_eq!(r.body["bulk"]["supported"], true);
        assert_eq!(r.body["etag"]["supported"], true);
        assert_eq!(r.body["sort"]["supported"], true);
        assert!(r.body["filter"]["maxResults"].as_u64().unwrap() > 0);
        let r = app.get("/ResourceTypes").await;
        assert_eq!(r.body["totalResults"], 2, "{}", r.text);
        let r = app.get("/ResourceTypes/User").await;
        assert_eq!(r.body["schemaExtensions"][0]["schema"], ENTERPRISE);
        let r = app.get("/Schemas").await;
        let ids: Vec<&str> = r.body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&USER) && ids.contains(&GROUP) && ids.contains(&ENTERPRISE),
            "{ids:?}"
        );
        let r = app.get(&format!("/Schemas/{USER}")).await;
        assert_eq!(r.status, 200);
        let user_name = r.body["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "userName")
            .unwrap();
        assert_eq!(user_name["uniqueness"], "server");
        assert_eq!(user_name["caseExact"], false);
        assert_eq!(app.get("/Schemas/urn:nope").await.status, 404);
    }
}

#[tokio::test]
async fn health_ready_metrics() {
    let app = spawn_app("sqlite").await;
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    app.get("/Users").await;
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "deprovd_http_requests_total{route=\"/scim/v2/Users\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("deprovd_http_request_duration_seconds_bucket"));
    assert!(text.contains("deprovd_db_pool_connections"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("deprovd_audit_pending ") && !l.ends_with(" -1")),
        "{text}"
    );
    // The database holds token hashes and encrypted secrets: owner-only.
    use std::os::unix::fs::PermissionsExt;
    let path = app.database_url.trim_start_matches("sqlite://");
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database file mode {mode:o}");
}

#[tokio::test]
async fn me_is_501() {
    let app = spawn_app("sqlite").await;
    let r = app.get("/Me").await;
    assert_eq!(r.status, 501);
    assert_eq!(r.body["status"], "501");
}

#[tokio::test]
async fn bulk_with_bulk_id_references() {
    for app in apps().await {
        let r = app
            .post(
                "/Bulk",
                &json!({
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                    "failOnErrors": 5,
                    "Operations": [
                        {"method": "POST", "path": "/Groups", "bulkId": "g1", "data": {"schemas": [GROUP], "displayName": "Bulk Group", "members": [{"type": "User", "value": "bulkId:u1"}]}},
                        {"method": "POST", "path": "/Users", "bulkId": "u1", "data": user("bulk1@example.com")},
                        {"method": "POST", "path": "/Users", "bulkId": "u2", "data": user("bulk1@example.com")},
                        {"method": "PATCH", "path": "/Users/bulkId:u1", "data": patch(json!([{"op": "replace", "path": "active", "value": false}]))}
                    ]
                }),
            )
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        let ops = r.body["Operations"].as_array().unwrap();
        let by_id = |b: &str| {
            ops.iter()
                .find(|o| o["bulkId"] == b)
                .cloned()
                .unwrap_or(json!(null))
        };
        assert_eq!(by_id("u1")["status"], "201", "{}", r.text);
        assert_eq!(by_id("g1")["status"], "201", "{}", r.text);
        assert_eq!(by_id("u2")["status"], "409", "{}", r.text);
        let g = app.filter("/Groups", "displayName eq \"Bulk Group\"").await;
        let u = app
            .filter("/Users", "userName eq \"bulk1@example.com\"")
            .await;
        assert_eq!(
            g.body["Resources"][0]["members"][0]["value"],
            u.body["Resources"][0]["id"]
        );
        assert_eq!(u.body["Resources"][0]["active"], false);
        let too_many: Vec<_> = (0..2000)
            .map(|i| json!({"method": "DELETE", "path": format!("/Users/{i}")}))
            .collect();
        let r = app.post("/Bulk", &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": too_many})).await;
        assert_eq!(r.status, 413, "{}", r.text);
    }
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_405() {
    let app = spawn_app("sqlite").await;
    for (m, p) in [
        (reqwest::Method::POST, "/ServiceProviderConfig"),
        (reqwest::Method::DELETE, "/Schemas"),
        (reqwest::Method::PUT, "/Users"),
        (reqwest::Method::POST, "/Users/x"),
    ] {
        let r = app
            .send(m.clone(), p, None, Some(&app.scim_token.clone()))
            .await;
        assert_eq!(r.status, 405, "{m} {p}: {}", r.text);
        assert_eq!(r.body["status"], "405");
    }
}
