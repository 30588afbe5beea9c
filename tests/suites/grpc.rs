//! gRPC through the gateway: an HTTP/2 upstream (tonic), all four kinds of call, trailers intact,
//! `grpc-timeout` honoured, and the gateway's own errors as gRPC statuses.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;

use crate::common::TestGateway;
use crate::common::grpc_echo::{EchoClient, EchoServer, note};

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
