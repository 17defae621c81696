//! The SMTP listener of the mail domain (RFC 5321, with STARTTLS, SIZE, PIPELINING, 8BITMIME
//! and enhanced status codes). `smtp-proto` parses commands and un-stuffs `DATA`; each
//! accepted message is handed to [`crate::inbound`], whose answer is the SMTP reply: a mail is
//! acknowledged only once it is in its rooms.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use smtp_proto::{
    request::receiver::{DataReceiver, DummyDataReceiver, RequestReceiver},
    EhloResponse, Error as ProtoError, Request, EXT_8BIT_MIME, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE,
    EXT_START_TLS,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};

use crate::{inbound::Envelope, Bridge};

/// How long a client may stay silent.
const IDLE: Duration = Duration::from_secs(300);
/// Recipients of one message, at most.
const MAX_RECIPIENTS: usize = 100;
/// Sessions at once; more are answered 421 (the sender retries later).
const MAX_SESSIONS: usize = 1024;
/// Commands refused in a row before the connection is closed.
const MAX_ERRORS: usize = 10;

/// An SMTP reply.
pub struct Reply {
    pub code: u16,
    pub esc: [u8; 3],
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, esc: [u8; 3], text: impl Into<String>) -> Reply {
        Reply { code, esc, text: text.into() }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let [a, b, c] = self.esc;
        // One line: a reply never carries what a client sent back unfiltered.
        let text: String = self.text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        smtp_proto::Response::new(self.code, a, b, c, text).write(out).expect("writing to a Vec");
    }
}

pub async fn serve(bridge: Arc<Bridge>, listener: TcpListener) {
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SMTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            let mut out = Vec::new();
            Reply::new(421, [4, 3, 2], "Too many connections, try again later").write(&mut out);
            let _ = stream.write_all(&out).await;
            continue;
        };
        let bridge = bridge.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match session(&bridge, stream, peer, false).await {
                Ok(Some(stream)) => match bridge.tls.accept(stream).await {
                    Ok(tls) => {
                        if let Err(e) = session(&bridge, tls, peer, true).await {
                            tracing::debug!(%peer, error = %e, "SMTP session (TLS) ended");
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "STARTTLS handshake failed"),
                },
                Ok(None) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "SMTP session ended"),
            }
        });
    }
}

enum State {
    Command,
    Data(DataReceiver),
    /// A message over the size limit, read to its end and refused.
    Discard(DummyDataReceiver),
}

/// One SMTP session; the stream back when the client asked for STARTTLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Bridge,
    mut stream: S,
    peer: SocketAddr,
    tls: bool,
) -> std::io::Result<Option<S>> {
    let host = bridge.mail_domain.clone();
    let mut out = Vec::new();
    if !tls {
        Reply::new(220, [0, 0, 0], format!("{host} ESMTP Diplomatie")).write(&mut out);
        stream.write_all(&out).await?;
    }
    let mut requests = RequestReceiver::default();
    let mut state = State::Command;
    let mut helo: Option<String> = None;
    let mut envelope: Option<Envelope> = None;
    let mut message = Vec::new();
    let mut errors = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                out.clear();
                Reply::new(421, [4, 4, 2], "Idle too long").write(&mut out);
                let _ = stream.write_all(&out).await;
                return Ok(None);
            }
        };
        out.clear();
        let mut bytes = buf[..n].iter();
        loop {
            match &mut state {
                State::Data(receiver) => {
                    if !receiver.ingest(&mut bytes, &mut message) {
                        if message.len() > bridge.config.max_message_bytes {
                            state = State::Discard(DummyDataReceiver::new_data(receiver));
                            message = Vec::new();
                        }
                        break;
                    }
                    let env = envelope.take().expect("DATA follows RCPT");
                    state = State::Command;
                    let data = std::mem::take(&mut message);
                    if data.len() > bridge.config.max_message_bytes {
                        too_large(bridge).write(&mut out);
                    } else {
                        bridge.deliver(env, data).await.write(&mut out);
                    }
                }
                State::Discard(receiver) => {
                    if !receiver.ingest(&mut bytes) {
                        break;
                    }
                    envelope = None;
                    state = State::Command;
                    too_large(bridge).write(&mut out);
                }
                State::Command => {
                    let request = match requests.ingest(&mut bytes) {
                        Ok(r) => r.into_owned(),
                        Err(ProtoError::NeedsMoreData { .. }) => break,
                        Err(e) => {
                            errors += 1;
                            refusal(&e).write(&mut out);
                            if errors >= MAX_ERRORS {
                                Reply::new(421, [4, 7, 0], "Too many errors").write(&mut out);
                                stream.write_all(&out).await?;
                                return Ok(None);
                            }
                            continue;
                        }
                    };
                    match request {
                        Request::Ehlo { host: client } => {
                            helo = Some(client);
                            envelope = None;
                            let mut ehlo = EhloResponse::new(host.as_str());
                            ehlo.capabilities = EXT_8BIT_MIME | EXT_ENHANCED_STATUS_CODES | EXT_PIPELINING | EXT_SIZE;
                            if !tls {
                                ehlo.capabilities |= EXT_START_TLS;
                            }
                            ehlo.size = bridge.config.max_message_bytes;
                            ehlo.write(&mut out).expect("writing to a Vec");
                        }
                        Request::Helo { host: client } | Request::Lhlo { host: client } => {
                            helo = Some(client);
                            envelope = None;
                            Reply::new(250, [0, 0, 0], host.as_str()).write(&mut out);
                        }
                        Request::StartTls if !tls => {
                            Reply::new(220, [2, 0, 0], "Ready to start TLS").write(&mut out);
                            stream.write_all(&out).await?;
                            stream.flush().await?;
                            return Ok(Some(stream));
                        }
                        Request::StartTls => Reply::new(503, [5, 5, 1], "TLS already active").write(&mut out),
                        Request::Mail { from } => {
                            let Some(helo) = &helo else {
                                Reply::new(503, [5, 5, 1], "Say EHLO first").write(&mut out);
                                continue;
                            };
                            if envelope.is_some() {
                                Reply::new(503, [5, 5, 1], "Sender already given").write(&mut out);
                            } else if from.size > bridge.config.max_message_bytes {
                                too_large(bridge).write(&mut out);
                            } else {
                                envelope = Some(Envelope {
                                    peer: peer.ip(),
                                    helo: helo.clone(),
                                    mail_from: from.address.to_lowercase(),
                                    rooms: Vec::new(),
                                });
                                Reply::new(250, [2, 1, 0], "Sender OK").write(&mut out);
                            }
                        }
                        Request::Rcpt { to } => {
                            let Some(env) = &mut envelope else {
                                Reply::new(503, [5, 5, 1], "MAIL first").write(&mut out);
                                continue;
                            };
                            if env.rooms.len() >= MAX_RECIPIENTS {
                                Reply::new(452, [4, 5, 3], "Too many recipients").write(&mut out);
                                continue;
                            }
                            match bridge.recipient(&to.address).await {
                                Ok(Some(room)) => {
                                    if !env.rooms.contains(&room) {
                                        env.rooms.push(room);
                                    }
                                    Reply::new(250, [2, 1, 5], "Recipient OK").write(&mut out);
                                }
                                Ok(None) => {
                                    Reply::new(550, [5, 1, 1], format!("No such recipient here: {}", to.address))
                                        .write(&mut out)
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "looking up a recipient");
                                    Reply::new(451, [4, 3, 0], "Try again later").write(&mut out);
                                }
                            }
                        }
                        Request::Data => match &envelope {
                            Some(env) if !env.rooms.is_empty() => {
                                Reply::new(354, [0, 0, 0], "End data with <CR><LF>.<CR><LF>").write(&mut out);
                                state = State::Data(DataReceiver::new());
                                message.clear();
                            }
                            _ => Reply::new(503, [5, 5, 1], "No valid recipients").write(&mut out),
                        },
                        Request::Bdat { .. } => Reply::new(502, [5, 5, 1], "CHUNKING is not offered").write(&mut out),
                        Request::Rset => {
                            envelope = None;
                            Reply::new(250, [2, 0, 0], "OK").write(&mut out);
                        }
                        Request::Noop { .. } => Reply::new(250, [2, 0, 0], "OK").write(&mut out),
                        Request::Vrfy { .. } => {
                            Reply::new(252, [2, 5, 2], "Cannot verify, send and see").write(&mut out)
                        }
                        Request::Quit => {
                            Reply::new(221, [2, 0, 0], "Bye").write(&mut out);
                            stream.write_all(&out).await?;
                            return Ok(None);
                        }
                        _ => Reply::new(502, [5, 5, 1], "Command not implemented").write(&mut out),
                    }
                    errors = 0;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

fn too_large(bridge: &Bridge) -> Reply {
    Reply::new(552, [5, 3, 4], format!("Message larger than {} bytes", bridge.config.max_message_bytes))
}

fn refusal(e: &ProtoError) -> Reply {
    match e {
        ProtoError::UnknownCommand => Reply::new(500, [5, 5, 1], "Unknown command"),
        ProtoError::InvalidSenderAddress => Reply::new(501, [5, 1, 7], "Invalid sender address"),
        ProtoError::InvalidRecipientAddress => Reply::new(501, [5, 1, 3], "Invalid recipient address"),
        ProtoError::SyntaxError { syntax } => Reply::new(501, [5, 5, 4], format!("Syntax: {syntax}")),
        ProtoError::InvalidParameter { param } => Reply::new(501, [5, 5, 4], format!("Invalid parameter {param}")),
        ProtoError::UnsupportedParameter { param } => {
            Reply::new(504, [5, 5, 4], format!("Unsupported parameter {param}"))
        }
        ProtoError::ResponseTooLong => Reply::new(500, [5, 5, 2], "Line too long"),
        _ => Reply::new(500, [5, 5, 2], "Syntax error"),
    }
}
