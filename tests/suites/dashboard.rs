//! The admin dashboard in a real headless browser (Debian's chromium, driven over the DevTools
//! protocol by tests/browser/dashboard.py): it shows the configured routes with their live
//! traffic, the upstreams' health, rate-limit rejections and reloads, and Pause answers a click.

use crate::common::{Client, TestGateway, Upstream};

#[tokio::test]
async fn the_dashboard_shows_live_routes_upstreams_and_rejections_in_a_browser() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  users-service: {{ endpoints: ["{}"] }}
routes:
  - {{ name: users-route, match: {{ path: "/users/**" }}, upstream: users-service }}
  - {{ name: limited-route, match: {{ path: "/limited" }}, upstream: users-service, policies: [{{ rate_limit: {{ key: client_ip, rate: 1/h }} }}] }}
"#,
        app.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    for i in 0..20 {
        assert_eq!(client.get(&format!("/users/{i}")).await.status, 200);
    }
    for _ in 0..3 {
        client.get("/limited").await;
    }
    gw.reload_with(&std::fs::read_to_string(&gw.config_path).unwrap());

    // The page itself is served to anyone who reaches the admin listener: it holds no data.
    let admin = gw.gateway.admin_addr().unwrap();
    let page = crate::common::get(admin, "/dashboard").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|c| c.starts_with("text/html")));

    // Traffic keeps flowing while the browser looks, so the rates have something to show.
    let at = gw.addr();
    let traffic = tokio::spawn(async move {
        let mut client = Client::connect(at).await;
        loop {
            client.get("/users/live").await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("dashboard.png");
    let url = format!("http://{admin}/dashboard");
    let target = shot.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("tests/browser/dashboard.py")
            .arg(&url)
            .arg(&target)
            .args(["users-route", "limited-route", "users-service", "healthy", "rate_limited", "ok"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    traffic.abort();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["state_after_click"], "paused", "{report}");
    assert_eq!(report["button_after_click"], "Resume");
    // The users route row: its total counts the requests made, and its rate is a number.
    let rows = report["route_rows"].as_array().unwrap();
    let users = rows.iter().find(|r| r[0] == "users-route").unwrap_or_else(|| panic!("{report}"));
    assert_eq!(users[2], "users-service");
    let total: f64 = users[6].as_str().unwrap().parse().unwrap();
    assert!(total >= 20.0, "{users}");
    let rate: f64 = users[3].as_str().unwrap().parse().unwrap_or_else(|_| panic!("no rate yet: {users}"));
    assert!(rate > 0.0, "{users}");
    // DASHBOARD_SCREENSHOT=path keeps the picture, to look at.
    if let Ok(keep) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a screenshot of {} bytes", png.len());
}
