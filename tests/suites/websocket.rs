//! WebSocket through the gateway: the HTTP/1.1 Upgrade handshake routed and checked by policies
//! like any request, then frames relayed both ways until either side closes or the tunnel idles.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::common::TestGateway;

/// A WebSocket echo server; keeps the handshake headers it saw.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    // tungstenite's callback type: its error is an HTTP response.
                    #[allow(clippy::result_large_err)]
                    let callback = |request: &Request, response: Response| {
                        kept.lock().unwrap().push(request.headers().clone());
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
                    while let Some(Ok(message)) = ws.next().await {
                        let echoed = matches!(message, Message::Text(_) | Message::Binary(_));
                        if matches!(message, Message::Close(_)) || (echoed && ws.send(message).await.is_err()) {
                            return;
                        }
                    }
                });
            }
        });
        Echo { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn gateway(echo: &Echo, extra_route: &str, server: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"server: {{ workers: 1{server} }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers: [{{ name: app, credentials: [{{ api_key: "websocket-key-0123456789" }}] }}]
upstreams: {{ echo: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: live, match: {{ path: "/live/**" }}, upstream: echo, websocket: true }}
  - {{ name: plain, match: {{ path: "/plain/**" }}, upstream: echo }}
{extra_route}"#,
        echo.url()
    ))
}

#[tokio::test]
async fn frames_pass_both_ways_on_a_route_that_allows_websocket() {
    let echo = Echo::start().await;
    let gw = gateway(&echo, "", "");
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/live/chat?room=1", gw.addr())).await.unwrap();
    assert_eq!(response.status(), 101);
    assert!(response.headers().get("sec-websocket-accept").is_some());
    for message in [Message::text("hello"), Message::binary(vec![0u8, 1, 2, 255]), Message::text("é".repeat(70_000))] {
        ws.send(message.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(back, message);
    }
    // Pings are answered (by the upstream, through the tunnel).
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"p".to_vec().into()));
    ws.close(None).await.unwrap();

    let seen = echo.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen["upgrade"], "websocket");
    assert!(seen["connection"].to_str().unwrap().to_ascii_lowercase().contains("upgrade"));
    assert!(seen.get("x-forwarded-for").is_some(), "the handshake is forwarded like any request");
    assert!(seen.get("x-request-id").is_some());

    // Several tunnels at once, each its own.
    let mut sockets = Vec::new();
    for i in 0..10 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/live/{i}", gw.addr())).await.unwrap();
        ws.send(Message::text(format!("n{i}"))).await.unwrap();
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("n{i}")));
    }
}

#[tokio::test]
async fn policies_apply_to_the_handshake_and_other_routes_refuse_the_upgrade() {
    let echo = Echo::start().await;
    let gw = gateway(
        &echo,
        "  - { name: keyed, match: { path: \"/keyed/**\" }, upstream: echo, websocket: true, policies: [{ api_key: {} }] }\n",
        "",
    );
    let url = format!("ws://{}/keyed/x", gw.addr());
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("a handshake without the key was let through: {other:?}"),
    }
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("x-api-key", "websocket-key-0123456789".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::text("with key")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("with key"));
    assert_eq!(echo.seen.lock().unwrap().last().unwrap()["x-consumer-name"], "app");

    // A route that does not allow WebSocket: a clean 400, and the upstream never sees it.
    let before = echo.seen.lock().unwrap().len();
    match tokio_tungstenite::connect_async(format!("ws://{}/plain/x", gw.addr())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("upgrade_not_allowed"), "{body}");
        }
        other => panic!("the upgrade was not refused: {other:?}"),
    }
    assert_eq!(echo.seen.lock().unwrap().len(), before);
}

#[tokio::test]
async fn an_upstream_that_declines_the_upgrade_is_answered_as_it_answered() {
    // An HTTP server, not a WebSocket one: it answers the handshake with 200.
    let app = crate::common::Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: live, upstream: app, websocket: true }}]
"#,
        app.url()
    ));
    match tokio_tungstenite::connect_async(format!("ws://{}/x", gw.addr())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 200),
        other => panic!("{other:?}"),
    }
    // The connection that carried the declined handshake goes on as an ordinary HTTP one.
    let mut conn = crate::common::RawConn::connect(gw.addr()).await;
    conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    assert_eq!(conn.read_response(Duration::from_secs(5)).await.expect("the declined handshake's answer").status, 200);
    conn.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let second = conn.read_response(Duration::from_secs(5)).await.expect("a second request on the same connection");
    assert_eq!(second.status, 200);
    assert!(second.text().contains("/y"), "{}", second.text());
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let echo = Echo::start().await;
    let gw = gateway(&echo, "", ", timeouts: { websocket_idle: 300ms }");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/live/idle", gw.addr())).await.unwrap();
    // Traffic keeps it open past the idle time…
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still here"));
    }
    // …silence closes it: after the idle time, within a check step (a quarter of it) and slack.
    let quiet = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(3), ws.next()).await.expect("closed within the idle time");
    assert!(matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))), "{end:?}");
    let after = quiet.elapsed();
    assert!(after >= Duration::from_millis(250), "closed before the idle time: {after:?}");
    assert!(after < Duration::from_millis(900), "closed long after the idle time: {after:?}");
}
