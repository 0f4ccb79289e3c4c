//! Listing: filters run in the database, paging per RFC 7644 §3.4.2.4, sorting, attribute
//! projection, cursor paging per RFC 9865, and `.search`.

use crate::helpers::*;
use serde_json::json;

async fn seed(app: &TestApp) {
    for (i, (name, title, dept)) in [
        ("ann", "Engineer", "IT"),
        ("ben", "Manager", "IT"),
        ("cat", "Engineer", "Sales"),
        ("dan", "Director", "Sales"),
    ]
    .iter()
    .enumerate()
    {
        let mut u = user(&format!("{name}@example.com"));
        u["title"] = json!(title);
        u["schemas"] = json!([USER, ENTERPRISE]);
        u[ENTERPRISE] = json!({"department": dept, "employeeNumber": format!("{}", 100 + i)});
        u["active"] = json!(i != 3);
        let r = app.post("/Users", &u).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

fn names(r: &Resp) -> Vec<String> {
    r.body["Resources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u["userName"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn filters_and_sorting() {
    for app in apps().await {
        seed(&app).await;
        let e = app.engine;
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("title eq \"Engineer\"", vec!["ann@example.com", "cat@example.com"]),
            ("title ne \"Engineer\"", vec!["ben@example.com", "dan@example.com"]),
            ("userName sw \"b\"", vec!["ben@example.com"]),
            ("userName ew \"N@EXAMPLE.COM\"", vec!["ann@example.com", "ben@example.com", "dan@example.com"]),
            ("userName co \"at\"", vec!["cat@example.com"]),
            ("active eq false", vec!["dan@example.com"]),
            ("title pr and not (title eq \"Manager\")", vec!["ann@example.com", "cat@example.com", "dan@example.com"]),
            ("title eq \"Director\" or title eq \"Manager\" and userName sw \"b\"", vec!["ben@example.com", "dan@example.com"]),
            ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq \"Sales\"", vec!["cat@example.com", "dan@example.com"]),
            ("emails[type eq \"work\" and value co \"ann\"]", vec!["ann@example.com"]),
            ("name.givenName eq \"Given\" and userName lt \"b\"", vec!["ann@example.com"]),
            ("meta.created gt \"2000-01-01T00:00:00Z\" and userName ge \"d\"", vec!["dan@example.com"]),
            ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber gt \"101\"", vec!["cat@example.com", "dan@example.com"]),
        ];
        for (filter, want) in cases {
            let r = app.filter("/Users", filter).await;
            assert_eq!(r.status, 200, "[{e}] {filter}: {}", r.text);
            let mut got = names(&r);
            got.sort();
            assert_eq!(got, want, "[{e}] {filter}");
            assert_eq!(r.body["totalResults"], want.len(), "[{e}] {filter}");
        }
        let r = app
            .get("/Users?sortBy=title&sortOrder=descending&attributes=userName,title")
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let titles: Vec<&str> = r.body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["title"].as_str().unwrap())
            .collect();
        assert_eq!(
            titles,
            vec!["Manager", "Engineer", "Engineer", "Director"],
            "[{e}]"
        );
        assert!(r.body["Resources"][0].get("emails").is_none());
        let r = app.filter("/Users", "nosuchattr eq \"x\"").await;
        assert_eq!(r.status, 400, "[{e}] unknown attribute: {}", r.text);
        assert_eq!(r.body["scimType"], "invalidFilter");
    }
}

#[tokio::test]
async fn paging_parameters_per_rfc() {
    for app in apps().await {
        seed(&app).await;
        let r = app.get("/Users?startIndex=0&count=2").await;
        assert_eq!(r.body["startIndex"], 1, "startIndex < 1 means 1");
        assert_eq!(r.body["itemsPerPage"], 2);
        assert_eq!(r.body["totalResults"], 4);
        let r = app.get("/Users?count=-5").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["totalResults"], 4);
        assert_eq!(
            r.body["Resources"].as_array().map(|a| a.len()).unwrap_or(0),
            0,
            "negative count means 0"
        );
        let r = app.get("/Users?count=100000").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["itemsPerPage"], 4, "capped by maxResults, all 4 fit");
        let r = app.get("/Users?startIndex=4&count=10").await;
        assert_eq!(names(&r).len(), 1);
        let r = app.get("/Users?startIndex=abc").await;
        assert_eq!(r.status, 400);
    }
}

#[tokio::test]
async fn cursor_pagination_rfc_9865() {
    for app in apps().await {
        seed(&app).await;
        let mut seen = Vec::new();
        let mut url = "/Users?cursor&count=3".to_string();
        for _ in 0..5 {
            let r = app.get(&url).await;
            assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
            seen.extend(names(&r));
            match r.body["nextCursor"].as_str() {
                Some(c) => url = format!("/Users?cursor={c}&count=3"),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                "ann@example.com",
                "ben@example.com",
                "cat@example.com",
                "dan@example.com"
            ],
            "[{}]",
            app.engine
        );
        let r = app.get("/Users?cursor=not-a-real-cursor&count=3").await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["scimType"], "invalidCursor");
    }
}

#[tokio::test]
async fn search_endpoints() {
    for app in apps().await {
        seed(&app).await;
        app.create_group("Searchers", &[]).await;
        let r = app
            .post("/Users/.search", &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "title eq \"Engineer\"", "attributes": ["userName"], "startIndex": 1, "count": 10}))
            .await;
        assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
        assert_eq!(r.body["totalResults"], 2);
        let r = app.post("/.search", &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "count": 100})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["totalResults"], 5, "4 users + 1 group");
    }
}
