//! Traffic splitting between upstreams (canary, sticky A/B) and mirroring.

use std::time::{Duration, Instant};

use crate::common::{Client, TestGateway, Upstream, UpstreamBehaviour};

fn config(v1: &Upstream, v2: &Upstream, shadow: &Upstream, route: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  v1: {{ endpoints: ["{}"] }}
  v2: {{ endpoints: ["{}"] }}
  shadow: {{ endpoints: ["{}"], timeouts: {{ response_header: 30s }} }}
routes:
  - name: products
    match: {{ path: "/products/**" }}
{route}
"#,
        v1.url(),
        v2.url(),
        shadow.url()
    )
}

#[tokio::test]
async fn a_canary_gets_its_weight_of_10000_requests() {
    let (v1, v2, shadow) = (Upstream::echo("v1"), Upstream::echo("v2"), Upstream::echo("shadow"));
    let gw = TestGateway::start(&config(
        &v1,
        &v2,
        &shadow,
        "    split: [{ upstream: v1, weight: 90 }, { upstream: v2, weight: 10 }]",
    ));
    let addr = gw.addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                for _ in 0..1250 {
                    assert_eq!(client.get("/products/1").await.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let canary = v2.requests();
    assert_eq!(v1.requests() + canary, 10_000);
    // 10% of 10,000: standard deviation 30, so ±150 is five of them.
    assert!((850..=1150).contains(&canary), "the canary got {canary}");
    assert_eq!(shadow.requests(), 0);
}

#[tokio::test]
async fn a_sticky_split_keeps_each_user_on_one_side() {
    let (v1, v2, shadow) = (Upstream::echo("v1"), Upstream::echo("v2"), Upstream::echo("shadow"));
    let route = "    split: [{ upstream: v1, weight: 50 }, { upstream: v2, weight: 50 }]\n    split_on: header:x-user";
    let gw = TestGateway::start(&config(&v1, &v2, &shadow, route));
    let mut client = Client::connect(gw.addr()).await;
    let mut sides = [0, 0];
    for user in 0..40 {
        let user = format!("user-{user}");
        let first = client.request("GET", "/products/x", &[("x-user", &user)], "").await.json()["instance"].clone();
        for _ in 0..3 {
            let again = client.request("GET", "/products/y", &[("x-user", &user)], "").await.json()["instance"].clone();
            assert_eq!(again, first, "{user} changed sides");
        }
        sides[usize::from(first == "v2")] += 1;
    }
    assert!(sides[0] >= 8 && sides[1] >= 8, "users spread over both sides: {sides:?}");
}

#[tokio::test]
async fn mirrored_copies_arrive_and_a_hanging_mirror_slows_nothing() {
    let (v1, v2) = (Upstream::echo("v1"), Upstream::echo("v2"));
    let shadow = Upstream::echo("shadow");
    let gw = TestGateway::start(&config(&v1, &v2, &shadow, "    upstream: v1\n    mirror: { upstream: shadow }"));
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.request("POST", "/products/new", &[], "a new product").await;
    assert_eq!(reply.json()["instance"], "v1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while shadow.requests() == 0 {
        assert!(Instant::now() < deadline, "no copy reached the mirror");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let copy = &shadow.seen()[0];
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.uri, "/products/new");
    assert_eq!(&copy.body[..], b"a new product");
    assert_eq!(copy.headers["x-gatehouse-mirror"], "1");
    // A client cannot pass its own request off as a mirrored copy.
    let spoofed = client.request("GET", "/products/1", &[("x-gatehouse-mirror", "1")], "").await;
    assert!(spoofed.json()["headers"].get("x-gatehouse-mirror").is_none(), "{}", spoofed.text());

    // A mirror that never answers: the real requests are as fast as ever, and none fails.
    let hanging = Upstream::start("hanging", UpstreamBehaviour::Hang);
    let gw = TestGateway::start(&config(
        &v1,
        &v2,
        &hanging,
        "    upstream: v1\n    mirror: { upstream: shadow, percent: 100 }",
    ));
    let mut client = Client::connect(gw.addr()).await;
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(client.get("/products/1").await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "200 requests took {:?}", started.elapsed());
    assert!(hanging.requests() >= 1, "the copies did go out");
    assert!(hanging.requests() <= 64, "at most 64 copies wait at once: {}", hanging.requests());

    // A share: about half.
    let shadow = Upstream::echo("shadow");
    let gw = TestGateway::start(&config(
        &v1,
        &v2,
        &shadow,
        "    upstream: v1\n    mirror: { upstream: shadow, percent: 50 }",
    ));
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..400 {
        client.get("/products/1").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies = shadow.requests();
    assert!((140..=260).contains(&copies), "{copies} of 400 mirrored at 50%");
}

#[test]
fn bad_splits_are_refused() {
    let (v1, v2, shadow) = (Upstream::echo("v1"), Upstream::echo("v2"), Upstream::echo("shadow"));
    for (route, needle) in [
        ("    upstream: v1\n    split: [{ upstream: v2, weight: 1 }]", "not both"),
        ("    split: [{ upstream: nope, weight: 1 }]", "no upstream is named"),
        ("    split: [{ upstream: v1, weight: 0 }, { upstream: v2, weight: 0 }]", "add up to 0"),
        ("    upstream: v1\n    split_on: client_ip", "applies to `split` only"),
        ("    upstream: v1\n    mirror: { upstream: nope }", "no upstream is named"),
        ("    upstream: v1\n    mirror: { upstream: shadow, percent: 150 }", "between 0 and 100"),
    ] {
        let err = match TestGateway::try_start(&config(&v1, &v2, &shadow, route)) {
            Ok(_) => panic!("accepted: {route}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{route}: {err}");
    }
}
