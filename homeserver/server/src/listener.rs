//! The listeners: plain HTTP on `listen`, and the built-in HTTPS one (`federation.tls_listen`).
//!
//! Every connection is held to `[http]`: its headers within `header_timeout_ms` of its opening
//! or of the previous response (so idle connections, used or not, close too; bodies are timed
//! by the API's middleware), at most `max_connections_per_ip` from one address (more are
//! closed at once) and `max_connections` in all (more wait in the kernel's backlog). TLS
//! handshakes run in the connection's own task, within the same header timeout, so a slow
//! client holds up nobody else.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::ConnectInfo, Router};
use diplomatie_service::config::Http;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How many connections are open, in all and per address.
pub struct Connections {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    exempt: Vec<IpNet>,
    header_timeout: Duration,
}

/// One admitted connection; its places are freed on drop.
struct Admitted {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
    _total: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.connections.per_ip.lock().unwrap();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Connections {
    /// The limits of `[http]`, with `max_connections` kept below the process's file limit
    /// (`files`), leaving room for the database, media files and outbound requests.
    pub fn new(http: &Http, files: u64) -> anyhow::Result<Arc<Connections>> {
        let exempt = http
            .connection_limit_exempt
            .iter()
            .map(|r| {
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("http.connection_limit_exempt: {r:?} is not an address range"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let room = usize::try_from(files.saturating_sub(512)).unwrap_or(usize::MAX).max(64);
        let total = http.max_connections.clamp(1, room);
        if total < http.max_connections {
            tracing::warn!(
                max_connections = http.max_connections,
                open_files = files,
                "http.max_connections lowered to {total}: the process may not open more files"
            );
        }
        Ok(Arc::new(Connections {
            total: Arc::new(Semaphore::new(total)),
            per_ip: Mutex::default(),
            max_per_ip: http.max_connections_per_ip.max(1),
            exempt,
            header_timeout: Duration::from_millis(http.header_timeout_ms.max(1)),
        }))
    }

    /// Admits a connection from `ip`, or refuses it when that address has too many open.
    fn admit(self: &Arc<Self>, ip: IpAddr, total: OwnedSemaphorePermit) -> Option<Admitted> {
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Some(Admitted { connections: self.clone(), ip: None, _total: total });
        }
        let mut per_ip = self.per_ip.lock().unwrap();
        let open = per_ip.entry(ip).or_default();
        if *open >= self.max_per_ip {
            return None;
        }
        *open += 1;
        Some(Admitted { connections: self.clone(), ip: Some(ip), _total: total })
    }
}

/// Raises the soft limit of open files to the hard limit, and answers the limit in force.
pub fn raise_file_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        limit.rlim_cur
    }
}

/// Serves `app` on `listener` (through TLS when `tls` is given) until `stop` turns true; then
/// lets the requests in progress finish, for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    connections: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        // Wait for a place before accepting: past `max_connections`, clients wait in the
        // backlog instead of taking file descriptors.
        let total = tokio::select! {
            permit = connections.total.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to be freed.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(admitted) = connections.admit(peer.ip(), total) else {
            tracing::debug!(%peer, "too many connections from this address: closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, stop, header_timeout) = (app.clone(), tls.clone(), stop.clone(), connections.header_timeout);
        tasks.spawn(async move {
            let _admitted = admitted;
            match tls {
                None => serve_connection(stream, peer, app, header_timeout, stop).await,
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(tls, peer, app, header_timeout, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
}

/// Serves HTTP/1.1 on one connection, with the peer's address given to handlers as axum's
/// `ConnectInfo`.
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            // Finish the request in progress, take no other.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Resolves once `stop` turns true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
