//! gRPC through the gateway: an HTTP/2 upstream (tonic), all four kinds of call, trailers intact,
//! `grpc-timeout` honoured, and the gateway's own errors as gRPC statuses.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;

use crate::common::TestGateway;
use crate::common::grpc_echo::{EchoClient, EchoServer, decode_text, frame, frames, note};

fn gateway(echo: &EchoServer) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers: [{{ name: app, credentials: [{{ api_key: "grpc-key-0123456789abc" }}] }}]
upstreams: {{ echo: {{ endpoints: ["http://{}"], protocol: http2 }} }}
routes:
  - {{ name: echo, match: {{ path: "/test.Echo/**" }}, upstream: echo }}
  - {{ name: keyed, match: {{ path: "/keyed.Echo/**" }}, upstream: echo, policies: [{{ api_key: {{}} }}] }}
"#,
        echo.addr
    ))
}

#[tokio::test]
async fn all_four_kinds_of_call_pass_with_their_trailers() {
    let echo = EchoServer::start();
    let gw = gateway(&echo);
    let mut client = EchoClient::connect(gw.addr()).await;

    let response = client.unary(tonic::Request::new(note("hello"))).await.unwrap();
    assert_eq!(response.get_ref().text, "echo: hello");
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "tonic");
    assert_eq!(response.metadata().get("x-seen-te").unwrap(), "trailers", "TE: trailers reaches the service");

    let mut stream = client.server_stream(5).await.unwrap();
    let mut parts = Vec::new();
    while let Some(item) = stream.next().await {
        parts.push(item.unwrap().text);
    }
    assert_eq!(parts, ["part 0", "part 1", "part 2", "part 3", "part 4"]);
    // The stream ended with the service's OK in its trailers.
    assert!(stream.trailers().await.unwrap().is_some_and(|t| t.get("grpc-status").is_some_and(|s| s == "0")));

    let joined = client.client_stream(&["a", "b", "c"]).await.unwrap();
    assert_eq!(joined.text, "a+b+c");

    // Interactive: each answer comes back before the next message is sent.
    let (tx, mut answers) = client.bidi().await.unwrap();
    for word in ["one", "two", "three"] {
        tx.send(note(word)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(answer.text, format!("re: {word}"));
    }
    drop(tx);
    assert!(answers.next().await.is_none());

    // The service's own error status and message pass untouched (trailers-only response).
    let status = client.unary(tonic::Request::new(note("fail"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such note: fail");

    // Many calls at once share the gateway's one connection to the service.
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut client = EchoClient::connect(gw.addr()).await;
        calls.push(tokio::spawn(async move { client.unary(tonic::Request::new(note(&i.to_string()))).await }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap().get_ref().text, format!("echo: {i}"));
    }
    assert_eq!(echo.connections(), 1, "every call of this test went over one upstream connection");
}

#[tokio::test]
async fn the_gateways_own_errors_are_grpc_statuses_and_grpc_timeout_is_a_deadline() {
    let echo = EchoServer::start();
    let gw = gateway(&echo);
    let mut client = EchoClient::connect(gw.addr()).await;

    // grpc-timeout: the gateway gives up at the client's deadline.
    let mut request = tonic::Request::new(note("slow"));
    request.set_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let status = client.unary(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("route_timeout"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "the service's 3 s were not waited for");

    // No route for the method: UNIMPLEMENTED, as a gRPC status (HTTP 200), not a JSON 404.
    let status = client.call_unknown().await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "/test.Echo/Nothing", "the service itself answered that one");

    // An authentication failure at the gateway: UNAUTHENTICATED with the gateway's message.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, code, words) in
        [("/keyed.Echo/Unary", "16", "unauthorized"), ("/nowhere.Svc/Call", "12", "route_not_found")]
    {
        let request = http::Request::post(format!("http://gw{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], code, "{path}");
        let message = response.headers()["grpc-message"].to_str().unwrap().to_owned();
        assert!(message.contains(words), "{path}: {message}");
    }
}

/// A gRPC-Web frame: flag, length, payload.
#[tokio::test]
async fn grpc_web_calls_from_browsers_are_translated_both_ways() {
    use base64::Engine;
    use prost::Message;
    let echo = EchoServer::start();
    let gw = gateway(&echo);
    let mut client = crate::common::Client::connect(gw.addr()).await;
    let b64 = base64::engine::general_purpose::STANDARD;

    // Binary gRPC-Web, over HTTP/1.1 as a browser sends it.
    let body = frame(0, &note("web").encode_to_vec());
    let request = http::Request::post("/test.Echo/Unary")
        .header("host", "gw")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/grpc-web+proto"));
    let (messages, trailers) = frames(&reply.body);
    assert_eq!(messages, ["echo: web"]);
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");

    // Text mode: base64 both ways (the request in two padded pieces), a server stream.
    let bytes = frame(0, &note("3").encode_to_vec());
    let first = b64.encode(&bytes[..2]) + &b64.encode(&bytes[2..]);
    assert!(first[..4].ends_with('='), "the first piece is padded: {first}");
    let request = http::Request::post("/test.Echo/ServerStream")
        .header("host", "gw")
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(http_body_util::Full::new(bytes::Bytes::from(first)))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/grpc-web-text"));
    // Each frame is padded base64 of its own: decode piece by piece.
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let (decoded, pieces) = decode_text(&text);
    let (messages, trailers) = frames(&decoded);
    assert_eq!(messages, ["part 0", "part 1", "part 2"]);
    assert_eq!(pieces, 4, "three messages and the trailers, each encoded as it came: {text}");
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");

    // The service's error reaches the browser as a status; malformed base64 is refused by the gateway.
    let request = http::Request::post("/test.Echo/Unary")
        .header("host", "gw")
        .header("content-type", "application/grpc-web-text")
        .body(http_body_util::Full::new(bytes::Bytes::from(b64.encode(frame(0, &note("fail").encode_to_vec())))))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.header("grpc-status"), Some("5"), "trailers-only: the status is in the head");
    let request = http::Request::post("/test.Echo/Unary")
        .header("host", "gw")
        .header("content-type", "application/grpc-web-text")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"not base64!")))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("grpc-status"), Some("3"));
}
