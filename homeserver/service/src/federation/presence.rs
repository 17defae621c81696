//! Presence across servers (`m.presence` EDUs): a local user's presence goes to the servers of
//! the users sharing a room with them; another server's users' presence is kept when they share
//! a room with a user of this one.

use ruma::{api::federation::transactions::edu::PresenceContent, ServerName};

use super::transactions::Peers;
use crate::Result;

impl Peers {
    /// `m.presence` from `origin`: the presence of its users who share a room with ours.
    pub(crate) async fn receive_presence(&self, origin: &ServerName, content: PresenceContent) -> Result<()> {
        for entry in content.push {
            let user = entry.user_id;
            let state = entry.presence.as_str();
            if user.server_name() != origin || !matches!(state, "online" | "offline" | "unavailable") {
                continue;
            }
            let sharing = self.rooms.users_sharing_rooms_with(&user).await?;
            if !sharing.iter().any(|u| u.server_name() == self.server_name()) {
                continue;
            }
            let ago = i64::try_from(u64::from(entry.last_active_ago)).unwrap_or(0);
            self.ephemeral.store_presence(&user, state, entry.status_msg.as_deref(), crate::now_ms() - ago).await?;
        }
        Ok(())
    }
}
