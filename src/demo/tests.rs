use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// One request on a fresh connection, the way a proxy in front would talk.
async fn call(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned()))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{status} body is not JSON ({err}): {bytes:?}"));
    Reply { status, headers, body }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    call(addr, Method::GET, path, headers, None).await
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    call(addr, Method::POST, path, headers, Some(body)).await
}

const ALICE: &[(&str, &str)] = &[("x-user-id", "alice"), ("x-user-name", "Alice"), ("x-user-roles", "user")];
const ADMIN: &[(&str, &str)] = &[("x-user-id", "admin"), ("x-user-name", "Admin"), ("x-user-roles", "user,admin")];

fn assert_origin(reply: &Reply, service: &str, instance: &str) {
    assert_eq!(reply.body["service"], service, "{}", reply.body);
    assert_eq!(reply.body["instance"], instance, "{}", reply.body);
    let content_type = reply.headers.get("content-type").unwrap();
    assert_eq!(content_type, "application/json");
}

async fn start() -> DemoServices {
    DemoServices::start(LOOPBACK, DemoPorts::EPHEMERAL).await.unwrap()
}

fn all_instances(demo: &DemoServices) -> [(SocketAddr, &'static str, &'static str); 5] {
    [
        (demo.auth, "auth", "auth-1"),
        (demo.users[0], "user", "user-1"),
        (demo.users[1], "user", "user-2"),
        (demo.tasks, "task", "task-1"),
        (demo.appointments, "appointment", "appointment-1"),
    ]
}

fn decode_segment(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).unwrap()
}

#[test]
fn ports_constants() {
    assert_eq!(DemoPorts::DEFAULT, DemoPorts { auth: 9101, users: [9102, 9103], tasks: 9104, appointments: 9105 });
    assert_eq!(DemoPorts::EPHEMERAL.users, [0, 0]);
    assert_eq!(DemoPorts::EPHEMERAL.auth, 0);
}

#[tokio::test]
async fn vars_point_at_the_services() {
    let demo = start().await;
    let vars = demo.vars();
    let var = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(var("DEMO_AUTH_URL"), format!("http://{}", demo.auth));
    assert_eq!(var("DEMO_USER_1_URL"), format!("http://{}", demo.users[0]));
    assert_eq!(var("DEMO_USER_2_URL"), format!("http://{}", demo.users[1]));
    assert_eq!(var("DEMO_TASK_URL"), format!("http://{}", demo.tasks));
    assert_eq!(var("DEMO_APPOINTMENT_URL"), format!("http://{}", demo.appointments));
    assert_eq!(var("DEMO_JWKS_URL"), format!("http://{}/.well-known/jwks.json", demo.auth));
    assert_eq!(vars.len(), 6);
    assert!(var("DEMO_AUTH_URL").starts_with("http://127.0.0.1:"));
    demo.shutdown().await;
}

#[tokio::test]
async fn every_service_has_health_and_json_404() {
    let demo = start().await;
    for (addr, service, instance) in all_instances(&demo) {
        let health = get(addr, "/health", &[]).await;
        assert_eq!(health.status, StatusCode::OK);
        assert_origin(&health, service, instance);
        assert_eq!(health.body["status"], "ok");

        let missing = get(addr, "/no/such/path", ALICE).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_origin(&missing, service, instance);
        assert_eq!(missing.body["error"], "not_found");

        let wrong_method = call(addr, Method::PUT, "/health", &[], None).await;
        assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_origin(&wrong_method, service, instance);
    }
    demo.shutdown().await;
}

#[tokio::test]
async fn a_port_in_use_is_reported_with_its_service() {
    let demo = start().await;
    let ports = DemoPorts { tasks: demo.tasks.port(), ..DemoPorts::EPHEMERAL };
    let err = DemoServices::start(LOOPBACK, ports).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("demo task service"), "{err}");
    demo.shutdown().await;
}

#[tokio::test]
async fn login_issues_rs256_token_verifiable_with_the_jwks() {
    let demo = start().await;

    let jwks = get(demo.auth, "/.well-known/jwks.json", &[]).await;
    assert_eq!(jwks.status, StatusCode::OK);
    // A JWKS stays a plain JWKS: no service/instance stamp.
    assert_eq!(jwks.body.as_object().unwrap().len(), 1, "{}", jwks.body);
    let keys = jwks.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["kid"], KEY_ID);
    let n = decode_segment(jwk["n"].as_str().unwrap());
    let e = decode_segment(jwk["e"].as_str().unwrap());
    assert_eq!(n.len(), 256, "2048-bit modulus");
    assert_ne!(n[0], 0, "no leading zero in n");
    assert_eq!(e, [1, 0, 1]);

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let login = post(demo.auth, "/login", &[], r#"{"username":"admin","password":"admin-pw"}"#).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_origin(&login, "auth", "auth-1");
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 3600);

    let token = login.body["access_token"].as_str().unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&decode_segment(parts[0])).unwrap();
    assert_eq!(header, json!({ "alg": "RS256", "typ": "JWT", "kid": "demo-2026" }));

    let public_key = RsaPublicKeyComponents { n: &n, e: &e };
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let signature = decode_segment(parts[2]);
    public_key.verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature).unwrap();

    let mut tampered = signed.as_bytes().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(public_key.verify(&RSA_PKCS1_2048_8192_SHA256, &tampered, &signature).is_err());

    let claims: Value = serde_json::from_slice(&decode_segment(parts[1])).unwrap();
    assert_eq!(claims["sub"], "admin");
    assert_eq!(claims["name"], "Admin");
    assert_eq!(claims["roles"], json!(["user", "admin"]));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(ISSUER, "gatehouse-demo-auth");
    assert_eq!(AUDIENCE, "gatehouse-demo");
    let iat = claims["iat"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(iat >= before && iat <= before + 60, "iat {iat}");
    assert_eq!(exp, iat + 3600);

    demo.shutdown().await;
}

#[tokio::test]
async fn token_signature_verifies_with_unparsed_public_key() {
    let demo = start().await;
    let jwks = get(demo.auth, "/.well-known/jwks.json", &[]).await;
    let jwk = &jwks.body["keys"][0];
    let components = RsaPublicKeyComponents {
        n: decode_segment(jwk["n"].as_str().unwrap()),
        e: decode_segment(jwk["e"].as_str().unwrap()),
    };
    let login = post(demo.auth, "/login", &[], r#"{"username":"alice","password":"alice-pw"}"#).await;
    assert_eq!(login.status, StatusCode::OK);
    let token = login.body["access_token"].as_str().unwrap();
    let (signed, signature) = token.rsplit_once('.').unwrap();

    // The public key as DER RSAPublicKey, the form UnparsedPublicKey takes.
    let der = rsa_public_key_der(&components.n, &components.e);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
        .verify(signed.as_bytes(), &decode_segment(signature))
        .unwrap();

    let claims: Value = serde_json::from_slice(&decode_segment(signed.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["name"], "Alice");
    assert_eq!(claims["roles"], json!(["user"]));
    demo.shutdown().await;
}

/// DER for `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn length(len: usize, out: &mut Vec<u8>) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn integer(value: &[u8], out: &mut Vec<u8>) {
        let pad = value[0] & 0x80 != 0;
        out.push(0x02);
        length(value.len() + usize::from(pad), out);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
    }
    let mut body = Vec::new();
    integer(n, &mut body);
    integer(e, &mut body);
    let mut der = vec![0x30];
    length(body.len(), &mut der);
    der.extend(body);
    der
}

#[tokio::test]
async fn login_rejects_bad_credentials_and_bad_requests() {
    let demo = start().await;
    for body in [
        r#"{"username":"alice","password":"wrong"}"#,
        r#"{"username":"alice","password":"admin-pw"}"#,
        r#"{"username":"mallory","password":"alice-pw"}"#,
    ] {
        let reply = post(demo.auth, "/login", &[], body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{body}");
        assert_origin(&reply, "auth", "auth-1");
        assert_eq!(reply.body["error"], "invalid_credentials");
        assert!(reply.body.get("access_token").is_none());
    }
    for body in [
        "",
        "not json",
        r#"{"username":"alice"}"#,
        r#"{"password":"alice-pw"}"#,
        r#"{"username":1,"password":"alice-pw"}"#,
        "[]",
    ] {
        let reply = post(demo.auth, "/login", &[], body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_origin(&reply, "auth", "auth-1");
        assert_eq!(reply.body["error"], "invalid_request");
    }
    let wrong_method = get(demo.auth, "/login", &[]).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    demo.shutdown().await;
}

#[tokio::test]
async fn users_answer_on_both_instances() {
    let demo = start().await;
    let expected = json!([
        { "id": "alice", "name": "Alice" },
        { "id": "admin", "name": "Admin" },
    ]);
    for (addr, instance) in [(demo.users[0], "user-1"), (demo.users[1], "user-2")] {
        let list = get(addr, "/users", &[]).await;
        assert_eq!(list.status, StatusCode::OK);
        assert_origin(&list, "user", instance);
        assert_eq!(list.body["users"], expected);

        let alice = get(addr, "/users/alice", &[]).await;
        assert_eq!(alice.status, StatusCode::OK);
        assert_origin(&alice, "user", instance);
        assert_eq!(alice.body["user"], json!({ "id": "alice", "name": "Alice" }));

        let nobody = get(addr, "/users/nobody", &[]).await;
        assert_eq!(nobody.status, StatusCode::NOT_FOUND);
        assert_origin(&nobody, "user", instance);
        assert_eq!(nobody.body["error"], "not_found");
    }
    demo.shutdown().await;
}

#[tokio::test]
async fn users_me_reflects_gateway_identity() {
    let demo = start().await;
    let me = get(demo.users[1], "/users/me", ADMIN).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_origin(&me, "user", "user-2");
    assert_eq!(me.body["user"], json!({ "id": "admin", "name": "Admin", "roles": ["user", "admin"] }));

    let spaced = get(demo.users[0], "/users/me", &[("x-user-id", "alice"), ("x-user-roles", " user , ,extra ")]).await;
    assert_eq!(spaced.status, StatusCode::OK);
    assert_eq!(spaced.body["user"], json!({ "id": "alice", "name": "alice", "roles": ["user", "extra"] }));

    for headers in [&[][..], &[("x-user-name", "Alice")][..], &[("x-user-id", " ")][..]] {
        let anonymous = get(demo.users[0], "/users/me", headers).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert_origin(&anonymous, "user", "user-1");
        assert_eq!(anonymous.body["error"], "unauthenticated");
        assert_eq!(anonymous.body["message"], "no identity from the gateway (X-User-Id missing)");
    }
    demo.shutdown().await;
}

#[tokio::test]
async fn tasks_are_per_user() {
    let demo = start().await;
    let empty = get(demo.tasks, "/tasks", ALICE).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_origin(&empty, "task", "task-1");
    assert_eq!(empty.body["tasks"], json!([]));

    let first = post(demo.tasks, "/tasks", ALICE, r#"{"title":"Buy milk"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_origin(&first, "task", "task-1");
    assert_eq!(first.body["task"], json!({ "id": "1", "title": "Buy milk", "done": false, "owner": "alice" }));
    let second = post(demo.tasks, "/tasks", ALICE, r#"{"title":"Walk dog"}"#).await;
    assert_eq!(second.body["task"]["id"], "2");
    let admins = post(demo.tasks, "/tasks", ADMIN, r#"{"title":"Audit"}"#).await;
    assert_eq!(admins.status, StatusCode::CREATED);
    assert_eq!(admins.body["task"]["id"], "3");
    assert_eq!(admins.body["task"]["owner"], "admin");

    let alice = get(demo.tasks, "/tasks", ALICE).await;
    let titles: Vec<&str> =
        alice.body["tasks"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Buy milk", "Walk dog"]);

    let admin = get(demo.tasks, "/tasks", ADMIN).await;
    assert_eq!(admin.body["tasks"], json!([{ "id": "3", "title": "Audit", "done": false, "owner": "admin" }]));
    demo.shutdown().await;
}

#[tokio::test]
async fn tasks_validate_input_and_identity() {
    let demo = start().await;
    let anonymous = get(demo.tasks, "/tasks", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_origin(&anonymous, "task", "task-1");
    assert_eq!(anonymous.body["error"], "unauthenticated");
    let anonymous = post(demo.tasks, "/tasks", &[], r#"{"title":"x"}"#).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    for (body, error) in [
        ("{", "invalid_request"),
        (r#"{"title":7}"#, "invalid_request"),
        ("{}", "invalid_title"),
        (r#"{"title":""}"#, "invalid_title"),
        (r#"{"title":"   "}"#, "invalid_title"),
    ] {
        let reply = post(demo.tasks, "/tasks", ALICE, body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_origin(&reply, "task", "task-1");
        assert_eq!(reply.body["error"], error, "{body}");
    }

    let longest = "é".repeat(MAX_TITLE_CHARS);
    let ok = post(demo.tasks, "/tasks", ALICE, &json!({ "title": longest }).to_string()).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let too_long = "x".repeat(MAX_TITLE_CHARS + 1);
    let rejected = post(demo.tasks, "/tasks", ALICE, &json!({ "title": too_long }).to_string()).await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
    assert_eq!(rejected.body["error"], "invalid_title");

    let listed = get(demo.tasks, "/tasks", ALICE).await;
    assert_eq!(listed.body["tasks"].as_array().unwrap().len(), 1);
    demo.shutdown().await;
}

#[tokio::test]
async fn tasks_cap_per_user() {
    let demo = start().await;
    let bob: &[(&str, &str)] = &[("x-user-id", "bob")];
    for i in 0..MAX_TASKS_PER_USER {
        let reply = post(demo.tasks, "/tasks", bob, r#"{"title":"t"}"#).await;
        assert_eq!(reply.status, StatusCode::CREATED, "task {i}");
    }
    let over = post(demo.tasks, "/tasks", bob, r#"{"title":"t"}"#).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.body["error"], "too_many_tasks");
    // Other users are unaffected.
    let alice = post(demo.tasks, "/tasks", ALICE, r#"{"title":"t"}"#).await;
    assert_eq!(alice.status, StatusCode::CREATED);
    demo.shutdown().await;
}

#[tokio::test]
async fn appointments_visibility() {
    let demo = start().await;
    let alice = get(demo.appointments, "/appointments", ALICE).await;
    assert_eq!(alice.status, StatusCode::OK);
    assert_origin(&alice, "appointment", "appointment-1");
    let list = alice.body["appointments"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for appointment in list {
        assert_eq!(appointment["owner"], "alice");
        assert!(appointment["title"].is_string());
        assert!(appointment["time"].as_str().unwrap().ends_with('Z'));
    }

    let admin = get(demo.appointments, "/appointments", ADMIN).await;
    let ids: Vec<&str> =
        admin.body["appointments"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3"]);

    let anonymous = get(demo.appointments, "/appointments", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_origin(&anonymous, "appointment", "appointment-1");
    assert_eq!(anonymous.body["error"], "unauthenticated");
    demo.shutdown().await;
}

#[tokio::test]
async fn deleting_appointments_needs_admin() {
    let demo = start().await;
    let delete = |headers: &'static [(&'static str, &'static str)], id: &'static str| {
        let addr = demo.appointments;
        async move { call(addr, Method::DELETE, &format!("/appointments/{id}"), headers, None).await }
    };

    let forbidden = delete(ALICE, "1").await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_origin(&forbidden, "appointment", "appointment-1");
    assert_eq!(forbidden.body["error"], "forbidden");

    let anonymous = delete(&[], "1").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let deleted = delete(ADMIN, "1").await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_origin(&deleted, "appointment", "appointment-1");
    assert_eq!(deleted.body["deleted"], "1");

    let again = delete(ADMIN, "1").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.body["error"], "not_found");
    let unknown = delete(ADMIN, "99").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let alice = get(demo.appointments, "/appointments", ALICE).await;
    assert_eq!(alice.body["appointments"].as_array().unwrap().len(), 1);
    demo.shutdown().await;
}

#[tokio::test]
async fn dropping_stops_the_services() {
    let demo = start().await;
    let addr = demo.users[0];
    assert_eq!(get(addr, "/health", &[]).await.status, StatusCode::OK);
    drop(demo);
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting connections after drop");
}

#[tokio::test]
async fn shutdown_releases_the_ports() {
    let demo = start().await;
    let ports = DemoPorts {
        auth: demo.auth.port(),
        users: [demo.users[0].port(), demo.users[1].port()],
        tasks: demo.tasks.port(),
        appointments: demo.appointments.port(),
    };
    demo.shutdown().await;
    let again = DemoServices::start(LOOPBACK, ports).await.unwrap();
    assert_eq!(again.auth.port(), ports.auth);
    again.shutdown().await;
}
