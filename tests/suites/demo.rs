//! `gatehouse demo`: the contract that the README and the docs rely on.

use gatehouse::cli::{Demo, DemoOptions};
use gatehouse::demo::DemoPorts;

use crate::common::Client;

fn start() -> Demo {
    Demo::start(DemoOptions {
        listen: "127.0.0.1:0".into(),
        admin: "127.0.0.1:0".into(),
        ports: DemoPorts::EPHEMERAL,
        config: None,
        access_log: "/dev/null".into(),
    })
    .expect("demo starts")
}

async fn login(client: &mut Client, user: &str, password: &str) -> String {
    let reply = client
        .request(
            "POST",
            "/auth/login",
            &[("content-type", "application/json")],
            &format!(r#"{{"username":"{user}","password":"{password}"}}"#),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let token = reply.json();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["service"], "auth");
    assert!(token["expires_in"].as_u64().unwrap() > 0);
    format!("Bearer {}", token["access_token"].as_str().unwrap())
}

#[tokio::test]
async fn the_demo_routes_authenticates_and_authorizes() {
    let demo = start();
    let addr = demo.gateway.listener_addr("public").unwrap();
    let mut client = Client::connect(addr).await;

    let health = client.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["service"], "gatehouse", "answered by the gateway itself");

    // Without a token: 401 from the gateway, with a Bearer challenge.
    let anonymous = client.get("/users").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "unauthorized");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer realm=\"gatehouse\""));
    let wrong = client.request("POST", "/auth/login", &[], r#"{"username":"alice","password":"nope"}"#).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["service"], "auth", "a wrong password is the auth service's answer");

    let alice = login(&mut client, "alice", "alice-pw").await;
    let admin = login(&mut client, "admin", "admin-pw").await;
    let jwks = client.get("/auth/.well-known/jwks.json").await;
    assert_eq!(jwks.json()["keys"][0]["alg"], "RS256");

    let mut instances = Vec::new();
    for _ in 0..4 {
        let users = client.request("GET", "/users", &[("authorization", &alice)], "").await;
        assert_eq!(users.status, 200);
        instances.push(users.json()["instance"].as_str().unwrap().to_owned());
    }
    assert_eq!(instances, vec!["user-1", "user-2", "user-1", "user-2"], "round-robin over the two instances");

    // The identity comes from the verified token; a forged header is dropped.
    let me = client
        .request(
            "GET",
            "/users/me",
            &[("authorization", &alice), ("x-user-id", "admin"), ("x-user-roles", "admin")],
            "",
        )
        .await;
    assert_eq!(me.status, 200, "{}", me.text());
    let user = &me.json()["user"];
    assert_eq!(user["id"], "alice");
    assert_eq!(user["name"], "Alice");
    assert_eq!(user["roles"], serde_json::json!(["user"]));

    let created = client
        .request(
            "POST",
            "/tasks",
            &[("authorization", &alice), ("content-type", "application/json")],
            r#"{"title":"write docs"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let tasks = client.request("GET", "/tasks", &[("authorization", &alice)], "").await;
    assert_eq!(tasks.json()["tasks"][0]["title"], "write docs");
    let admins_tasks = client.request("GET", "/tasks", &[("authorization", &admin)], "").await;
    assert_eq!(admins_tasks.json()["tasks"], serde_json::json!([]), "tasks are per user");

    // Cancelling an appointment is for admins: the gateway refuses alice before the service sees it.
    let refused = client.request("DELETE", "/appointments/1", &[("authorization", &alice)], "").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "forbidden");
    let cancelled = client.request("DELETE", "/appointments/1", &[("authorization", &admin)], "").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["deleted"], "1");

    let mid = alice.len() - 40;
    let flipped = if alice.as_bytes()[mid] == b'A' { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &alice[..mid], &alice[mid + 1..]);
    let bad = client.request("GET", "/tasks", &[("authorization", &tampered)], "").await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.error_code(), "invalid_token");
    assert!(bad.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));

    let put = client.request("PUT", "/tasks", &[], "").await;
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow"), Some("GET, POST"));
    assert_eq!(client.get("/nowhere").await.error_code(), "route_not_found");

    // /tasks is limited per user: 10 at once, then 5 a second. Alice has used 2; a quick burst runs
    // out (a few tokens may come back while it runs, never 5 within these few milliseconds).
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..16 {
        let reply = client.request("GET", "/tasks", &[("authorization", &alice)], "").await;
        statuses.push(reply.status.as_u16());
        if reply.status == 429 && refused.is_none() {
            refused = Some(reply);
        }
    }
    assert!(statuses[..8].iter().all(|s| *s == 200), "{statuses:?}");
    let refused = refused.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert_eq!(refused.error_code(), "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("ratelimit-policy"), Some("\"5/s\";q=10;w=2"));
    assert!(refused.header("ratelimit").unwrap().starts_with("\"5/s\";r=0;"));
    let admins = client.request("GET", "/tasks", &[("authorization", &admin)], "").await;
    assert_eq!(admins.status, 200, "each user has their own allowance");

    let admin_api = demo.gateway.admin_addr().unwrap();
    let ready = crate::common::get(admin_api, "/ready").await;
    assert_eq!(ready.json()["ready"], true);
    let routes = crate::common::get(admin_api, "/routes").await.json();
    assert_eq!(routes["listeners"][0]["routes"].as_array().unwrap().len(), 6);
}
