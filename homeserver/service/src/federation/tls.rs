//! The certificate of the built-in HTTPS listener (`federation.tls_listen`): the configured
//! files, or a self-signed certificate for the server name made once in the data directory
//! (for tests and trials; other servers accept it only if told to).

use std::{path::Path, sync::Arc};

use crate::anyhow_like::{msg, Result};

/// The TLS configuration of the built-in listener.
pub fn server_config(config: &crate::Config) -> Result<Arc<rustls::ServerConfig>> {
    let federation = &config.federation;
    let (cert_path, key_path) = if federation.tls_certificate.as_os_str().is_empty() {
        let cert = config.data_dir.join("tls-self-signed.crt");
        let key = config.data_dir.join("tls-self-signed.key");
        if !cert.exists() || !key.exists() {
            self_signed(&config.server_name, &cert, &key)?;
        }
        (cert, key)
    } else {
        (federation.tls_certificate.clone(), federation.tls_private_key.clone())
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| msg(format!("cannot read {}: {e}", p.display())));
    let certs = rustls_pemfile::certs(&mut &read(&cert_path)?[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| msg(format!("{}: {e}", cert_path.display())))?;
    let key = rustls_pemfile::private_key(&mut &read(&key_path)?[..])
        .map_err(|e| msg(format!("{}: {e}", key_path.display())))?
        .ok_or_else(|| msg(format!("{}: no private key", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| msg(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| msg(format!("{}: {e}", cert_path.display())))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Writes a self-signed certificate for the host part of `server_name`.
fn self_signed(server_name: &str, cert: &Path, key: &Path) -> Result<()> {
    let host = match server_name.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => server_name,
    };
    let host = host.trim_matches(['[', ']']).to_owned();
    let made =
        rcgen::generate_simple_self_signed(vec![host]).map_err(|e| msg(format!("self-signed certificate: {e}")))?;
    std::fs::write(cert, made.cert.pem()).map_err(|e| msg(format!("cannot write {}: {e}", cert.display())))?;
    std::fs::write(key, made.key_pair.serialize_pem())
        .map_err(|e| msg(format!("cannot write {}: {e}", key.display())))?;
    Ok(())
}
