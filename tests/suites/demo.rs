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

#[tokio::test]
async fn the_demo_routes_to_its_services() {
    let demo = start();
    let addr = demo.gateway.listener_addr("public").unwrap();
    let mut client = Client::connect(addr).await;

    let health = client.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["service"], "gatehouse", "answered by the gateway itself");

    let mut instances = Vec::new();
    for _ in 0..4 {
        let users = client.get("/users").await;
        assert_eq!(users.status, 200);
        assert_eq!(users.json()["service"], "user");
        instances.push(users.json()["instance"].as_str().unwrap().to_owned());
    }
    assert_eq!(instances, vec!["user-1", "user-2", "user-1", "user-2"], "round-robin over the two instances");

    let login = client
        .request(
            "POST",
            "/auth/login",
            &[("content-type", "application/json")],
            r#"{"username":"alice","password":"alice-pw"}"#,
        )
        .await;
    assert_eq!(login.status, 200);
    let token = login.json();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["service"], "auth");
    assert_eq!(token["access_token"].as_str().unwrap().split('.').count(), 3);
    assert!(token["expires_in"].as_u64().unwrap() > 0);
    let wrong = client.request("POST", "/auth/login", &[], r#"{"username":"alice","password":"nope"}"#).await;
    assert_eq!(wrong.status, 401);

    let jwks = client.get("/auth/.well-known/jwks.json").await;
    assert_eq!(jwks.json()["keys"][0]["alg"], "RS256");

    let tasks = client.get("/tasks").await;
    assert_eq!(tasks.json()["service"], "task");
    let appointments = client.get("/appointments").await;
    assert_eq!(appointments.json()["service"], "appointment");

    let put = client.request("PUT", "/tasks", &[], "").await;
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow"), Some("GET, POST"));
    assert_eq!(client.get("/nowhere").await.error_code(), "route_not_found");

    let admin = demo.gateway.admin_addr().unwrap();
    let ready = crate::common::get(admin, "/ready").await;
    assert_eq!(ready.json()["ready"], true);
    let routes = crate::common::get(admin, "/routes").await.json();
    assert_eq!(routes["listeners"][0]["routes"].as_array().unwrap().len(), 5);
}
