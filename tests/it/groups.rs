//! Groups: members that are users or groups, indirect memberships, member references that
//! must exist in the same tenant.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn nested_groups_show_indirect_membership() {
    for app in apps().await {
        let u = app.create_user("nested@example.com").await["id"].as_str().unwrap().to_string();
        let inner = app.create_group("Inner", &[&u]).await["id"].as_str().unwrap().to_string();
        let outer = app.create_group("Outer", &[&inner]).await["id"].as_str().unwrap().to_string();
        let g = app.get(&format!("/Groups/{outer}")).await;
        assert_eq!(g.body["members"][0]["type"], "Group", "[{}] {}", app.engine, g.text);
        let r = app.get(&format!("/Users/{u}")).await;
        let groups = r.body["groups"].as_array().unwrap();
        let direct = groups.iter().find(|g| g["value"] == inner.as_str()).expect("direct");
        let indirect = groups.iter().find(|g| g["value"] == outer.as_str()).expect("indirect");
        assert_eq!(direct["type"], "direct");
        assert_eq!(indirect["type"], "indirect");
    }
}

#[tokio::test]
async fn unknown_member_is_refused_and_nothing_is_created() {
    for app in apps().await {
        let r = app.post("/Groups", &json!({"schemas": [GROUP], "displayName": "Bad", "members": [{"value": "no-such-id"}]})).await;
        assert_eq!(r.status, 400, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["scimType"], "invalidValue");
        assert!(r.body["detail"].as_str().unwrap().contains("no-such-id"));
        let r = app.filter("/Groups", "displayName eq \"Bad\"").await;
        assert_eq!(r.body["totalResults"], 0, "no partial state");
    }
}

#[tokio::test]
async fn user_groups_is_read_only() {
    for app in apps().await {
        let u = app.create_user("ro@example.com").await["id"].as_str().unwrap().to_string();
        let r = app.patch(&format!("/Users/{u}"), &patch(json!([{"op": "add", "path": "groups", "value": [{"value": "x"}]}]))).await;
        assert_eq!(r.status, 400, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["scimType"], "mutability");
    }
}
