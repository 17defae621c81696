//! Presence across servers (`m.presence` EDUs): a local user's presence goes to the servers of
//! the users sharing a room with them; another server's users' presence is kept when they share
//! a room with a user of this one.

use std::collections::HashSet;

use ruma::{api::federation::transactions::edu::PresenceContent, OwnedServerName, OwnedUserId, ServerName};
use serde_json::{json, Value};

use crate::{Result, Services};

impl Services {
    /// Sends a local user's presence to the servers of the users sharing a room with them.
    pub(crate) async fn federate_presence(&self, sharing: &HashSet<OwnedUserId>, presence: Value) -> Result<()> {
        if !self.transport.federation_enabled() {
            return Ok(());
        }
        let mut servers: Vec<OwnedServerName> =
            sharing.iter().map(|u| u.server_name().to_owned()).filter(|s| s != self.server_name()).collect();
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return Ok(());
        }
        self.enqueue_edu(&servers, json!({ "edu_type": "m.presence", "content": { "push": [presence] } })).await
    }

    /// `m.presence` from `origin`: the presence of its users who share a room with ours.
    pub(crate) async fn receive_presence(&self, origin: &ServerName, content: PresenceContent) -> Result<()> {
        for entry in content.push {
            let user = entry.user_id;
            let state = entry.presence.as_str();
            if user.server_name() != origin || !matches!(state, "online" | "offline" | "unavailable") {
                continue;
            }
            let sharing = self.users_sharing_rooms_with(&user).await?;
            if !sharing.iter().any(|u| u.server_name() == self.server_name()) {
                continue;
            }
            let ago = i64::try_from(u64::from(entry.last_active_ago)).unwrap_or(0);
            self.store_presence(&user, state, entry.status_msg.as_deref(), crate::now_ms() - ago).await?;
        }
        Ok(())
    }
}
