//! TURN over TCP between clients and the relay (RFC 8656 §3.1; relayed traffic stays UDP), for
//! networks that let no UDP out. The `turn` crate speaks to a datagram `Conn`: [`Frames`]
//! turns a TCP stream into one, a STUN message or a channel-data message per `recv_from`
//! (each framed by its own length; channel data padded to four bytes over TCP, both ways).
//! Each accepted connection gets a `turn` server of its own, behind the same [`super::Guard`]
//! and the same allocation counts as the UDP listener.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::{Mutex, Notify},
};
use webrtc_util::Conn;

/// The largest message accepted from a client (a STUN message or channel data: 64 KiB).
const MAX_MESSAGE: usize = 4 + 65535 + 3;

/// A TCP stream as a datagram connection: one TURN message per read.
pub struct Frames {
    reader: Mutex<OwnedReadHalf>,
    writer: Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    peer: SocketAddr,
    closed: AtomicBool,
    closing: Notify,
}

impl Frames {
    pub fn new(stream: TcpStream) -> std::io::Result<Frames> {
        let (local, peer) = (stream.local_addr()?, stream.peer_addr()?);
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Ok(Frames {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            local,
            peer,
            closed: AtomicBool::new(false),
            closing: Notify::new(),
        })
    }

    /// Whether the other side closed the connection (or it failed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        loop {
            // Created before the check: a notification in between is not missed.
            let notified = self.closing.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    fn lost(&self, e: std::io::Error) -> webrtc_util::Error {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        e.into()
    }
}

/// The length on the wire of the message a 4-byte header starts: a STUN message (first two
/// bits 00: 20-byte header, its length field) or channel data (01: 4-byte header, its length,
/// padded to four bytes over TCP); `None` for anything else.
fn framed_length(header: [u8; 4]) -> Option<(usize, usize)> {
    let length = u16::from_be_bytes([header[2], header[3]]) as usize;
    match header[0] >> 6 {
        0 => Some((20 + length, 20 + length)),
        1 => Some((4 + length, (4 + length).div_ceil(4) * 4)),
        _ => None,
    }
}

#[async_trait]
impl Conn for Frames {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut reader = self.reader.lock().await;
        let mut header = [0u8; 4];
        reader.read_exact(&mut header).await.map_err(|e| self.lost(e))?;
        let Some((length, on_wire)) = framed_length(header) else {
            return Err(self.lost(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a TURN message")));
        };
        if on_wire > MAX_MESSAGE || length > buf.len() {
            return Err(self.lost(std::io::Error::new(std::io::ErrorKind::InvalidData, "TURN message too long")));
        }
        let mut message = vec![0u8; on_wire];
        message[..4].copy_from_slice(&header);
        reader.read_exact(&mut message[4..]).await.map_err(|e| self.lost(e))?;
        buf[..length].copy_from_slice(&message[..length]);
        Ok((length, self.peer))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.peer).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut writer = self.writer.lock().await;
        writer.write_all(buf).await.map_err(|e| self.lost(e))?;
        // Channel data is padded to four bytes over TCP.
        if buf.first().is_some_and(|b| b >> 6 == 1) && !buf.len().is_multiple_of(4) {
            writer.write_all(&[0u8; 3][..4 - buf.len() % 4]).await.map_err(|e| self.lost(e))?;
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::framed_length;

    #[test]
    fn messages_are_framed_by_their_own_lengths() {
        // A STUN binding request with 8 bytes of attributes.
        assert_eq!(framed_length([0x00, 0x01, 0x00, 0x08]), Some((28, 28)));
        // Channel data of 5 bytes: padded to 12 on the wire.
        assert_eq!(framed_length([0x40, 0x00, 0x00, 0x05]), Some((9, 12)));
        assert_eq!(framed_length([0x40, 0x00, 0x00, 0x04]), Some((8, 8)));
        // Anything else is not TURN.
        assert_eq!(framed_length([0x80, 0, 0, 0]), None);
    }
}
