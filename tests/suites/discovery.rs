//! Service discovery against a real DNS server (dnsmasq) and a watched file: endpoints come and
//! go without a reload, and a failed look keeps the endpoints found before.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::dns::Dnsmasq;
use crate::common::{Client, TestGateway, Upstream, UpstreamBehaviour};

fn config(dns: &Dnsmasq, upstream: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
resolver: {{ nameservers: ["{}"], timeout: 500ms }}
upstreams:
  app:
{upstream}
routes:
  - {{ name: all, match: {{ path: "/**" }}, upstream: app }}
"#,
        dns.addr
    )
}

/// How many of `n` requests each endpoint served (by the name the echo upstream answers with);
/// failed requests count under their status.
async fn spread(client: &mut Client, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = client.request("GET", "/x", &[], "").await;
        let key = if reply.status == 200 {
            reply.json()["instance"].as_str().unwrap_or_default().to_owned()
        } else {
            reply.status.to_string()
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Polls until `n` requests are spread over exactly the endpoints named `want` (10 s at most).
async fn until_served_by(client: &mut Client, want: &[&str], n: usize) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = spread(client, n).await;
        let mut names: Vec<&str> = counts.keys().map(String::as_str).collect();
        names.sort();
        if names == want {
            return counts;
        }
        assert!(Instant::now() < deadline, "still served by {counts:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dns_discovery_follows_the_addresses_of_a_name_and_keeps_them_when_dns_fails() {
    let a = Upstream::start_at("a", UpstreamBehaviour::Echo, "127.0.0.2:0");
    let port = a.addr.port();
    let b = Upstream::start_at("b", UpstreamBehaviour::Echo, &format!("127.0.0.3:{port}"));
    let mut dns = Dnsmasq::start("127.0.0.2 svc.test\n", &[]);
    let settings = format!("    discovery: {{ type: dns, name: svc.test, port: {port} }}");
    let gw = TestGateway::start(&config(&dns, &settings));
    let mut client = Client::connect(gw.addr()).await;
    // The config waited for the first answer: the first request already has its endpoint.
    assert_eq!(spread(&mut client, 10).await, HashMap::from([("a".to_owned(), 10)]));
    // The upstream is told the DNS name, not the address.
    assert_eq!(a.seen().last().unwrap().headers["host"], format!("svc.test:{port}").as_str());

    dns.set_hosts("127.0.0.2 svc.test\n127.0.0.3 svc.test\n");
    until_served_by(&mut client, &["a", "b"], 40).await;
    // That window may have begun before the change; the next one is all after it.
    let both = spread(&mut client, 40).await;
    assert_eq!(both.get("a"), Some(&20), "round-robin over both: {both:?}");

    dns.set_hosts("127.0.0.3 svc.test\n");
    until_served_by(&mut client, &["b"], 20).await;

    // The name server dies: its last answer stays in use, long after its TTL of 1s.
    dns.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(spread(&mut client, 10).await, HashMap::from([("b".to_owned(), 10)]));
    drop(b);
}

#[tokio::test]
async fn srv_discovery_uses_ports_and_weights_of_the_best_priority() {
    let (a, b, c) = (Upstream::echo("a"), Upstream::echo("b"), Upstream::echo("c"));
    let hosts = "127.0.0.1 a.svc.test\n127.0.0.1 b.svc.test\n127.0.0.1 c.svc.test\n";
    let name = "_http._tcp.svc.test";
    let (pa, pb, pc) = (a.addr.port(), b.addr.port(), c.addr.port());
    let mut dns = Dnsmasq::start(
        hosts,
        &[(name, "a.svc.test", pa, 10, 1), (name, "b.svc.test", pb, 10, 3), (name, "c.svc.test", pc, 20, 1)],
    );
    let gw = TestGateway::start(&config(&dns, &format!("    discovery: {{ type: srv, name: \"{name}\" }}")));
    let mut client = Client::connect(gw.addr()).await;
    // Smooth weighted round-robin: exactly 1:3 over whole rounds; c is a backup (priority 20).
    let counts = spread(&mut client, 400).await;
    assert_eq!(counts, HashMap::from([("a".to_owned(), 100), ("b".to_owned(), 300)]));
    assert_eq!(b.seen().last().unwrap().headers["host"], format!("b.svc.test:{pb}").as_str());

    // The priority-10 records go away: the backup takes over.
    dns.restart_with_srv(&[(name, "c.svc.test", pc, 20, 1)]);
    until_served_by(&mut client, &["c"], 20).await;
}

#[tokio::test]
async fn file_discovery_follows_the_file_and_ignores_a_broken_one() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let dns = Dnsmasq::start("", &[]);
    let settings = format!("    discovery: {{ type: file, path: \"{}\", interval: 100ms }}", file.display());
    // No file yet: the upstream has no endpoints, and says so.
    let gw = TestGateway::start(&format!("admin: {{ address: \"127.0.0.1:0\" }}\n{}", config(&dns, &settings)));
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.request("GET", "/x", &[], "").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("no_endpoint"), "{}", reply.text());

    std::fs::write(&file, format!("- {}\n", a.url())).unwrap();
    until_served_by(&mut client, &["a"], 10).await;
    std::fs::write(&file, format!("- {}\n- {{ url: \"{}\", weight: 1 }}\n", a.url(), b.url())).unwrap();
    until_served_by(&mut client, &["a", "b"], 20).await;

    // Broken in several ways: each keeps the endpoints read before.
    for broken in ["- [unterminated\n", "- ftp://nowhere\n", "- { url: http://x:1, weight: 0 }\n", "[]\n", "\u{0}\u{1}"]
    {
        std::fs::write(&file, broken).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let counts = spread(&mut client, 20).await;
        assert_eq!(counts, HashMap::from([("a".to_owned(), 10), ("b".to_owned(), 10)]), "after {broken:?}");
    }
    // The admin API shows where the endpoints come from and why the last look failed.
    let state = crate::common::get(gw.gateway.admin_addr().unwrap(), "/upstreams").await.json();
    let discovery = &state["upstreams"][0]["discovery"];
    assert_eq!(discovery["source"], format!("file {}", file.display()).as_str());
    assert_eq!(discovery["endpoints"], 2);
    assert!(discovery["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{state}");
    assert_eq!(state["upstreams"][0]["endpoints"].as_array().unwrap().len(), 2);

    std::fs::write(&file, format!("- {}\n", b.url())).unwrap();
    until_served_by(&mut client, &["b"], 10).await;
}

#[tokio::test]
async fn slow_start_gives_a_new_endpoint_a_growing_share() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, format!("- {}\n", a.url())).unwrap();
    let dns = Dnsmasq::start("", &[]);
    let settings = format!(
        "    discovery: {{ type: file, path: \"{}\", interval: 100ms }}\n    slow_start: 4s\n    balance: random",
        file.display()
    );
    let gw = TestGateway::start(&config(&dns, &settings));
    let mut client = Client::connect(gw.addr()).await;
    // a has been up for 4s when b arrives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::write(&file, format!("- {}\n- {}\n", a.url(), b.url())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.requests() == 0 {
        assert!(Instant::now() < deadline, "b never got traffic");
        client.request("GET", "/x", &[], "").await;
    }
    // Just added, b's share is about a tenth of a's (0.1/1.1 ≈ 9%, not the 50% of equal weights).
    let early = spread(&mut client, 400).await;
    let share = *early.get("b").unwrap_or(&0) as f64 / 400.0;
    assert!(share < 0.25, "b got {share} of the traffic right after it was added: {early:?}");
    // After its slow start, an equal share.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late = spread(&mut client, 400).await;
    let share = *late.get("b").unwrap_or(&0) as f64 / 400.0;
    assert!((0.38..=0.62).contains(&share), "b got {share} after its slow start: {late:?}");
}
