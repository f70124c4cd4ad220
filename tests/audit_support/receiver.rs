//! A loopback HTTP receiver for the HTTP sinks and witnesses: it keeps every request's headers
//! and body, answers 200, and can be stopped (port closed) and started again on its port.

use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Received {
    pub bodies: Vec<(http::HeaderMap, Vec<u8>)>,
}

/// A loopback HTTP receiver that can be stopped (port closed) and started again on its port.
pub struct Receiver {
    pub port: u16,
    pub got: Arc<Mutex<Received>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(&mut self) {
        use http_body_util::BodyExt;
        use hyper::service::service_fn;
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind receiver");
        self.port = l.local_addr().expect("addr").port();
        let got = self.got.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { break };
                let got = got.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let got = got.clone();
                        async move {
                            let headers = req.headers().clone();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            got.lock().expect("lock").bodies.push((headers, body));
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(
                                    b"{\"text\":\"Success\",\"code\":0}",
                                )),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        }));
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
