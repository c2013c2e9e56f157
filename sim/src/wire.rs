//! Wire mode: the controller talks to the simulated API server as it does to a real one — the production
//! kube-rs adapter (`dovetail_operator::kubeclient::KubeRs`) over hyper and turmoil's simulated TCP, to
//! fakekube's HTTP front served on the `apiserver` host. Same scenario and seed, same trace, every run.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use dovetail::kube::Kube;
use fakekube::http::ApiServer;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The simulated API server's host name and port.
pub const HOST: &str = "apiserver";
pub const PORT: u16 = 6443;

/// The `apiserver` host: accept connections and serve each with the HTTP front.
pub async fn serve(server: ApiServer) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            // A connection ends when the client drops it; nothing to report.
            let _ = fakekube::http::serve_connection(stream, server).await;
        });
    }
}

/// One simulated TCP connection, as hyper's client reads and writes it.
struct Conn(TokioIo<turmoil::net::TcpStream>);

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

type Connecting = Pin<Box<dyn std::future::Future<Output = io::Result<Conn>> + Send>>;

/// A kube-rs client over turmoil's network to the `apiserver` host, wrapped in the production adapter.
/// Built inside the controller host (kube's request buffer spawns a task on the host's runtime).
pub fn client() -> Result<std::sync::Arc<dyn Kube>, crate::SimError> {
    use kube::client::ConfigExt;
    let connector = tower::service_fn(|uri: hyper::Uri| -> Connecting {
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| format!("{HOST}:{PORT}"));
            let stream = turmoil::net::TcpStream::connect(authority).await?;
            Ok(Conn(TokioIo::new(stream)))
        })
    });
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, kube::client::Body>(connector);
    let url = format!("http://{HOST}:{PORT}")
        .parse()
        .map_err(|e| crate::SimError::Run(format!("wire mode: {e}")))?;
    let config = kube::Config::new(url);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(http);
    let client = kube::Client::new(service, "default");
    Ok(std::sync::Arc::new(dovetail_kubeclient::KubeRs::new(
        client,
    )))
}
