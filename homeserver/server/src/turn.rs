//! The built-in TURN relay, when `voip.turn.enabled`: its configuration completed (the shared
//! secret made once in the data directory, the public address, the URIs handed to clients)
//! before the services start, so that `/voip/turnServer` and the relay agree.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use diplomatie_service::Config;
use diplomatie_turn::relay::RelayConfig;

/// Completes `config.voip` for the built-in relay and answers what the relay starts with;
/// `None` when it is off.
pub fn prepare(config: &mut Config) -> anyhow::Result<Option<RelayConfig>> {
    let turn = config.voip.turn.clone();
    if !turn.enabled {
        return Ok(None);
    }
    let listen: SocketAddr =
        turn.listen.parse().with_context(|| format!("invalid voip.turn.listen {}", turn.listen))?;
    let public_ip: IpAddr = if !turn.public_address.is_empty() {
        turn.public_address
            .parse()
            .with_context(|| format!("invalid voip.turn.public_address {}", turn.public_address))?
    } else if !listen.ip().is_unspecified() {
        listen.ip()
    } else {
        anyhow::bail!("voip.turn.public_address must be set when voip.turn.listen is {listen}");
    };
    if turn.min_port == 0 || turn.max_port < turn.min_port {
        anyhow::bail!("voip.turn: min_port must be at least 1 and at most max_port");
    }
    let nets = |list: &[String], name: &str| -> anyhow::Result<Vec<ipnet::IpNet>> {
        list.iter()
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| format!("invalid address range {n} in voip.turn.{name}"))
            })
            .collect()
    };
    if config.voip.turn_shared_secret.is_empty() {
        config.voip.turn_shared_secret = shared_secret(&config.data_dir)?;
    }
    if config.voip.turn_uris.is_empty() {
        let host = match public_ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        config.voip.turn_uris = vec![format!("turn:{host}:{}?transport=udp", listen.port())];
        if turn.tcp {
            config.voip.turn_uris.push(format!("turn:{host}:{}?transport=tcp", listen.port()));
        }
    }
    Ok(Some(RelayConfig {
        listen,
        public_ip,
        min_port: turn.min_port,
        max_port: turn.max_port,
        realm: config.server_name.clone(),
        secret: config.voip.turn_shared_secret.clone(),
        allowed_peers: nets(&turn.allowed_peers, "allowed_peers")?,
        denied_peers: nets(&turn.denied_peers, "denied_peers")?,
        max_allocations_per_user: turn.max_allocations_per_user,
        tcp: turn.tcp,
    }))
}

/// The secret in `<data_dir>/turn_secret`, made (random, readable by the owner only) the first time.
fn shared_secret(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("turn_secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_owned();
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    use rand::Rng as _;
    let secret: String =
        rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(48).map(char::from).collect();
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(secret)
}
