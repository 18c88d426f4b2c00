//! What every localml process does the same way: logs to stderr filtered by `RUST_LOG`,
//! listeners whose bind errors name what they were for, and a graceful stop on Ctrl-C or
//! SIGTERM.

use tokio::net::TcpListener;

/// Logs to stderr; `RUST_LOG` filters (default: info, and only warnings from ONNX
/// Runtime's own log, which is chatty at info).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Binds `address`; the error names `what` the listener is for and the address.
pub async fn bind(address: &str, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for {what} on {address}: {e}"),
        )
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // No SIGTERM handler can be installed: Ctrl-C still works.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
