//! What Microsoft Entra ID sends (Microsoft's SCIM docs and known-issues page): capitalised ops,
//! string booleans, value paths that create elements, enterprise URN paths, manager as a plain
//! id, bundled atomic PATCHes, member removal by value list, and the aadOptscim062020 forms.

use crate::helpers::*;
use serde_json::json;

async fn entra_user(app: &TestApp, name: &str) -> String {
    let body = json!({
        "schemas": [USER, ENTERPRISE],
        "externalId": format!("ext-{name}"),
        "userName": format!("{name}@contoso.com"),
        "active": true,
        "displayName": name,
        "emails": [{"primary": true, "type": "work", "value": format!("{name}@contoso.com")}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "A B", "familyName": "B", "givenName": "A"},
        "roles": [],
        ENTERPRISE: {"employeeNumber": "1", "department": "IT"}
    });
    let r = app.post("/Users", &body).await;
    assert_eq!(r.status, 201, "[{}] {}", app.engine, r.text);
    r.body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn entra_test_connection_and_case_insensitive_filters() {
    for app in apps().await {
        let r = app
            .filter(
                "/Users",
                &format!("userName eq \"{}\"", uuid::Uuid::new_v4()),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["totalResults"], 0);
        let id = entra_user(&app, "Case").await;
        let r = app
            .filter("/Users", "userName eq \"CASE@CONTOSO.COM\"")
            .await;
        assert_eq!(r.body["totalResults"], 1, "[{}] {}", app.engine, r.text);
        let r = app.filter("/Users", "externalId eq \"ext-Case\"").await;
        assert_eq!(r.body["Resources"][0]["id"], id.as_str());
        let r = app
            .filter(
                "/Users",
                "emails[type eq \"work\"].value eq \"case@contoso.com\"",
            )
            .await;
        assert_eq!(r.body["totalResults"], 1, "[{}] {}", app.engine, r.text);
        app.create_group("Sales", &[]).await;
        let r = app.filter("/Groups", "displayName eq \"SALES\"").await;
        assert_eq!(r.body["totalResults"], 1, "[{}] {}", app.engine, r.text);
        let r = app
            .post(
                "/Groups",
                &json!({"schemas": [GROUP], "displayName": "sales"}),
            )
            .await;
        assert_eq!(r.status, 409, "duplicate group displayName: {}", r.text);
        assert_eq!(r.body["scimType"], "uniqueness");
    }
}

#[tokio::test]
async fn entra_disable_with_string_booleans() {
    for app in apps().await {
        for (op, value) in [
            ("Replace", json!("False")),
            ("Replace", json!("True")),
            ("Replace", json!("false")),
            ("Add", json!("True")),
            ("Add", json!("False")),
        ] {
            let id = entra_user(&app, &format!("b{}", uuid::Uuid::new_v4().simple())).await;
            let r = app
                .patch(
                    &format!("/Users/{id}"),
                    &patch(json!([{"op": op, "path": "active", "value": value}])),
                )
                .await;
            assert_eq!(r.status, 200, "[{}] {op} {value}: {}", app.engine, r.text);
            let want = value.as_str().unwrap().eq_ignore_ascii_case("true");
            assert_eq!(r.body["active"], want, "[{}] {op} {value}", app.engine);
        }
    }
}

#[tokio::test]
async fn entra_bundled_patch_with_manager_string_deactivates() {
    for app in apps().await {
        let boss = entra_user(&app, "boss").await;
        let id = entra_user(&app, "worker").await;
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([
                    {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@contoso.com"},
                    {"op": "Add", "path": "phoneNumbers[type eq \"work\"].value", "value": "+1 555 0100"},
                    {"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": boss},
                    {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Finance"},
                    {"op": "Replace", "path": "active", "value": "False", "name": "ignored extra key"}
                ])),
            )
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["active"], false);
        assert_eq!(r.body["emails"][0]["value"], "new@contoso.com");
        assert_eq!(
            r.body["phoneNumbers"][0],
            json!({"type": "work", "value": "+1 555 0100"})
        );
        assert_eq!(r.body[ENTERPRISE]["manager"]["value"], boss.as_str());
        assert_eq!(r.body[ENTERPRISE]["department"], "Finance");
        // validator form of manager, then Remove clears it
        let r = app.patch(&format!("/Users/{id}"), &patch(json!([{"op": "Replace", "path": format!("{ENTERPRISE}:manager"), "value": {"value": boss}}]))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "Remove", "path": format!("{ENTERPRISE}:manager")}])),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.body[ENTERPRISE].get("manager").is_none(), "{}", r.text);
        // null update clears
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "Replace", "path": "displayName", "value": ""}])),
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.get("displayName").is_none(), "{}", r.text);
    }
}

#[tokio::test]
async fn entra_aad_opt_scim_062020_forms() {
    for app in apps().await {
        let id = entra_user(&app, "flag").await;
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "value": {
                    "name.givenName": "Fiona",
                    "name.familyName": "Flag",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "42",
                    "active": false
                }}])),
            )
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["name"]["givenName"], "Fiona");
        assert_eq!(r.body["name"]["familyName"], "Flag");
        assert_eq!(r.body[ENTERPRISE]["employeeNumber"], "42");
        assert_eq!(r.body["active"], false);
    }
}

#[tokio::test]
async fn entra_group_members_add_and_remove_by_value_list() {
    for app in apps().await {
        let a = entra_user(&app, "ma").await;
        let b = entra_user(&app, "mb").await;
        let c = entra_user(&app, "mc").await;
        let r = app
            .post("/Groups", &json!({"schemas": [GROUP, "urn:ietf:params:scim:schemas:extension:ADSCIM:2.0:Group"], "displayName": "Entra Group", "externalId": "e1", "members": []}))
            .await;
        assert_eq!(
            r.status, 201,
            "[{}] unknown extension URN ignored: {}",
            app.engine, r.text
        );
        let gid = r.body["id"].as_str().unwrap().to_string();
        let r = app
            .patch(&format!("/Groups/{gid}"), &patch(json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": a}, {"$ref": null, "value": b}, {"$ref": null, "value": c}]}])))
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        let r = app
            .patch(
                &format!("/Groups/{gid}"),
                &patch(json!([{"op": "Remove", "path": "members", "value": [{"value": a}]}])),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let g = app.get(&format!("/Groups/{gid}")).await;
        let mut members: Vec<String> = g.body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap().to_string())
            .collect();
        members.sort();
        let mut want = vec![b.clone(), c.clone()];
        want.sort();
        assert_eq!(
            members, want,
            "[{}] removes only the listed member, not all (scimple #436)",
            app.engine
        );
        // reads with excludedAttributes=members
        let r = app
            .get(&format!("/Groups/{gid}?excludedAttributes=members"))
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.get("members").is_none(), "{}", r.text);
        assert_eq!(r.body["displayName"], "Entra Group");
        let r = app
            .filter("/Groups", "displayName eq \"Entra Group\"")
            .await;
        assert_eq!(r.body["totalResults"], 1);
    }
}
