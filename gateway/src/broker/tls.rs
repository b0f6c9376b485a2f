//! TLS termination for the broker's TLS listeners.
//!
//! rumqttd can serve TLS itself, but it runs each handshake inside its accept
//! loop without a deadline (one client that stalls mid-handshake stops the
//! listener from accepting anyone else) and rereads the certificate files on
//! every connection. So perch terminates TLS itself: it accepts on the
//! listener's address, completes each handshake in its own task within
//! `tls_handshake_timeout_ms`, and pipes the plain stream to a rumqttd
//! listener on a loopback port that has the same login policy. The loopback
//! port needs the same logins as the public one, so it opens nothing new.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::TlsConfig;

/// Loads the certificate chain and key into a server config. The error says
/// which file is wrong and how.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
    };
    let cert = read(&tls.cert_path, "certificate file")?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{} is not a PEM certificate file: {e}",
                tls.cert_path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            tls.cert_path.display()
        ));
    }
    let key = read(&tls.key_path, "key file")?;
    let key = match rustls_pemfile::private_key(&mut key.as_slice()) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Err(format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                tls.key_path.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{} is not a PEM key file: {e}",
                tls.key_path.display()
            ))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate and key: {e}",
                tls.cert_path.display(),
                tls.key_path.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// Accepts TLS clients on `listener` and pipes each, once its handshake is
/// done, to the plain listener at `inner`.
pub fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    inner: SocketAddr,
    handshake_timeout: Duration,
) -> JoinHandle<()> {
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "tls listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Small MQTT packets must not wait for Nagle (see
            // `no_delay_for_accepted`).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake did not finish in time");
                            return;
                        }
                    };
                let Ok(mut plain) = TcpStream::connect(inner).await else {
                    tracing::warn!(%inner, "tls listener: the broker's inner listener is gone");
                    return;
                };
                let _ = plain.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    })
}
