//! Hostile input: every case is answered with the right error while the server stays up and
//! stored data is unharmed.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn malformed_bodies_are_400_invalid_syntax() {
    for app in apps().await {
        let r = app
            .raw(
                reqwest::Method::POST,
                "/Users",
                SCIM,
                b"{\"schemas\": [\"urn:".to_vec(),
            )
            .await;
        assert_eq!(r.status, 400, "truncated: {}", r.text);
        assert_eq!(r.body["scimType"], "invalidSyntax");
        let r = app
            .raw(
                reqwest::Method::POST,
                "/Users",
                SCIM,
                b"{\"userName\": \"\xff\xfe\"}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 400, "invalid UTF-8: {}", r.text);
        assert_eq!(r.body["scimType"], "invalidSyntax");
        let deep = "[".repeat(100_000);
        let r = app
            .raw(reqwest::Method::POST, "/Users", SCIM, deep.into_bytes())
            .await;
        assert_eq!(r.status, 400, "deep nesting");
        assert_eq!(r.body["scimType"], "invalidSyntax");
        let r = app
            .raw(
                reqwest::Method::POST,
                "/Users",
                "text/plain",
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 415);
        let r = app
            .raw(reqwest::Method::POST, "/Users", SCIM, b"[]".to_vec())
            .await;
        assert_eq!(r.status, 400);
        // still up
        app.create_user("still-up@example.com").await;
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    for app in apps().await {
        let big = vec![b' '; 20 * 1024 * 1024];
        let r = app.raw(reqwest::Method::POST, "/Users", SCIM, big).await;
        assert_eq!(r.status, 413, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["status"], "413");
        app.create_user("after-big@example.com").await;
    }
}

#[tokio::test]
async fn hostile_filters_are_400_invalid_filter() {
    for app in apps().await {
        let u = app.create_user("victim@example.com").await;
        let deep = format!("{}userName eq \"x\"{}", "(".repeat(5000), ")".repeat(5000));
        for f in [
            deep.as_str(),
            "userName eq",
            "userName zz \"x\"",
            "userName eq \"unterminated",
            "(((",
            "userName eq \"x\" and",
            "emails[type eq \"work\"",
        ] {
            let r = app.filter("/Users", f).await;
            assert_eq!(
                r.status, 400,
                "[{}] filter {:.40}: {}",
                app.engine, f, r.text
            );
            assert_eq!(r.body["scimType"], "invalidFilter", "{}", r.text);
        }
        // injection attempts are plain values: no match, no error, data intact
        for f in [
            "userName eq \"x' OR '1'='1\"",
            "userName eq \"\\\"; DROP TABLE users; --\"",
            "displayName co \"%\"",
            "userName sw \"_\"",
        ] {
            let r = app.filter("/Users", f).await;
            assert_eq!(r.status, 200, "[{}] {f}: {}", app.engine, r.text);
            assert_eq!(r.body["totalResults"], 0, "[{}] {f}", app.engine);
        }
        let r = app
            .get(&format!("/Users/{}", u["id"].as_str().unwrap()))
            .await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn huge_tokens_and_path_traversal() {
    for app in apps().await {
        let huge = "a".repeat(100_000);
        let r = app
            .send(reqwest::Method::GET, "/Users", None, Some(&huge))
            .await;
        assert!(
            r.status == 401 || r.status == 431 || r.status == 400,
            "[{}] {}",
            app.engine,
            r.status
        );
        let r = app.get("/Users/..%2F..%2Fetc%2Fpasswd").await;
        assert_eq!(r.status, 404);
        let r = app.get("/../../etc/passwd").await;
        assert!(r.status == 404 || r.status == 400, "{}", r.status);
        let r = app.get("/Users?filter=userName%20eq%20%22%ZZ").await;
        assert_eq!(r.status, 400);
    }
}

#[tokio::test]
async fn bad_patch_requests() {
    for app in apps().await {
        let id = app.create_user("patchy@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let p = format!("/Users/{id}");
        let r = app
            .patch(
                &p,
                &json!({"Operations": [{"op": "replace", "path": "displayName", "value": "x"}]}),
            )
            .await;
        assert_eq!(r.status, 400, "missing schemas: {}", r.text);
        let r = app
            .patch(
                &p,
                &patch(json!([{"op": "explode", "path": "displayName"}])),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        let r = app.patch(&p, &patch(json!([{"op": "remove"}]))).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["scimType"], "noTarget");
        let r = app
            .patch(
                &p,
                &patch(json!([{"op": "replace", "path": "active", "value": "maybe"}])),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["scimType"], "invalidValue");
        let r = app
            .patch(
                &p,
                &patch(json!([{"op": "replace", "path": "id", "value": "new"}])),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["scimType"], "mutability");
        let g = app.get(&p).await;
        assert_eq!(g.body["meta"]["version"], "W/\"1\"", "nothing changed");
    }
}
