//! `quota`: requests per day or month by the consumer's plan, beside rate limits, and the usage
//! read-out of the admin API.

use crate::common::{Client, Reply, TestGateway, Upstream, get};

fn config(app: &Upstream, policies: &str) -> String {
    format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers:
  - {{ name: alice, plan: free, credentials: [{{ api_key: "alice-key-0123456789" }}] }}
  - {{ name: bob, plan: pro, credentials: [{{ api_key: "bob-key-0123456789ab" }}] }}
  - {{ name: carol, credentials: [{{ api_key: "carol-key-0123456789" }}] }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: api
    match: {{ path: "/api/**" }}
    upstream: app
    policies:
      - api_key: {{}}
{policies}
"#,
        app.url()
    )
}

async fn call(client: &mut Client, key: &str) -> Reply {
    client.request("GET", "/api/x", &[("x-api-key", key)], "").await
}

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789ab";
const CAROL: &str = "carol-key-0123456789";

#[tokio::test]
async fn each_plan_has_its_quota_and_refusals_say_quota_exceeded() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&config(&app, "      - quota: { period: day, plans: { free: 2, pro: 3 }, limit: 1 }"));
    let mut client = Client::connect(gw.addr()).await;

    let first = call(&mut client, ALICE).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"free\";q=2;w=86400"), "only the caller's plan is shown");
    let t: u64 = first.header("ratelimit").unwrap().split(";t=").nth(1).unwrap().parse().unwrap();
    assert!(first.header("ratelimit").unwrap().starts_with("\"free\";r=1;"));
    assert!((1..=86_400).contains(&t), "a day quota renews at midnight UTC: {t}");
    assert_eq!(call(&mut client, ALICE).await.status, 200);
    let refused = call(&mut client, ALICE).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "quota_exceeded");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry.abs_diff(t) <= 1, "retry at the renewal: {retry} against {t}");

    let mut bob = Vec::new();
    for _ in 0..4 {
        bob.push(call(&mut client, BOB).await.status.as_u16());
    }
    assert_eq!(bob, [200, 200, 200, 429], "pro: 3 a day");
    let carol = call(&mut client, CAROL).await;
    assert_eq!(carol.header("ratelimit-policy"), Some("\"default\";q=1;w=86400"), "no plan: the default limit");
    assert_eq!(call(&mut client, CAROL).await.status, 429);
    assert_eq!(app.requests(), 2 + 3 + 1);
}

#[tokio::test]
async fn a_rate_limit_and_a_quota_report_side_by_side() {
    let app = Upstream::echo("app");
    let policies = "      - rate_limit: { key: consumer, rate: 2/min, headers: both }\n      - quota: { period: month, limit: 100, headers: both }";
    let gw = TestGateway::start(&config(&app, policies));
    let mut client = Client::connect(gw.addr()).await;
    let first = call(&mut client, ALICE).await;
    assert_eq!(first.status, 200);
    let policy: Vec<&str> = first.headers.get_all("ratelimit-policy").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(policy, ["\"2/min\";q=2;w=60", "\"default\";q=100;w=2592000"]);
    let state: Vec<&str> = first.headers.get_all("ratelimit").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(state.len(), 2);
    assert!(state[1].starts_with("\"default\";r=99;"), "{state:?}");
    // X-RateLimit-* show the one closest to refusing: the rate limit, 1 left.
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(call(&mut client, ALICE).await.status, 200);
    // Refused by the rate limit: the quota is not charged for it.
    let refused = call(&mut client, ALICE).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "rate_limited");

    let admin = gw.gateway.admin_addr().unwrap();
    let usage = get(admin, "/consumers/alice/usage").await.json();
    assert_eq!(usage["consumer"], "alice");
    assert_eq!(usage["plan"], "free");
    let limits = usage["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 2, "{usage}");
    let quota = limits.iter().find(|l| l["policy"] == "quota").unwrap();
    assert_eq!(quota["name"], "default");
    assert_eq!(quota["scope"], "route:api");
    assert_eq!(quota["backend"], "local");
    assert_eq!(
        (quota["limit"].as_u64(), quota["used"].as_u64(), quota["remaining"].as_u64()),
        (Some(100), Some(2), Some(98))
    );
    let rate = limits.iter().find(|l| l["policy"] == "rate_limit").unwrap();
    assert_eq!((rate["used"].as_u64(), rate["remaining"].as_u64()), (Some(2), Some(0)));
    // Reading the usage uses none of it.
    let again = get(admin, "/consumers/alice/usage").await.json();
    assert_eq!(again["limits"], usage["limits"]);
    // Bob has used nothing.
    let bob = get(admin, "/consumers/bob/usage").await.json();
    assert!(bob["limits"].as_array().unwrap().iter().all(|l| l["used"] == 0), "{bob}");
    let missing = get(admin, "/consumers/nobody/usage").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "consumer_not_found");
}

#[tokio::test]
async fn a_rolling_quota_counts_over_its_period() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&config(&app, "      - quota: { period: 30d, limit: 2 }"));
    let mut client = Client::connect(gw.addr()).await;
    let first = call(&mut client, BOB).await;
    assert_eq!(first.header("ratelimit-policy"), Some("\"default\";q=2;w=2592000"));
    assert_eq!(call(&mut client, BOB).await.status, 200);
    let refused = call(&mut client, BOB).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "quota_exceeded");
}

#[test]
fn bad_quotas_are_refused() {
    let app = Upstream::echo("app");
    for (policy, needle) in [
        ("{ period: fortnight, limit: 5 }", "is not a period"),
        ("{ period: 30s, limit: 5 }", "at least 1m"),
        ("{ period: day }", "needs a `limit`"),
        ("{ period: day, limit: 0 }", "admits nothing"),
        ("{ period: day, plans: { free: 0 } }", "admits nothing"),
        ("{ period: day, limit: 5, on_redis_failure: deny }", "backend: redis"),
        ("{ period: day, limit: 5, key: nobody }", "unknown key"),
    ] {
        let yaml = config(&app, &format!("      - quota: {policy}"));
        let err = match TestGateway::try_start(&yaml) {
            Ok(_) => panic!("accepted {policy}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{policy}: {err}");
        assert!(err.contains("quota"), "{policy}: {err}");
    }
}
