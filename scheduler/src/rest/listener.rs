//! The REST listener: plain TCP on loopback, TLS with the client port's certificate
//! elsewhere. TLS handshakes run in their own tasks (with a timeout), so a slow or silent
//! client never holds up the next connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A connection, plain or TLS.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// The caller's address (axum's connect info for [`RestListener`]).
#[derive(Debug, Clone, Copy)]
pub struct Remote(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, RestListener>>
    for Remote
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, RestListener>) -> Remote {
        Remote(*stream.remote_addr())
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections (and handshakes) at once; the next waits in the kernel's backlog until
/// one closes, so a flood of idle connections cannot exhaust memory or descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection holding its place among [`MAX_CONNECTIONS`] until it closes.
pub struct Limited {
    io: Box<dyn Connection>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepted connections, ready for HTTP.
pub struct RestListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Limited, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for RestListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl RestListener {
    /// Serves `listener`, with TLS when `tls` is given.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> std::io::Result<RestListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel::<(Limited, SocketAddr)>(64);
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let acceptor = tokio::spawn(async move {
            let tls = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    return;
                };
                let (stream, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!("REST listener: cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Some(tls) = tls.clone() else {
                    let io = Limited {
                        io: Box::new(stream),
                        _permit: permit,
                    };
                    if tx.send((io, remote)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = Limited {
                                io: Box::new(stream),
                                _permit: permit,
                            };
                            let _ = tx.send((io, remote)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, "REST TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!(%remote, "REST TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(RestListener {
            local,
            ready,
            acceptor,
        })
    }
}

impl axum::serve::Listener for RestListener {
    type Io = Limited;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// TLS for the REST listener from a PEM certificate chain and key.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate is not valid PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the TLS key is not valid PEM: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
