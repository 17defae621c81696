//! People in the organisation: their clearance and kind of account, changed by administrators
//! and managers; a change that withdraws a right takes them out of the rooms it no longer
//! allows.

use diplomatie_policies::{self as policies, AccountKind, Entry, Level};
use diplomatie_storage::org as store;
use ruma::events::room::member::MembershipState;
use ruma::UserId;

use super::Organisation;
use crate::{error::forbidden, now_ms, Result};

impl Organisation {
    /// Sets a local user's clearance, recording who did it and when.
    pub async fn set_clearance(&self, actor: &UserId, actor_admin: bool, target: &UserId, level: Level) -> Result<()> {
        self.portal.local_account(target).await?;
        let raises = level > self.portal.person(target).await?.clearance;
        self.portal.may_set_clearance(actor, actor_admin, target, level, raises).await?;
        let mut tx = self.db.begin().await?;
        store::set_clearance(&mut tx, target.as_str(), level.as_str(), actor.as_str(), now_ms()).await?;
        diplomatie_storage::commit(tx).await?;
        self.portal.people.lock().unwrap().pop(target);
        self.leave_rooms_no_longer_allowed(target, "DR clearance withdrawn").await
    }

    /// After a user's clearance or kind changed: the user leaves (or withdraws an invite or a
    /// knock from) every room the rules no longer let them in.
    async fn leave_rooms_no_longer_allowed(&self, target: &UserId, reason: &str) -> Result<()> {
        let person = self.portal.person(target).await?;
        for (room_id, membership) in self.memberships_of(target).await? {
            if !matches!(membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
                continue;
            }
            let facts = self.portal.room_facts_now(&room_id).await?;
            if policies::may_enter(person, facts, Entry::Join).is_err() {
                self.membership.leave(target, &room_id, Some(reason.to_owned())).await?;
            }
        }
        Ok(())
    }

    /// Makes a local account an agent's or an external person's (administrators only).
    pub async fn set_account_kind(&self, target: &UserId, kind: AccountKind) -> Result<()> {
        self.portal.local_account(target).await?;
        if kind == AccountKind::External {
            policies::may_make_external(self.portal.person(target).await?).map_err(forbidden)?;
        }
        store::set_kind(self.db.pool(), target.as_str(), kind.as_str()).await?;
        self.portal.people.lock().unwrap().pop(target);
        self.leave_rooms_no_longer_allowed(target, "Account made external").await
    }
}
