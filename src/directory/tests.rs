//! Directory tests on SQLite (always) and PostgreSQL (when `DEPROVD_TEST_PG` is set): CRUD,
//! uniqueness under races, If-Match, lifecycle rows, membership and nesting, filters in SQL
//! (checked against the in-memory evaluator), injection, paging, index use, tenant isolation.

use std::collections::{BTreeSet, HashSet};

use serde_json::{json, Value};
use sqlx::Row;

use super::sql_filter::{bind_args, filter_sql, SqlBuilder, Target};
use super::*;
use crate::scim::filter::{matches, parse_attr_path, parse_filter};
use crate::scim::resource::validate_create;
use crate::scim::schema::{ResourceKind, SchemaRegistry, ENTERPRISE_USER_SCHEMA, USER_SCHEMA};
use crate::store::testing::fresh_dbs;

async fn add_tenant(db: &Db, id: &str) {
    let id = id.to_string();
    db.write(move |c| {
        Box::pin(async move {
            sqlx::query("INSERT INTO tenants (id, name, created) VALUES ($1, $1, $2)")
                .bind(id.as_str())
                .bind(crate::store::now_ts())
                .execute(&mut *c)
                .await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap();
}

/// A directory per engine, with tenants `a` and `b`.
async fn dirs() -> Vec<Directory> {
    let mut out = Vec::new();
    for db in fresh_dbs().await {
        add_tenant(&db, "a").await;
        add_tenant(&db, "b").await;
        out.push(Directory::new(db));
    }
    out
}

fn actor(t: &str) -> Actor {
    Actor {
        tenant_id: t.into(),
        kind: ActorKind::ScimToken,
        id: "tok1".into(),
        name: "okta".into(),
        client_ip: Some("10.0.0.1".into()),
        request_id: Some("req-1".into()),
    }
}

fn user_body(extra: Value) -> Value {
    let mut v = json!({"schemas": [USER_SCHEMA]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

async fn mk_user(d: &Directory, t: &str, extra: Value) -> StoredResource {
    let n = validate_create(ResourceKind::User, &user_body(extra)).unwrap();
    d.create_user(&actor(t), n.resource).await.unwrap()
}

async fn mk_group(d: &Directory, t: &str, name: &str, members: &[&str]) -> StoredResource {
    let refs = members
        .iter()
        .map(|m| MemberRef {
            value: m.to_string(),
            member_type: None,
        })
        .collect();
    d.create_group(
        &actor(t),
        json!({"schemas": [crate::scim::schema::GROUP_SCHEMA], "displayName": name}),
        refs,
    )
    .await
    .unwrap()
}

fn set_attr(name: &'static str, v: Value) -> users::Mutate {
    Box::new(move |s: &StoredResource| {
        let mut r = s.resource.clone();
        r[name] = v;
        Ok(r)
    })
}

fn kinds(ev: &[LifecycleEvent]) -> Vec<&str> {
    ev.iter().map(|e| e.kind.as_str()).collect()
}

fn q(filter: &str) -> ListQuery {
    ListQuery {
        filter: Some(parse_filter(filter).unwrap()),
        start_index: 1,
        count: 1000,
        ..Default::default()
    }
}

async fn user_ids(d: &Directory, t: &str, filter: &str) -> BTreeSet<String> {
    let page = d
        .list_users(t, &q(filter))
        .await
        .unwrap_or_else(|e| panic!("{filter}: {e:?}"));
    assert_eq!(page.total_results as usize, page.items.len(), "{filter}");
    page.items.into_iter().map(|s| s.id).collect()
}

async fn group_ids(d: &Directory, t: &str, filter: &str) -> BTreeSet<String> {
    let page = d
        .list_groups(t, &q(filter))
        .await
        .unwrap_or_else(|e| panic!("{filter}: {e:?}"));
    page.items.into_iter().map(|s| s.id).collect()
}

fn ids(v: &[&StoredResource]) -> BTreeSet<String> {
    v.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test]
async fn user_crud_versions_if_match_and_idempotence() {
    for d in dirs().await {
        let u = mk_user(
            &d,
            "a",
            json!({"userName": "Alice@Example.com", "title": "x"}),
        )
        .await;
        assert_eq!(u.version, 1);
        assert_eq!(u.etag(), "W/\"1\"");
        assert!(u.resource.get("id").is_none());
        let got = d.get_user("a", &u.id).await.unwrap().unwrap();
        assert_eq!(got, u);
        let by_name = d
            .find_user_by_user_name("a", "ALICE@example.COM")
            .await
            .unwrap();
        assert_eq!(by_name, Some(u.clone()));
        assert!(d
            .find_user_by_user_name("b", "alice@example.com")
            .await
            .unwrap()
            .is_none());

        // Wrong If-Match: 412, nothing written.
        let e = d
            .update_user(
                &actor("a"),
                "a",
                &u.id,
                Some("W/\"7\"".into()),
                set_attr("title", json!("y")),
            )
            .await;
        assert!(matches!(e, Err(DirError::PreconditionFailed)));
        let v2 = d
            .update_user(
                &actor("a"),
                "a",
                &u.id,
                Some("W/\"1\"".into()),
                set_attr("title", json!("y")),
            )
            .await
            .unwrap();
        assert_eq!((v2.version, v2.resource["title"].as_str()), (2, Some("y")));
        assert!(v2.last_modified >= u.last_modified);
        assert_eq!(v2.created, u.created);
        // The same change again (an IdP retry): no write, no version, no lifecycle row.
        let n_before = d.lifecycle_events("a", &u.id).await.unwrap().len();
        let v3 = d
            .update_user(
                &actor("a"),
                "a",
                &u.id,
                Some("*".into()),
                set_attr("title", json!("y")),
            )
            .await
            .unwrap();
        assert_eq!(v3.version, 2);
        assert_eq!(
            d.lifecycle_events("a", &u.id).await.unwrap().len(),
            n_before
        );
        // A mutate error passes through as Invalid.
        let e = d
            .update_user(
                &actor("a"),
                "a",
                &u.id,
                None,
                Box::new(|_| Err(ScimError::mutability("no"))),
            )
            .await;
        assert!(matches!(e, Err(DirError::Invalid(ref s)) if s.detail == "no"));
        // Password and read-only keys never stored.
        let v4 = d
            .update_user(
                &actor("a"),
                "a",
                &u.id,
                None,
                Box::new(|s| {
                    let mut r = s.resource.clone();
                    r["password"] = json!("hunter2");
                    r["id"] = json!("forged");
                    r["meta"] = json!({"version": "W/\"99\""});
                    r["displayName"] = json!("Alice");
                    Ok(r)
                }),
            )
            .await
            .unwrap();
        assert_eq!(v4.version, 3);
        assert!(v4.resource.get("password").is_none() && v4.resource.get("id").is_none());
        let raw: String = sqlx::query("SELECT resource FROM users WHERE id = $1")
            .bind(u.id.as_str())
            .fetch_one(&d.db().pool)
            .await
            .unwrap()
            .get(0);
        assert!(!raw.contains("hunter2"));
        let lc: Vec<String> = sqlx::query("SELECT detail FROM lifecycle_events")
            .fetch_all(&d.db().pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(lc.iter().all(|d| !d.contains("hunter2")));

        assert!(matches!(
            d.delete_user(&actor("a"), "a", &u.id, Some("W/\"1\"".into()))
                .await,
            Err(DirError::PreconditionFailed)
        ));
        d.delete_user(&actor("a"), "a", &u.id, Some("W/\"3\"".into()))
            .await
            .unwrap();
        assert!(d.get_user("a", &u.id).await.unwrap().is_none());
        assert!(matches!(
            d.delete_user(&actor("a"), "a", &u.id, None).await,
            Err(DirError::NotFound)
        ));
        assert!(matches!(
            d.update_user(&actor("a"), "a", &u.id, None, set_attr("title", json!("z")))
                .await,
            Err(DirError::NotFound)
        ));
    }
}

#[tokio::test]
async fn uniqueness_is_case_insensitive_and_a_conflict() {
    for d in dirs().await {
        let u = mk_user(&d, "a", json!({"userName": "Alice@Example.com"})).await;
        let n = validate_create(
            ResourceKind::User,
            &user_body(json!({"userName": "alice@EXAMPLE.com"})),
        )
        .unwrap();
        assert!(matches!(
            d.create_user(&actor("a"), n.resource.clone()).await,
            Err(DirError::Conflict(_))
        ));
        // Another tenant may use it.
        d.create_user(&actor("b"), n.resource).await.unwrap();
        let bob = mk_user(&d, "a", json!({"userName": "bob"})).await;
        let e = d
            .update_user(
                &actor("a"),
                "a",
                &bob.id,
                None,
                set_attr("userName", json!("ALICE@example.COM")),
            )
            .await;
        assert!(matches!(e, Err(DirError::Conflict(_))), "{e:?}");
        assert!(u.version == 1);
        // Unicode folding on userName (done in Rust).
        mk_user(&d, "a", json!({"userName": "ÉLOÏSE"})).await;
        let n = validate_create(
            ResourceKind::User,
            &user_body(json!({"userName": "éloïse"})),
        )
        .unwrap();
        assert!(matches!(
            d.create_user(&actor("a"), n.resource).await,
            Err(DirError::Conflict(_))
        ));

        mk_group(&d, "a", "Admins", &[]).await;
        let e = d
            .create_group(&actor("a"), json!({"displayName": "ADMINS"}), vec![])
            .await;
        assert!(matches!(e, Err(DirError::Conflict(_))));
        let s = ScimError::from(e.unwrap_err());
        assert_eq!(s.status, 409);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_creates_give_one_winner_and_conflicts() {
    for d in dirs().await {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let name = if i % 2 == 0 { "Race@X" } else { "race@x" };
                let n = validate_create(ResourceKind::User, &user_body(json!({"userName": name})))
                    .unwrap();
                d.create_user(&actor("a"), n.resource).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(DirError::Conflict(_)) => {}
                Err(e) => panic!("expected a conflict, got {e:?}"),
            }
        }
        assert_eq!(ok, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_deactivations_all_commit_with_their_lifecycle_rows() {
    for d in dirs().await {
        let mut us = Vec::new();
        for i in 0..60 {
            us.push(
                mk_user(
                    &d,
                    "a",
                    json!({"userName": format!("u{i}"), "active": true}),
                )
                .await,
            );
        }
        let (b0, o0) = d.db().write_stats();
        let mut tasks = Vec::new();
        for u in &us {
            let (d, id) = (d.clone(), u.id.clone());
            tasks.push(tokio::spawn(async move {
                d.update_user(
                    &actor("a"),
                    "a",
                    &id,
                    None,
                    set_attr("active", json!(false)),
                )
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().version, 2);
        }
        let (b1, o1) = d.db().write_stats();
        assert_eq!(o1 - o0, 60);
        if d.db().engine == Engine::Sqlite {
            assert!(b1 - b0 < 60);
        }
        for u in &us {
            let ev = d.lifecycle_events("a", &u.id).await.unwrap();
            assert_eq!(kinds(&ev), ["created", "deactivated"]);
        }
        assert_eq!(user_ids(&d, "a", "active eq false").await.len(), 60);
    }
}

#[tokio::test]
async fn lifecycle_rows_for_every_kind() {
    for d in dirs().await {
        let u = mk_user(
            &d,
            "a",
            json!({"userName": "kim", "active": true, "title": "a"}),
        )
        .await;
        let a = actor("a");
        d.update_user(&a, "a", &u.id, None, set_attr("active", json!(false)))
            .await
            .unwrap();
        d.update_user(&a, "a", &u.id, None, set_attr("active", json!(true)))
            .await
            .unwrap();
        d.update_user(&a, "a", &u.id, None, set_attr("title", json!("b")))
            .await
            .unwrap();
        let g = mk_group(&d, "a", "Ops", &[&u.id]).await;
        d.update_group(
            &a,
            "a",
            &g.id,
            None,
            Box::new(|s| Ok(s.resource.clone())),
            vec![MemberChange::Remove(vec![u.id.clone()])],
        )
        .await
        .unwrap();
        d.delete_user(&a, "a", &u.id, None).await.unwrap();
        let ev = d.lifecycle_events("a", &u.id).await.unwrap();
        assert_eq!(
            kinds(&ev),
            [
                "created",
                "deactivated",
                "reactivated",
                "attributes_changed",
                "groups_joined",
                "groups_left",
                "deleted"
            ]
        );
        assert_eq!(ev[0].detail["after"]["userName"], "kim");
        assert_eq!(
            ev[1].detail,
            json!({"before": {"active": true}, "after": {"active": false}})
        );
        assert_eq!(ev[3].detail["attributes"], json!(["title"]));
        assert_eq!(
            (
                ev[3].detail["before"]["title"].as_str(),
                ev[3].detail["after"]["title"].as_str()
            ),
            (Some("a"), Some("b"))
        );
        assert_eq!(
            ev[4].detail["groups"][0],
            json!({"id": g.id, "displayName": "Ops"})
        );
        assert_eq!(ev[6].detail["before"]["userName"], "kim");
        let e = &ev[0];
        assert_eq!(
            (
                e.actor_kind.as_str(),
                e.actor_id.as_str(),
                e.actor_name.as_str(),
                e.client_ip.as_deref(),
                e.request_id.as_deref()
            ),
            (
                "scim_token",
                "tok1",
                "okta",
                Some("10.0.0.1"),
                Some("req-1")
            )
        );
        assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}

#[tokio::test]
async fn membership_deltas_nesting_and_reference_checks() {
    for d in dirs().await {
        let a = actor("a");
        let u1 = mk_user(&d, "a", json!({"userName": "u1"})).await;
        let u2 = mk_user(&d, "a", json!({"userName": "u2"})).await;
        let u3 = mk_user(&d, "a", json!({"userName": "u3"})).await;
        let other = mk_user(&d, "b", json!({"userName": "other"})).await;
        let g = mk_group(&d, "a", "Admins", &[&u1.id, &u2.id]).await;
        let mut m = d.group_members("a", &g.id).await.unwrap();
        m.sort();
        assert_eq!(m.len(), 2);
        assert!(m.contains(&(u1.id.clone(), "User".into(), "u1".into())));

        let keep: users::Mutate = Box::new(|s| Ok(s.resource.clone()));
        let g2 = d
            .update_group(
                &a,
                "a",
                &g.id,
                Some(g.etag()),
                keep,
                vec![
                    MemberChange::Add(vec![MemberRef {
                        value: u3.id.to_uppercase(),
                        member_type: Some("User".into()),
                    }]),
                    MemberChange::Remove(vec![u1.id.clone(), "not-a-member".into()]),
                    MemberChange::RemoveMatching(
                        parse_filter(&format!("value eq \"{}\"", u2.id)).unwrap(),
                    ),
                ],
            )
            .await
            .unwrap();
        assert_eq!(g2.version, 2);
        let ids: Vec<String> = d
            .group_members("a", &g.id)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(ids, vec![u3.id.clone()]);
        // Adding an existing member again changes nothing (no version, no lifecycle row).
        let n3 = d.lifecycle_events("a", &u3.id).await.unwrap().len();
        let same = d
            .update_group(
                &a,
                "a",
                &g.id,
                None,
                Box::new(|s| Ok(s.resource.clone())),
                vec![MemberChange::Add(vec![MemberRef {
                    value: u3.id.clone(),
                    member_type: None,
                }])],
            )
            .await
            .unwrap();
        assert_eq!(same.version, 2);
        assert_eq!(d.lifecycle_events("a", &u3.id).await.unwrap().len(), n3);

        // Unknown ids and ids of another tenant are kept as unresolved references (they give
        // no user of this tenant anything, and refusing them would block removals bundled in
        // the same PATCH); nothing of the other tenant shows through them.
        for stale in ["nope".to_string(), other.id.clone()] {
            d.update_group(
                &a,
                "a",
                &g.id,
                None,
                Box::new(|s| Ok(s.resource.clone())),
                vec![MemberChange::Add(vec![MemberRef {
                    value: stale.clone(),
                    member_type: None,
                }])],
            )
            .await
            .unwrap();
            let members = d.group_members("a", &g.id).await.unwrap();
            let m = members
                .iter()
                .find(|(id, _, _)| *id == stale.to_lowercase())
                .expect("kept");
            assert_eq!(m.2, "", "no display resolves across tenants");
            assert!(d.user_groups("b", &other.id).await.unwrap().is_empty() || other.id.is_empty());
            d.update_group(
                &a,
                "a",
                &g.id,
                None,
                Box::new(|s| Ok(s.resource.clone())),
                vec![MemberChange::Remove(vec![stale.clone()])],
            )
            .await
            .unwrap();
        }
        // A group containing itself is 400 invalidValue.
        for bad in [g.id.clone()] {
            let e = d
                .update_group(
                    &a,
                    "a",
                    &g.id,
                    None,
                    Box::new(|s| Ok(s.resource.clone())),
                    vec![MemberChange::Add(vec![MemberRef {
                        value: bad.clone(),
                        member_type: None,
                    }])],
                )
                .await;
            match e {
                Err(DirError::Invalid(s)) => {
                    assert_eq!(s.scim_type, Some(crate::scim::ScimType::InvalidValue));
                    assert!(s.detail.contains(&bad.to_lowercase()), "{}", s.detail);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Nesting: Staff contains Admins; u3 is in Admins directly and Staff indirectly.
        let staff = mk_group(&d, "a", "Staff", &[&g.id]).await;
        let ev = d.lifecycle_events("a", &u3.id).await.unwrap();
        assert_eq!(ev.last().unwrap().kind, "groups_joined");
        assert_eq!(ev.last().unwrap().detail["via"], json!(g.id));
        let gs = d.user_groups("a", &u3.id).await.unwrap();
        assert_eq!(
            gs,
            vec![
                GroupRef {
                    value: g.id.clone(),
                    display: "Admins".into(),
                    direct: true
                },
                GroupRef {
                    value: staff.id.clone(),
                    display: "Staff".into(),
                    direct: false
                },
            ]
        );
        // Admins may not now contain Staff (a loop).
        let e = d
            .update_group(
                &a,
                "a",
                &g.id,
                None,
                Box::new(|s| Ok(s.resource.clone())),
                vec![MemberChange::Add(vec![MemberRef {
                    value: staff.id.clone(),
                    member_type: None,
                }])],
            )
            .await;
        assert!(matches!(e, Err(DirError::Invalid(_))), "{e:?}");
        let sm = d.group_members("a", &staff.id).await.unwrap();
        assert_eq!(sm, vec![(g.id.clone(), "Group".into(), "Admins".into())]);

        // Rename: users under the group get attributes_changed for groups.
        d.update_group(
            &a,
            "a",
            &g.id,
            None,
            Box::new(|s| {
                let mut r = s.resource.clone();
                r["displayName"] = json!("Administrators");
                Ok(r)
            }),
            vec![],
        )
        .await
        .unwrap();
        let ev = d.lifecycle_events("a", &u3.id).await.unwrap();
        assert_eq!(ev.last().unwrap().kind, "attributes_changed");
        assert_eq!(
            ev.last().unwrap().detail["after"]["groups.display"],
            "Administrators"
        );

        // Replace and RemoveAll.
        d.replace_group(
            &a,
            "a",
            &g.id,
            None,
            Box::new(|s| Ok(s.resource.clone())),
            vec![
                MemberRef {
                    value: u1.id.clone(),
                    member_type: None,
                },
                MemberRef {
                    value: u3.id.clone(),
                    member_type: None,
                },
            ],
        )
        .await
        .unwrap();
        let mut ids: Vec<String> = d
            .group_members("a", &g.id)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        ids.sort();
        let mut want = vec![u1.id.clone(), u3.id.clone()];
        want.sort();
        assert_eq!(ids, want);
        d.update_group(
            &a,
            "a",
            &g.id,
            None,
            Box::new(|s| Ok(s.resource.clone())),
            vec![MemberChange::RemoveAll],
        )
        .await
        .unwrap();
        assert!(d.group_members("a", &g.id).await.unwrap().is_empty());
        assert_eq!(
            d.lifecycle_events("a", &u1.id)
                .await
                .unwrap()
                .last()
                .unwrap()
                .kind,
            "groups_left"
        );

        // Deleting a group: its users leave it; parents lose it as a member.
        d.update_group(
            &a,
            "a",
            &g.id,
            None,
            Box::new(|s| Ok(s.resource.clone())),
            vec![MemberChange::Add(vec![MemberRef {
                value: u2.id.clone(),
                member_type: None,
            }])],
        )
        .await
        .unwrap();
        let staff_v = d.get_group("a", &staff.id).await.unwrap().unwrap().version;
        d.delete_group(&a, "a", &g.id, None).await.unwrap();
        assert!(d.get_group("a", &g.id).await.unwrap().is_none());
        assert!(d.group_members("a", &staff.id).await.unwrap().is_empty());
        assert_eq!(
            d.get_group("a", &staff.id).await.unwrap().unwrap().version,
            staff_v + 1
        );
        let ev = d.lifecycle_events("a", &u2.id).await.unwrap();
        assert_eq!(ev.last().unwrap().kind, "groups_left");
        assert!(d.user_groups("a", &u2.id).await.unwrap().is_empty());
    }
}

/// Users whose filters are checked against the in-memory evaluator.
async fn seed_users(d: &Directory) -> Vec<StoredResource> {
    let bodies = vec![
        json!({"userName": "alice@example.com", "displayName": "Alice Smith", "active": true,
               "externalId": "ext-A", "title": "Engineer", "userType": "Employee",
               "name": {"givenName": "Alice", "familyName": "Smith"},
               "emails": [{"value": "alice@example.com", "type": "work", "primary": true},
                          {"value": "a.smith@home.org", "type": "home"}],
               ENTERPRISE_USER_SCHEMA: {"employeeNumber": "1001", "manager": {"value": "m-1"}}}),
        json!({"userName": "Bob", "active": false, "externalId": "EXT-b", "title": "engineer",
               "userType": "Contractor", "name": {"givenName": "Bob"},
               "emails": [{"value": "bob@example.com", "type": "home"}]}),
        json!({"userName": "carol_100%", "active": true, "displayName": "CAROL",
               "title": "O'Brien \"quoted\"", "nickName": ""}),
        json!({"userName": "dave\\x", "active": true,
               "phoneNumbers": [{"value": "+1 555", "type": "mobile"}],
               "roles": [{"value": "admin"}], "locale": "fr-FR"}),
        json!({"userName": "Éloïse", "active": false, "name": {"familyName": "Müller"},
               ENTERPRISE_USER_SCHEMA: {"employeeNumber": "2002", "department": "R&D"}}),
    ];
    let mut out = Vec::new();
    for b in bodies {
        out.push(mk_user(d, "a", b).await);
    }
    // Noise in another tenant that must never show up.
    mk_user(
        d,
        "b",
        json!({"userName": "alice@example.com", "title": "Engineer", "active": true}),
    )
    .await;
    out
}

const FILTERS: &[&str] = &[
    r#"userName eq "ALICE@example.com""#,
    r#"userName ne "bob""#,
    r#"userName co "_1""#,
    r#"userName co "%""#,
    r#"userName sw "dave\\""#,
    r#"userName ew "COM""#,
    r#"userName gt "c""#,
    r#"userName le "bob""#,
    r#"title eq "engineer""#,
    r#"title co "BRIEN""#,
    r#"title eq "O'Brien \"quoted\"""#,
    r#"title gt "E""#,
    r#"title pr"#,
    r#"not (title pr)"#,
    r#"title eq null"#,
    r#"title ne null"#,
    r#"title ne "engineer""#,
    r#"externalId eq "ext-a""#,
    r#"externalId eq "ext-A""#,
    r#"externalId pr"#,
    r#"externalId sw "EXT""#,
    r#"displayName eq "carol""#,
    r#"displayName co "smith""#,
    r#"active eq false"#,
    r#"active eq true"#,
    r#"active ne true"#,
    r#"active eq "false""#,
    r#"emails eq "BOB@example.com""#,
    r#"emails.value ew "example.com""#,
    r#"emails[type eq "work" and primary eq true]"#,
    r#"emails[type eq "home"]"#,
    r#"emails[not (type eq "home")]"#,
    r#"emails.type eq "home""#,
    r#"emails pr"#,
    r#"not (emails pr)"#,
    r#"emails.value ne "alice@example.com""#,
    r#"emails.primary eq true"#,
    r#"name.givenName sw "al""#,
    r#"name.familyName eq "müller""#,
    r#"name pr"#,
    r#"name[givenName eq "bob"]"#,
    r#"nickName pr"#,
    r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1001""#,
    r#"employeeNumber pr"#,
    r#"employeeNumber gt "1500""#,
    r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "m-1""#,
    r#"manager eq "m-1""#,
    r#"department eq "r&d""#,
    r#"roles.value eq "ADMIN""#,
    r#"phoneNumbers[type eq "mobile"]"#,
    r#"locale eq "FR-fr""#,
    r#"(userName sw "a" or userName sw "b") and not (active eq false)"#,
    r#"not (not (userName eq "bob"))"#,
    r#"userName eq "'; DROP TABLE users; --""#,
    r#"title co "' OR 1=1 --""#,
    r#"name.givenName eq "\") OR (1=1""#,
];

#[tokio::test]
async fn filters_run_in_sql_and_agree_with_the_in_memory_evaluator() {
    let reg = SchemaRegistry::get();
    for d in dirs().await {
        let users = seed_users(&d).await;
        for text in FILTERS {
            let f = parse_filter(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let want: BTreeSet<String> = users
                .iter()
                .filter(|u| matches(&f, &u.resource, &|p| reg.case_exact(ResourceKind::User, p)))
                .map(|u| u.id.clone())
                .collect();
            let got = user_ids(&d, "a", text).await;
            assert_eq!(got, want, "{:?}: {text}", d.db().engine);
        }
        // Spot checks that the evaluator itself agrees with intent.
        assert_eq!(
            user_ids(&d, "a", r#"userName co "_1""#).await,
            ids(&[&users[2]])
        );
        assert_eq!(
            user_ids(&d, "a", r#"title eq "engineer""#).await,
            ids(&[&users[0], &users[1]])
        );
        assert_eq!(
            user_ids(&d, "a", r#"emails[type eq "work" and primary eq true]"#).await,
            ids(&[&users[0]])
        );
        // The table survived the injection attempts.
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&d.db().pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 6);
        // meta.* are columns.
        let all: BTreeSet<String> = users.iter().map(|u| u.id.clone()).collect();
        assert_eq!(
            user_ids(&d, "a", r#"meta.created gt "2000-01-01T00:00:00Z""#).await,
            all
        );
        assert_eq!(
            user_ids(
                &d,
                "a",
                r#"meta.lastModified lt "2000-01-01T00:00:00+01:00""#
            )
            .await,
            BTreeSet::new()
        );
        assert_eq!(
            user_ids(&d, "a", r#"meta.resourceType eq "User""#).await,
            all
        );
        assert_eq!(
            user_ids(&d, "a", &format!("id eq \"{}\"", users[3].id)).await,
            ids(&[&users[3]])
        );
        // Unknown attributes and bad dates are 400s.
        for bad in [
            r#"nosuch eq "x""#,
            r#"meta.created gt "yesterday""#,
            r#"emails[nosuch eq "x"]"#,
        ] {
            match d.list_users("a", &q(bad)).await {
                Err(DirError::Invalid(e)) => assert_eq!(e.status, 400, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn membership_filters_on_users_and_groups() {
    for d in dirs().await {
        let users = seed_users(&d).await;
        let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
        let admins = mk_group(&d, "a", "Admins", &[&alice.id]).await;
        let staff = mk_group(&d, "a", "Staff", &[&admins.id, &bob.id]).await;
        mk_group(&d, "b", "Admins", &[]).await;
        assert_eq!(
            user_ids(&d, "a", r#"groups.display eq "admins""#).await,
            ids(&[alice])
        );
        assert_eq!(
            user_ids(&d, "a", r#"groups[display eq "STAFF"]"#).await,
            ids(&[alice, bob])
        );
        assert_eq!(
            user_ids(
                &d,
                "a",
                &format!("groups.value eq \"{}\"", staff.id.to_uppercase())
            )
            .await,
            ids(&[alice, bob])
        );
        assert_eq!(
            user_ids(&d, "a", &format!("groups eq \"{}\"", admins.id)).await,
            ids(&[alice])
        );
        assert_eq!(
            user_ids(&d, "a", r#"groups[type eq "indirect"]"#).await,
            ids(&[alice])
        );
        assert_eq!(
            user_ids(
                &d,
                "a",
                r#"groups[type eq "direct" and display eq "Staff"]"#
            )
            .await,
            ids(&[bob])
        );
        assert_eq!(user_ids(&d, "a", r#"groups pr"#).await, ids(&[alice, bob]));
        assert!(!user_ids(&d, "a", r#"not (groups pr)"#)
            .await
            .contains(&alice.id));
        assert!(user_ids(&d, "a", r#"groups.display ne "admins""#)
            .await
            .contains(&carol.id));
        assert!(!user_ids(&d, "a", r#"groups.display ne "admins""#)
            .await
            .contains(&alice.id));

        let g = |g: &StoredResource| -> BTreeSet<String> { [g.id.clone()].into() };
        assert_eq!(
            group_ids(&d, "a", r#"displayName eq "ADMINS""#).await,
            g(&admins)
        );
        assert_eq!(
            group_ids(&d, "a", &format!("members.value eq \"{}\"", bob.id)).await,
            g(&staff)
        );
        assert_eq!(
            group_ids(&d, "a", &format!("members eq \"{}\"", alice.id)).await,
            g(&admins)
        );
        assert_eq!(
            group_ids(&d, "a", r#"members[type eq "group"]"#).await,
            g(&staff)
        );
        assert_eq!(
            group_ids(&d, "a", r#"members.display eq "BOB""#).await,
            g(&staff)
        );
        assert_eq!(group_ids(&d, "a", r#"members pr"#).await.len(), 2);
        assert_eq!(
            group_ids(
                &d,
                "a",
                r#"displayName co "a" and not (displayName eq "staff")"#
            )
            .await,
            g(&admins)
        );

        // RemoveMatching by type leaves the users.
        d.update_group(
            &actor("a"),
            "a",
            &staff.id,
            None,
            Box::new(|s| Ok(s.resource.clone())),
            vec![MemberChange::RemoveMatching(
                parse_filter(r#"type eq "Group""#).unwrap(),
            )],
        )
        .await
        .unwrap();
        let m = d.group_members("a", &staff.id).await.unwrap();
        assert_eq!(m, vec![(bob.id.clone(), "User".into(), "Bob".into())]);
        // Alice left Staff (indirectly, via Admins).
        let ev = d.lifecycle_events("a", &alice.id).await.unwrap();
        assert_eq!(ev.last().unwrap().kind, "groups_left");
    }
}

#[tokio::test]
async fn index_paging_is_stable_and_sorts_with_nulls_last() {
    for d in dirs().await {
        let mut all = Vec::new();
        for i in 0..23 {
            let mut body = json!({"userName": format!("user{:02}", (i * 7) % 23)});
            if i % 4 != 0 {
                body["title"] = json!(format!("T{}", i % 5));
            }
            all.push(mk_user(&d, "a", body).await);
        }
        // Default order: insertion, pages of 5, nothing skipped or repeated.
        let mut seen = Vec::new();
        let mut start = 1;
        loop {
            let p = d
                .list_users(
                    "a",
                    &ListQuery {
                        start_index: start,
                        count: 5,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(p.total_results, 23);
            if p.items.is_empty() {
                break;
            }
            seen.extend(p.items.into_iter().map(|s| s.id));
            start += 5;
        }
        assert_eq!(seen, all.iter().map(|s| s.id.clone()).collect::<Vec<_>>());
        // count=0: just the total.
        let p = d
            .list_users(
                "a",
                &ListQuery {
                    start_index: 1,
                    count: 0,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((p.total_results, p.items.len()), (23, 0));
        // sortBy userName descending.
        let sort = Some(parse_attr_path("userName").unwrap());
        let p = d
            .list_users(
                "a",
                &ListQuery {
                    sort_by: sort.clone(),
                    descending: true,
                    start_index: 1,
                    count: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let names: Vec<String> = p
            .items
            .iter()
            .map(|s| s.resource["userName"].as_str().unwrap().to_string())
            .collect();
        let mut want = names.clone();
        want.sort();
        want.reverse();
        assert_eq!(names, want);
        // sortBy title (JSON), nulls last in both directions.
        for desc in [false, true] {
            let p = d
                .list_users(
                    "a",
                    &ListQuery {
                        sort_by: Some(parse_attr_path("title").unwrap()),
                        descending: desc,
                        start_index: 1,
                        count: 100,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let titles: Vec<Option<String>> = p
                .items
                .iter()
                .map(|s| {
                    s.resource
                        .get("title")
                        .and_then(Value::as_str)
                        .map(str::to_lowercase)
                })
                .collect();
            let first_none = titles.iter().position(Option::is_none).unwrap();
            assert!(titles[first_none..].iter().all(Option::is_none));
            let some: Vec<&String> = titles[..first_none]
                .iter()
                .map(|t| t.as_ref().unwrap())
                .collect();
            let mut sorted = some.clone();
            sorted.sort();
            if desc {
                sorted.reverse();
            }
            assert_eq!(some, sorted);
        }
        // sortBy a multi-valued attribute and a boolean work.
        d.list_users(
            "a",
            &ListQuery {
                sort_by: Some(parse_attr_path("emails").unwrap()),
                start_index: 1,
                count: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        d.list_users(
            "a",
            &ListQuery {
                sort_by: Some(parse_attr_path("active").unwrap()),
                start_index: 1,
                count: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(d
            .list_users(
                "a",
                &ListQuery {
                    sort_by: Some(parse_attr_path("groups").unwrap()),
                    start_index: 1,
                    count: 10,
                    ..Default::default()
                }
            )
            .await
            .is_err());
    }
}

#[tokio::test]
async fn cursor_paging_survives_concurrent_inserts() {
    for d in dirs().await {
        let mut originals = HashSet::new();
        for i in 0..17 {
            let mut body = json!({"userName": format!("c{i:02}")});
            if i % 3 != 0 {
                body["title"] = json!(format!("t{}", i % 4));
            }
            originals.insert(mk_user(&d, "a", body).await.id);
        }
        for (sort, desc) in [
            (None, false),
            (Some("title"), false),
            (Some("title"), true),
            (Some("userName"), true),
        ] {
            let mut seen: Vec<String> = Vec::new();
            let mut cursor = String::new();
            let mut extra = 0;
            loop {
                let lq = ListQuery {
                    sort_by: sort.map(|s| parse_attr_path(s).unwrap()),
                    descending: desc,
                    count: 4,
                    cursor: Some(cursor.clone()),
                    start_index: 1,
                    ..Default::default()
                };
                let p = d.list_users("a", &lq).await.unwrap();
                seen.extend(p.items.iter().map(|s| s.id.clone()));
                // Someone adds users while we page.
                extra += 1;
                mk_user(
                    &d,
                    "a",
                    json!({"userName": format!("new-{:?}-{desc}-{extra}", sort), "title": "t1"}),
                )
                .await;
                match p.next_cursor {
                    Some(c) => cursor = c,
                    None => break,
                }
            }
            let uniq: HashSet<&String> = seen.iter().collect();
            assert_eq!(uniq.len(), seen.len(), "no repeats ({sort:?}, {desc})");
            assert!(
                originals.iter().all(|o| uniq.contains(o)),
                "no skips ({sort:?}, {desc})"
            );
        }
        // A cursor from another order, and garbage, are 400s.
        let p = d
            .list_users(
                "a",
                &ListQuery {
                    count: 2,
                    cursor: Some(String::new()),
                    start_index: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let c = p.next_cursor.unwrap();
        let e = d
            .list_users(
                "a",
                &ListQuery {
                    count: 2,
                    cursor: Some(c),
                    sort_by: Some(parse_attr_path("title").unwrap()),
                    start_index: 1,
                    ..Default::default()
                },
            )
            .await;
        assert!(matches!(e, Err(DirError::Invalid(_))));
        let e = d
            .list_users(
                "a",
                &ListQuery {
                    count: 2,
                    cursor: Some("garbage!".into()),
                    start_index: 1,
                    ..Default::default()
                },
            )
            .await;
        assert!(matches!(e, Err(DirError::Invalid(_))));
    }
}

/// The list query a filter becomes, as `list.rs` builds it (tenant + condition, seq order).
async fn plan(d: &Directory, table: &str, target: Target, filter: &str) -> String {
    let db = d.db();
    let mut b = SqlBuilder::new(db.engine);
    b.text("a");
    let cond = filter_sql(&mut b, target, &parse_filter(filter).unwrap()).unwrap();
    let select = format!("SELECT r.id, r.resource FROM {table} r WHERE r.tenant_id = $1 AND {cond} ORDER BY r.seq ASC LIMIT 100 OFFSET 0");
    let mut conn = db.pool.acquire().await.unwrap();
    let rows = match db.engine {
        Engine::Sqlite => {
            let sql = format!("EXPLAIN QUERY PLAN {select}");
            bind_args(sqlx::query(&sql), &b.args)
                .fetch_all(&mut *conn)
                .await
                .unwrap()
        }
        Engine::Postgres => {
            // Tiny tables make a seq scan cheapest; forbid it to see whether an index applies.
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut *conn)
                .await
                .unwrap();
            let sql = format!("EXPLAIN {select}");
            let r = bind_args(sqlx::query(&sql), &b.args)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            sqlx::query("RESET enable_seqscan")
                .execute(&mut *conn)
                .await
                .unwrap();
            r
        }
    };
    let col = if db.engine == Engine::Sqlite { 3 } else { 0 };
    rows.iter()
        .map(|r| r.get::<String, _>(col))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn eq_on_indexed_attributes_is_an_index_lookup() {
    for d in dirs().await {
        seed_users(&d).await;
        mk_group(&d, "a", "Admins", &[]).await;
        let cases = [
            (
                "users",
                Target::Users,
                r#"userName eq "Bob""#,
                "user_name_ci",
            ),
            (
                "users",
                Target::Users,
                r#"externalId eq "EXT-b""#,
                "users_external_id",
            ),
            (
                "users",
                Target::Users,
                r#"displayName eq "carol""#,
                "users_display_name",
            ),
            ("users", Target::Users, r#"id eq "x""#, "id"),
            (
                "groups",
                Target::Groups,
                r#"displayName eq "admins""#,
                "display_name_ci",
            ),
            (
                "groups",
                Target::Groups,
                r#"externalId eq "x""#,
                "groups_external_id",
            ),
        ];
        for (table, target, filter, index_hint) in cases {
            let p = plan(&d, table, target, filter).await;
            let lower = p.to_lowercase();
            let uses_index = match d.db().engine {
                Engine::Sqlite => {
                    lower.contains("using index") || lower.contains("using covering index")
                }
                Engine::Postgres => {
                    lower.contains("index scan")
                        || lower.contains("index only scan")
                        || lower.contains("bitmap index scan")
                }
            };
            assert!(uses_index, "{filter} on {:?}: {p}", d.db().engine);
            assert!(
                !lower.contains("scan r\n") && !lower.ends_with("scan r"),
                "{filter}: {p}"
            );
            if d.db().engine == Engine::Sqlite && index_hint.contains('_') {
                assert!(lower.contains(index_hint), "{filter}: {p}");
            }
        }
    }
}

#[tokio::test]
async fn tenants_are_isolated() {
    for d in dirs().await {
        let ua = mk_user(&d, "a", json!({"userName": "shared", "title": "secret"})).await;
        let ga = mk_group(&d, "a", "Secret", &[&ua.id]).await;
        let b = actor("b");
        assert!(d.get_user("b", &ua.id).await.unwrap().is_none());
        assert!(d.get_group("b", &ga.id).await.unwrap().is_none());
        assert!(d.group_members("b", &ga.id).await.unwrap().is_empty());
        assert!(d.user_groups("b", &ua.id).await.unwrap().is_empty());
        assert!(d.lifecycle_events("b", &ua.id).await.unwrap().is_empty());
        for f in [r#"userName eq "shared""#, r#"title pr"#, r#"groups pr"#] {
            assert!(user_ids(&d, "b", f).await.is_empty(), "{f}");
        }
        assert_eq!(
            d.list_users(
                "b",
                &ListQuery {
                    start_index: 1,
                    count: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .total_results,
            0
        );
        assert!(group_ids(&d, "b", r#"displayName eq "secret""#)
            .await
            .is_empty());
        assert!(
            group_ids(&d, "b", &format!("members.value eq \"{}\"", ua.id))
                .await
                .is_empty()
        );
        assert!(matches!(
            d.update_user(&b, "b", &ua.id, None, set_attr("title", json!("x")))
                .await,
            Err(DirError::NotFound)
        ));
        // Claiming tenant a while being an actor of b is refused too.
        assert!(matches!(
            d.update_user(&b, "a", &ua.id, None, set_attr("title", json!("x")))
                .await,
            Err(DirError::NotFound)
        ));
        assert!(matches!(
            d.delete_user(&b, "b", &ua.id, None).await,
            Err(DirError::NotFound)
        ));
        assert!(matches!(
            d.delete_group(&b, "b", &ga.id, None).await,
            Err(DirError::NotFound)
        ));
        assert!(matches!(
            d.update_group(
                &b,
                "b",
                &ga.id,
                None,
                Box::new(|s| Ok(s.resource.clone())),
                vec![MemberChange::RemoveAll]
            )
            .await,
            Err(DirError::NotFound)
        ));
        let gb = mk_group(&d, "b", "Mine", &[]).await;
        let e = d
            .update_group(
                &b,
                "b",
                &gb.id,
                None,
                Box::new(|s| Ok(s.resource.clone())),
                vec![MemberChange::Add(vec![MemberRef {
                    value: ua.id.clone(),
                    member_type: None,
                }])],
            )
            .await;
        assert!(e.is_ok(), "an unresolvable id is kept, not refused: {e:?}");
        assert_eq!(
            d.group_members("b", &gb.id).await.unwrap()[0].2,
            "",
            "tenant a's userName does not show"
        );
        assert!(
            d.user_groups("a", &ua.id)
                .await
                .unwrap()
                .iter()
                .all(|g| g.value != gb.id),
            "tenant b's group does not show on tenant a's user"
        );
        // Tenant a is untouched.
        assert_eq!(d.get_user("a", &ua.id).await.unwrap().unwrap().version, 1);
        assert_eq!(d.group_members("a", &ga.id).await.unwrap().len(), 1);
    }
}

/// `cargo test --release --lib directory::tests::deactivation_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn deactivation_throughput() {
    let n: usize = std::env::var("DEPROVD_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for d in dirs().await {
        let mut tasks = Vec::new();
        for i in 0..n {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                mk_user(
                    &d,
                    "a",
                    json!({"userName": format!("p{i}"), "active": true}),
                )
                .await
                .id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let (b0, o0) = d.db().write_stats();
        let conc: usize = std::env::var("DEPROVD_BENCH_CONC")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(conc));
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for id in ids {
            let d = d.clone();
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                d.update_user(
                    &actor("a"),
                    "a",
                    &id,
                    None,
                    set_attr("active", json!(false)),
                )
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let (b1, o1) = d.db().write_stats();
        println!(
            "{:?}: {n} deactivations, {conc} at a time, in {secs:.2}s = {:.0}/s ({} batches, {} ops)",
            d.db().engine,
            n as f64 / secs,
            b1 - b0,
            o1 - o0
        );
    }
}

/// `cargo test --lib directory::tests::big_group_deltas -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn big_group_deltas() {
    let n: usize = std::env::var("DEPROVD_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    for d in dirs().await {
        let mut tasks = Vec::new();
        for i in 0..n {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                mk_user(&d, "a", json!({"userName": format!("m{i}")}))
                    .await
                    .id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let g = mk_group(&d, "a", "Everyone", &refs).await;
        let t_create = t0.elapsed();
        let t0 = std::time::Instant::now();
        d.update_group(
            &actor("a"),
            "a",
            &g.id,
            None,
            Box::new(|s| Ok(s.resource.clone())),
            vec![MemberChange::Remove(vec![ids[7].clone()])],
        )
        .await
        .unwrap();
        let t_remove = t0.elapsed();
        let t0 = std::time::Instant::now();
        let m = d.group_members("a", &g.id).await.unwrap();
        let t_read = t0.elapsed();
        assert_eq!(m.len(), n - 1);
        println!("{:?}: create with {n} members {t_create:?}, remove one {t_remove:?}, read members {t_read:?}", d.db().engine);
    }
}

/// A user's groups are read on every SCIM request about the user and every converge: the walk
/// must start from the user's own membership rows and look groups up by id, whatever the
/// tenant's size (SQLite's planner took the tenant's whole membership and group ranges).
#[tokio::test]
async fn user_groups_walks_from_the_member() {
    for d in dirs().await {
        if d.db().engine != Engine::Sqlite {
            continue;
        }
        let sql = format!("EXPLAIN QUERY PLAN {}", super::users::USER_GROUPS_SQL);
        let rows = sqlx::query(&sql)
            .bind("t")
            .bind("u")
            .bind(8i64)
            .fetch_all(&d.db().pool)
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("group_members_member (tenant_id=? AND member_id=?)"),
            "{plan}"
        );
        assert!(
            plan.contains("SEARCH g USING INDEX sqlite_autoindex_groups_1 (tenant_id=? AND id=?)"),
            "{plan}"
        );
        assert!(
            !plan.contains("SCAN gm") && !plan.contains("SCAN g\n"),
            "{plan}"
        );
    }
}
