//! Groups: members that are users or groups, indirect memberships, member references that
//! must exist in the same tenant.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn nested_groups_show_indirect_membership() {
    for app in apps().await {
        let u = app.create_user("nested@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let inner = app.create_group("Inner", &[&u]).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let outer = app.create_group("Outer", &[&inner]).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let g = app.get(&format!("/Groups/{outer}")).await;
        assert_eq!(
            g.body["members"][0]["type"], "Group",
            "[{}] {}",
            app.engine, g.text
        );
        let r = app.get(&format!("/Users/{u}")).await;
        let groups = r.body["groups"].as_array().unwrap();
        let direct = groups
            .iter()
            .find(|g| g["value"] == inner.as_str())
            .expect("direct");
        let indirect = groups
            .iter()
            .find(|g| g["value"] == outer.as_str())
            .expect("indirect");
        assert_eq!(direct["type"], "direct");
        assert_eq!(indirect["type"], "indirect");
    }
}

#[tokio::test]
async fn stale_member_id_does_not_block_a_removal_in_the_same_patch() {
    for app in apps().await {
        let admin = app.create_user("admin-leaver@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let gid = app.create_group("Admins", &[&admin]).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let g = app
            .get(&format!(
                "/Groups/{gid}?attributes=members.value,members.display"
            ))
            .await;
        assert_eq!(
            g.body["members"][0]["display"], "admin-leaver@example.com",
            "[{}] display on request: {}",
            app.engine, g.text
        );
        let g = app.get(&format!("/Groups/{gid}")).await;
        assert!(
            g.body["members"][0].get("display").is_none(),
            "display is returned on request only: {}",
            g.text
        );
        // Entra bundles the removal with an add that references an id we do not have.
        let r = app
            .patch(
                &format!("/Groups/{gid}"),
                &patch(json!([
                    {"op": "Remove", "path": "members", "value": [{"value": admin}]},
                    {"op": "Add", "path": "members", "value": [{"value": "stale-id-from-idp"}]}
                ])),
            )
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        let u = app.get(&format!("/Users/{admin}")).await;
        assert!(
            u.body.get("groups").is_none_or(|g| g == &json!([])),
            "[{}] removal applied: {}",
            app.engine,
            u.text
        );
        let g = app
            .get(&format!(
                "/Groups/{gid}?attributes=members.value,members.display"
            ))
            .await;
        assert_eq!(g.body["members"].as_array().unwrap().len(), 1);
        assert_eq!(g.body["members"][0]["value"], "stale-id-from-idp");
        assert!(
            g.body["members"][0]
                .get("display")
                .is_none_or(|d| d.is_null()),
            "{}",
            g.text
        );
        // a self-containing group is still refused, and nothing of that request is applied
        let r = app.patch(&format!("/Groups/{gid}"), &patch(json!([{"op": "add", "path": "displayName", "value": "X"}, {"op": "add", "path": "members", "value": [{"value": gid, "type": "Group"}]}]))).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(
            app.get(&format!("/Groups/{gid}")).await.body["displayName"],
            "Admins"
        );
    }
}

#[tokio::test]
async fn user_groups_is_read_only() {
    for app in apps().await {
        let u = app.create_user("ro@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = app
            .patch(
                &format!("/Users/{u}"),
                &patch(json!([{"op": "add", "path": "groups", "value": [{"value": "x"}]}])),
            )
            .await;
        assert_eq!(r.status, 400, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["scimType"], "mutability");
    }
}
