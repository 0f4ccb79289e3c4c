//! The request sequence Okta sends (Okta SCIM 2.0 reference): look up by userName, create with
//! password and `groups: []`, PUT full profile updates including read-only attributes,
//! deactivation by no-path PATCH or by PUT `active: false`, group push with rename and member
//! add/remove.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn okta_user_lifecycle() {
    for app in apps().await {
        let e = app.engine;
        // 1. lookup before create: 200 with totalResults 0
        let r = app.get("/Users?filter=userName%20eq%20%22dade.murphy%40example.com%22&startIndex=1&count=100").await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(r.body["totalResults"], 0);
        assert_eq!(r.body["Resources"], json!([]));
        // 2. create, as Okta sends it
        let body = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "dade.murphy@example.com",
            "name": {"givenName": "Dade", "familyName": "Murphy"},
            "emails": [{"primary": true, "value": "dade.murphy@example.com", "type": "work"}],
            "displayName": "Dade Murphy",
            "locale": "en-US",
            "externalId": "00ujl29u0le5T6Aj10h7",
            "groups": [],
            "password": "1mz050nq",
            "active": true
        });
        let r = app.post("/Users", &body).await;
        assert_eq!(r.status, 201, "[{e}] {}", r.text);
        assert!(
            r.body.is_object() && r.body["id"].is_string(),
            "Okta needs the body"
        );
        let id = r.body["id"].as_str().unwrap().to_string();
        // duplicate → 409
        assert_eq!(app.post("/Users", &body).await.status, 409);
        // 3. lookup finds it (case-insensitively too)
        let r = app
            .filter("/Users", "userName eq \"DADE.MURPHY@example.com\"")
            .await;
        assert_eq!(r.body["totalResults"], 1, "[{e}] {}", r.text);
        assert_eq!(r.body["Resources"][0]["id"], id.as_str());
        // 4. profile update: GET then PUT with read-only id, groups, meta
        let mut full = app.get(&format!("/Users/{id}")).await.body;
        full["name"]["familyName"] = json!("Murphy-Zero");
        full["groups"] = json!([{"value": "whatever", "display": "x"}]);
        let r = app.put(&format!("/Users/{id}"), &full).await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(r.body["name"]["familyName"], "Murphy-Zero");
        // 5a. deactivation, catalog apps: no-path replace
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "value": {"active": false}}])),
            )
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(r.body["active"], false);
        // reactivation the same way
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "value": {"active": true}}])),
            )
            .await;
        assert_eq!(r.body["active"], true);
        // 5b. deactivation, wizard apps: PUT with active false
        let mut full = app.get(&format!("/Users/{id}")).await.body;
        full["active"] = json!(false);
        let r = app.put(&format!("/Users/{id}"), &full).await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(r.body["active"], false);
        let tenant = crate::users::default_tenant_id(&app).await;
        let kinds: Vec<String> = app
            .state
            .directory
            .lifecycle_events(&tenant, &id)
            .await
            .unwrap()
            .into_iter()
            .map(|ev| ev.kind)
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| *k == "deactivated").count(),
            2,
            "[{e}] PUT active=false is a deactivation: {kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| *k == "reactivated").count(),
            1,
            "[{e}] {kinds:?}"
        );
    }
}

#[tokio::test]
async fn okta_import_paging_is_stable() {
    for app in apps().await {
        for i in 0..250 {
            app.create_user(&format!("import{i:03}@example.com")).await;
        }
        let mut seen = std::collections::HashSet::new();
        let mut start = 1;
        loop {
            let r = app
                .get(&format!("/Users?startIndex={start}&count=100"))
                .await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body["totalResults"], 250);
            assert!(
                r.body["startIndex"].is_u64() && r.body["itemsPerPage"].is_u64(),
                "integers: {}",
                r.text
            );
            let page = r.body["Resources"].as_array().unwrap();
            for u in page {
                assert!(
                    seen.insert(u["id"].as_str().unwrap().to_string()),
                    "[{}] repeated across pages",
                    app.engine
                );
            }
            start += 100;
            if start > 250 {
                break;
            }
        }
        assert_eq!(seen.len(), 250, "[{}] skipped users", app.engine);
    }
}

#[tokio::test]
async fn okta_group_push() {
    for app in apps().await {
        let e = app.engine;
        let a = app.create_user("ga@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let b = app.create_user("gb@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        // create with members: []
        let r = app
            .post(
                "/Groups",
                &json!({"schemas": [GROUP], "displayName": "Test SCIMv2", "members": []}),
            )
            .await;
        assert_eq!(r.status, 201, "[{e}] {}", r.text);
        let gid = r.body["id"].as_str().unwrap().to_string();
        // rename: no-path replace whose value carries the read-only id
        let r = app.patch(&format!("/Groups/{gid}"), &patch(json!([{"op": "replace", "value": {"id": gid, "displayName": "Test SCIMv2 renamed"}}]))).await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(r.body["displayName"], "Test SCIMv2 renamed");
        // add members with a value list
        let r = app.patch(&format!("/Groups/{gid}"), &patch(json!([{"op": "add", "path": "members", "value": [{"value": a, "display": "ga@example.com"}, {"value": b}]}]))).await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        // remove one by filter, add it back in the same request order Okta uses
        let r = app
            .patch(
                &format!("/Groups/{gid}"),
                &patch(json!([
                    {"op": "remove", "path": format!("members[value eq \"{a}\"]")},
                ])),
            )
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        let g = app.get(&format!("/Groups/{gid}")).await;
        let members: Vec<&str> = g.body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        assert_eq!(members, vec![b.as_str()], "[{e}] only a removed");
        // the user's groups attribute follows membership
        let u = app.get(&format!("/Users/{b}")).await;
        assert_eq!(
            u.body["groups"][0]["value"],
            gid.as_str(),
            "[{e}] {}",
            u.text
        );
        assert_eq!(u.body["groups"][0]["display"], "Test SCIMv2 renamed");
        // full replace of members
        let r = app
            .patch(
                &format!("/Groups/{gid}"),
                &patch(json!([{"op": "replace", "path": "members", "value": [{"value": a}]}])),
            )
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        let g = app.get(&format!("/Groups/{gid}")).await;
        let members: Vec<&str> = g.body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        assert_eq!(members, vec![a.as_str()]);
        // joined / left lifecycle rows were recorded for the users
        let tenant = crate::users::default_tenant_id(&app).await;
        let kinds: Vec<String> = app
            .state
            .directory
            .lifecycle_events(&tenant, &b)
            .await
            .unwrap()
            .into_iter()
            .map(|ev| ev.kind)
            .collect();
        assert!(
            kinds.contains(&"groups_joined".to_string())
                && kinds.contains(&"groups_left".to_string()),
            "[{e}] {kinds:?}"
        );
        // delete group
        assert_eq!(app.delete(&format!("/Groups/{gid}")).await.status, 204);
        let u = app.get(&format!("/Users/{a}")).await;
        assert!(
            u.body.get("groups").is_none_or(|g| g == &json!([])),
            "[{e}] {}",
            u.text
        );
    }
}
