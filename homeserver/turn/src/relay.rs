//! The built-in TURN relay.
//!
//! The `turn` crate serves the protocol. Around its socket sits [`Guard`], which reads the few
//! requests that decide where traffic may go before the crate sees them: a `CreatePermission`
//! or `ChannelBind` towards a peer the policy forbids is answered 403 and never reaches the
//! crate (so no permission exists, and nothing is relayed to or from that peer), a `Send`
//! indication towards one is dropped, and an `Allocate` from a user who holds
//! `max_allocations_per_user` already is answered 486. Relayed data (channel data, the bulk of
//! a call) passes through untouched.
//!
//! Clients reach it over UDP and, on the same port, over TCP (`tcp.rs`: each connection a
//! `turn` server of its own, behind its own `Guard` and the same counts).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use ipnet::IpNet;
use stun::{
    attributes::{ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS},
    error_code::{ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN},
    message::{
        Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE,
        METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_SEND,
    },
    textattrs::Username,
};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};
use turn::{
    allocation::AllocationInfo,
    auth::{generate_auth_key, AuthHandler},
    proto::peeraddr::PeerAddress,
    relay::relay_range::RelayAddressGeneratorRanges,
    server::{
        config::{ConnConfig, ServerConfig},
        Server,
    },
};
use webrtc_util::{vnet::net::Net, Conn};

use crate::credentials;

/// TCP connections served at once; more wait to be accepted.
const MAX_TCP_CONNECTIONS: usize = 1024;

/// What the relay is started with.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The UDP address clients reach the relay at.
    pub listen: SocketAddr,
    /// The address relayed transport addresses carry (the host's public address).
    pub public_ip: IpAddr,
    /// The ports relayed addresses are taken from.
    pub min_port: u16,
    pub max_port: u16,
    pub realm: String,
    /// The secret shared with the homeserver (TURN REST credentials).
    pub secret: String,
    /// Peers allowed besides public unicast addresses (loopback and private ranges are refused
    /// unless listed here).
    pub allowed_peers: Vec<IpNet>,
    /// Peers refused even when allowed otherwise.
    pub denied_peers: Vec<IpNet>,
    /// Allocations one user may hold at once (0: no limit).
    pub max_allocations_per_user: usize,
    /// Whether clients may also reach it over TCP, on the same port.
    pub tcp: bool,
}

/// Where relayed traffic may go.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<IpNet>, denied: Vec<IpNet>) -> PeerPolicy {
        PeerPolicy { allowed, denied }
    }

    /// Whether the relay may exchange traffic with `ip`: never with a denied address; with a
    /// listed one; otherwise only with a public unicast address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.denied.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        is_public_unicast(ip)
    }
}

fn is_public_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// The running relay; dropping it does not stop it, [`Relay::close`] does.
pub struct Relay {
    server: Server,
    local: SocketAddr,
    tcp: Option<JoinHandle<()>>,
}

/// What every listener of the relay shares.
#[derive(Clone)]
struct Shared {
    config: RelayConfig,
    auth: Arc<RestAuth>,
    counts: Arc<Mutex<Allocations>>,
    closed: mpsc::Sender<AllocationInfo>,
}

impl Shared {
    /// A `turn` server over `conn` (behind a guard), relaying from the configured ports.
    async fn server(&self, conn: Arc<dyn Conn + Send + Sync>, address: IpAddr) -> Result<Server, String> {
        let guard = Guard {
            inner: conn,
            policy: PeerPolicy::new(self.config.allowed_peers.clone(), self.config.denied_peers.clone()),
            max_allocations: self.config.max_allocations_per_user,
            counts: self.counts.clone(),
        };
        Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(guard),
                relay_addr_generator: Box::new(RelayAddressGeneratorRanges {
                    relay_address: self.config.public_ip,
                    min_port: self.config.min_port,
                    max_port: self.config.max_port,
                    max_retries: 40,
                    address: address.to_string(),
                    net: Arc::new(Net::new(None)),
                }),
            }],
            realm: self.config.realm.clone(),
            auth_handler: self.auth.clone(),
            channel_bind_timeout: Duration::from_secs(0),
            alloc_close_notify: Some(self.closed.clone()),
        })
        .await
        .map_err(|e| format!("TURN: {e}"))
    }
}

impl Relay {
    /// Binds the relay's sockets (UDP, and TCP on the same port when configured) and starts
    /// serving.
    pub async fn start(config: RelayConfig) -> Result<Relay, String> {
        let socket = UdpSocket::bind(config.listen).await.map_err(|e| format!("TURN {}: {e}", config.listen))?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let counts = Arc::new(Mutex::new(Allocations::default()));
        let (closed_tx, mut closed_rx) = mpsc::channel::<AllocationInfo>(64);
        let forget = counts.clone();
        tokio::spawn(async move {
            while let Some(info) = closed_rx.recv().await {
                forget.lock().expect("allocation counts").closed(info.five_tuple.src_addr);
            }
        });
        let shared = Shared {
            auth: Arc::new(RestAuth { secret: config.secret.clone() }),
            config: config.clone(),
            counts,
            closed: closed_tx,
        };
        let server = shared.server(Arc::new(socket), local.ip()).await?;
        let tcp = if config.tcp {
            let listener = TcpListener::bind(local).await.map_err(|e| format!("TURN {local} (TCP): {e}"))?;
            Some(tokio::spawn(serve_tcp(listener, shared.clone())))
        } else {
            None
        };
        tracing::info!(%local, public = %config.public_ip, tcp = config.tcp, "TURN relay listening");
        Ok(Relay { server, local, tcp })
    }

    /// The address the relay listens at.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the relay and its allocations.
    pub async fn close(&self) {
        if let Some(tcp) = &self.tcp {
            tcp.abort();
        }
        let _ = self.server.close().await;
    }
}

/// Accepts TCP clients: each connection a `turn` server of its own, closed with it.
async fn serve_tcp(listener: TcpListener, shared: Shared) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "TURN TCP accept");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(frames) = crate::tcp::Frames::new(stream).map(Arc::new) else { return };
            let address = frames.local_addr().map(|a| a.ip()).unwrap_or(shared.config.public_ip);
            match shared.server(frames.clone(), address).await {
                Ok(server) => {
                    frames.closed().await;
                    let _ = server.close().await;
                }
                Err(e) => tracing::warn!(%client, error = %e, "TURN TCP connection"),
            }
            drop(slot);
        });
    }
}

/// TURN REST credentials: `<expiry>:<user>` with the HMAC of the shared secret as password.
struct RestAuth {
    secret: String,
}

impl AuthHandler for RestAuth {
    fn auth_handle(&self, username: &str, realm: &str, _src: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if credentials::user_of(username, now).is_none() {
            return Err(turn::Error::Other(format!("expired or malformed TURN username {username}")));
        }
        let password = credentials::password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// Live allocations per client address and per user, and the `Allocate` requests answered
/// yet (by transaction id).
#[derive(Default)]
struct Allocations {
    pending: HashMap<[u8; 12], (SocketAddr, String)>,
    by_client: HashMap<SocketAddr, String>,
    per_user: HashMap<String, usize>,
}

impl Allocations {
    fn held_by(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    fn granted(&mut self, txn: [u8; 12]) {
        if let Some((client, user)) = self.pending.remove(&txn) {
            if self.by_client.insert(client, user.clone()).is_none() {
                *self.per_user.entry(user).or_default() += 1;
            }
        }
    }

    fn closed(&mut self, client: SocketAddr) {
        if let Some(user) = self.by_client.remove(&client) {
            if let Some(n) = self.per_user.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    self.per_user.remove(&user);
                }
            }
        }
    }
}

/// The relay's socket (UDP, or one TCP connection), as the `turn` crate sees it: requests the
/// policy refuses are answered here and never reach the crate.
struct Guard {
    inner: Arc<dyn Conn + Send + Sync>,
    policy: PeerPolicy,
    max_allocations: usize,
    counts: Arc<Mutex<Allocations>>,
}

/// What to do with a datagram from a client.
enum Verdict {
    Pass,
    Drop,
    Refuse(Message),
}

impl Guard {
    fn judge(&self, datagram: &[u8], from: SocketAddr) -> Verdict {
        // Channel data (the media) starts 0b01; STUN messages 0b00, with the type in the first
        // two bytes: only the four types that matter here are decoded.
        if datagram.len() < 20 || datagram[0] & 0xc0 != 0 {
            return Verdict::Pass;
        }
        let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
        let interesting = [0x0003, 0x0008, 0x0009, 0x0016];
        if !interesting.contains(&kind) {
            return Verdict::Pass;
        }
        let mut m = Message::new();
        m.raw = datagram.to_vec();
        if m.decode().is_err() {
            return Verdict::Pass;
        }
        let (method, class) = (m.typ.method, m.typ.class);
        if method == METHOD_ALLOCATE && class == CLASS_REQUEST {
            let mut name = Username::new(ATTR_USERNAME, String::new());
            if name.get_from(&m).is_err() {
                return Verdict::Pass; // the first, unauthenticated request: the crate asks for credentials
            }
            let Some(user) = name.text.split_once(':').map(|(_, u)| u.to_owned()) else {
                return Verdict::Pass; // the crate refuses it
            };
            let mut counts = self.counts.lock().expect("allocation counts");
            if self.max_allocations > 0
                && !counts.by_client.contains_key(&from)
                && counts.held_by(&user) >= self.max_allocations
            {
                tracing::info!(%user, "TURN allocation refused: quota reached");
                return Verdict::Refuse(error(&m, CODE_ALLOC_QUOTA_REACHED.0, "Allocation Quota Reached"));
            }
            if counts.pending.len() >= 4096 {
                counts.pending.clear(); // answers lost on the way: forget them
            }
            counts.pending.insert(m.transaction_id.0, (from, user));
            return Verdict::Pass;
        }
        let checks_peers = (method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND)
            && class == CLASS_REQUEST
            || method == METHOD_SEND && class == CLASS_INDICATION;
        if !checks_peers {
            return Verdict::Pass;
        }
        for attr in m.attributes.0.iter().filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS) {
            let mut one = Message::new();
            one.transaction_id = m.transaction_id;
            one.write_header();
            one.add(ATTR_XOR_PEER_ADDRESS, &attr.value);
            let mut peer = PeerAddress::default();
            let allowed = peer.get_from(&one).is_ok() && self.policy.allows(peer.ip);
            if !allowed {
                tracing::info!(peer = %peer, client = %from, "TURN relay to a forbidden peer refused");
                return if class == CLASS_REQUEST {
                    Verdict::Refuse(error(&m, CODE_FORBIDDEN.0, "Forbidden peer address"))
                } else {
                    Verdict::Drop
                };
            }
        }
        Verdict::Pass
    }

    /// Notes an `Allocate` success the crate sends (the allocation now counts for its user).
    fn note_response(&self, datagram: &[u8]) {
        if datagram.len() >= 20 && datagram[0] == 0x01 && datagram[1] == 0x03 {
            let mut txn = [0u8; 12];
            txn.copy_from_slice(&datagram[8..20]);
            self.counts.lock().expect("allocation counts").granted(txn);
        }
    }
}

/// An error response to a request, with its code and reason.
fn error(request: &Message, code: u16, reason: &str) -> Message {
    let mut m = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(request.transaction_id),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute { code: stun::error_code::ErrorCode(code), reason: reason.as_bytes().to_vec() }),
    ];
    let _ = m.build(&setters);
    m
}

#[async_trait]
impl Conn for Guard {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            match self.judge(&buf[..n], from) {
                Verdict::Pass => return Ok((n, from)),
                Verdict::Drop => continue,
                Verdict::Refuse(answer) => {
                    let _ = self.inner.send_to(&answer.raw, from).await;
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.note_response(buf);
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_loopback_peers_are_refused_unless_listed() {
        let none = PeerPolicy::new(vec![], vec![]);
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!none.allows(refused.parse().unwrap()), "{refused}");
        }
        for allowed in ["8.8.8.8", "2a00:1450::1", "::ffff:8.8.8.8"] {
            assert!(none.allows(allowed.parse().unwrap()), "{allowed}");
        }
        let lab = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec!["8.8.8.0/24".parse().unwrap()]);
        assert!(lab.allows("127.0.0.1".parse().unwrap()));
        assert!(!lab.allows("8.8.8.8".parse().unwrap()));
        assert!(!lab.allows("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn allocations_count_per_user_until_closed() {
        let mut a = Allocations::default();
        let client: SocketAddr = "203.0.113.1:5000".parse().unwrap();
        a.pending.insert([1; 12], (client, "@a:x".into()));
        assert_eq!(a.held_by("@a:x"), 0);
        a.granted([1; 12]);
        assert_eq!(a.held_by("@a:x"), 1);
        a.granted([1; 12]);
        assert_eq!(a.held_by("@a:x"), 1);
        a.closed(client);
        assert_eq!(a.held_by("@a:x"), 0);
    }
}
