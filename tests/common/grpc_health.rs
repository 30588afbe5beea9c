//! An in-process gRPC health server (`grpc.health.v1`, tonic-health) on a thread and runtime of
//! its own, whose statuses a test sets.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub struct GrpcHealth {
    pub addr: SocketAddr,
    reporter: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcHealth {
    /// A server on `ip`, port 0; the whole server ("") is SERVING.
    pub fn start(ip: &str) -> GrpcHealth {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind grpc health");
        Self::serve(listener)
    }

    /// Two servers on the same port of two loopback addresses (127.0.0.1 and 127.0.0.2): a
    /// health check's `port` is one for all endpoints, so endpoints on those two addresses are
    /// probed at these two servers.
    pub fn pair() -> (GrpcHealth, GrpcHealth) {
        for _ in 0..20 {
            let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind grpc health");
            let port = first.local_addr().expect("addr").port();
            // Taken on the second address by chance: try another port.
            if let Ok(second) = std::net::TcpListener::bind(("127.0.0.2", port)) {
                return (Self::serve(first), Self::serve(second));
            }
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    }

    fn serve(listener: std::net::TcpListener) -> GrpcHealth {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (reporter, service) = tonic_health::server::health_reporter();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                // Without TCP_NODELAY, Nagle and delayed ACKs can hold a response for 40 ms: as long
                // as the tests' check timeout.
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        GrpcHealth { addr, reporter, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets what a check of `service` ("": the whole server) answers.
    pub async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for GrpcHealth {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
