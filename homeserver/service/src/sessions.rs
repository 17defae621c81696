//! What ends devices, sessions or accounts reaches beyond the accounts: logging out, deleting
//! devices, changing a password (and logging out the other devices), deactivating an account.
//! Each tells push (pushers go with their devices), e2ee (device lists change), MLS (the
//! devices leave the groups of DR rooms) and, for a deactivation, the rooms the user leaves.

use ruma::events::room::member::MembershipState;
use std::sync::Arc;

use diplomatie_storage::accounts as store;
use ruma::UserId;

use crate::{
    accounts::{hash_password, Accounts, Caller, Session},
    core::Core,
    e2ee::E2ee,
    identity::Identity,
    mls::Mls,
    push::Push,
    rooms::membership::Membership,
    Error, Result,
};

/// The end of devices and accounts, over the accounts, push, e2ee, MLS and memberships.
pub struct Sessions {
    core: Arc<Core>,
    accounts: Arc<Accounts>,
    push: Arc<Push>,
    e2ee: Arc<E2ee>,
    mls: Arc<Mls>,
    membership: Arc<Membership>,
    identity: Arc<Identity>,
}

crate::core::over_core!(Sessions);

impl Sessions {
    pub(crate) fn new(
        core: Arc<Core>,
        accounts: Arc<Accounts>,
        push: Arc<Push>,
        e2ee: Arc<E2ee>,
        mls: Arc<Mls>,
        membership: Arc<Membership>,
        identity: Arc<Identity>,
    ) -> Sessions {
        Sessions { core, accounts, push, e2ee, mls, membership, identity }
    }

    /// After devices were deleted: their device list changes, and their removal from the MLS
    /// groups of DR rooms is proposed at once. A failure of the latter is logged, not answered:
    /// the devices are gone, and the next commit in each group removes them anyway (a device
    /// that no longer exists may not stay).
    async fn devices_gone(&self, user: &UserId, gone: &[&str]) -> Result<()> {
        self.e2ee.devices_changed(user, gone).await?;
        if !gone.is_empty() {
            if let Err(e) = self.mls.enforce_clearances(user, gone).await {
                tracing::warn!(%user, error = ?e, "MLS: cannot propose the removal of deleted devices");
            }
        }
        Ok(())
    }

    /// Opens a session on a new (or re-used) device: users sharing a room with its owner, and
    /// the owner's other devices, see the owner's device list change.
    pub async fn open_session(
        &self,
        user: &UserId,
        device_id: Option<&str>,
        display_name: Option<&str>,
        refresh: bool,
    ) -> Result<Session> {
        let session = self.accounts.open_session(user, device_id, display_name, refresh).await?;
        self.e2ee.device_list_changed(user).await?;
        Ok(session)
    }

    /// Renames a device; its name is part of the device list others see.
    pub async fn rename_device(&self, user: &UserId, device_id: &str, name: Option<&str>) -> Result<()> {
        self.accounts.rename_device(user, device_id, name).await?;
        self.e2ee.device_list_changed(user).await
    }

    /// Logs out one device: its tokens and the device itself go.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        self.delete_devices(&caller.user_id, &[caller.device_id.as_str()]).await
    }

    pub async fn logout_all(&self, user: &UserId) -> Result<()> {
        let gone = self.accounts.devices(user).await?;
        let mut tx = self.db.begin().await?;
        store::delete_all_devices(&mut tx, user.as_str(), None).await?;
        diplomatie_storage::push::delete_user_pushers(&mut *tx, user.as_str()).await?;
        diplomatie_storage::commit(tx).await?;
        self.accounts.tokens.forget_user(user.as_str());
        self.push.pushers_changed().await?;
        let gone: Vec<&str> = gone.iter().map(|d| d.device_id.as_str()).collect();
        self.devices_gone(user, &gone).await
    }

    /// Deletes devices with their tokens and keys; users sharing a room learn it in `/sync`.
    pub async fn delete_devices(&self, user: &UserId, devices: &[&str]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for d in devices {
            store::delete_device(&mut tx, user.as_str(), d).await?;
            // A device's pushers go with it (Synapse does the same on logout).
            diplomatie_storage::push::delete_device_pushers(&mut *tx, user.as_str(), d).await?;
        }
        diplomatie_storage::commit(tx).await?;
        self.accounts.tokens.forget_user(user.as_str());
        self.push.pushers_changed().await?;
        self.devices_gone(user, devices).await
    }

    /// Changes the password; with `logout_devices`, every other device is logged out.
    pub async fn change_password(&self, caller: &Caller, new_password: &str, logout_devices: bool) -> Result<()> {
        self.set_password(&caller.user_id, Some(caller.device_id.as_str()), new_password, logout_devices).await
    }

    /// Sets a user's password; with `logout_devices`, every device but `keep` is logged out.
    pub async fn set_password(
        &self,
        user: &UserId,
        keep: Option<&str>,
        new_password: &str,
        logout_devices: bool,
    ) -> Result<()> {
        let hash = hash_password(new_password).await?;
        let gone: Vec<String> = if logout_devices {
            let devices = self.accounts.devices(user).await?.into_iter().map(|d| d.device_id);
            devices.filter(|d| Some(d.as_str()) != keep).collect()
        } else {
            Vec::new()
        };
        let mut tx = self.db.begin().await?;
        store::set_password(&mut *tx, user.as_str(), Some(&hash)).await?;
        if logout_devices {
            store::delete_all_devices(&mut tx, user.as_str(), keep).await?;
            // The other devices' pushers go with them, as on logout.
            for d in &gone {
                diplomatie_storage::push::delete_device_pushers(&mut *tx, user.as_str(), d).await?;
            }
        }
        diplomatie_storage::commit(tx).await?;
        self.accounts.tokens.forget_user(user.as_str());
        if logout_devices {
            self.push.pushers_changed().await?;
            let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
            self.devices_gone(user, &gone).await?;
        }
        Ok(())
    }

    /// Deactivates an account: it leaves every room, loses its devices and can never log in.
    /// With `erase`, the account's events are shown redacted from then on to whoever was not
    /// in the room when they were sent, and to other servers.
    pub async fn deactivate(&self, user: &UserId, erase: bool) -> Result<()> {
        if erase && diplomatie_storage::retention::user_held(self.db.pool(), user.as_str()).await? {
            return Err(Error::forbidden(
                "This account is under a legal hold: it can be deactivated, not erased, until the hold is lifted",
            ));
        }
        for (room_id, membership) in self.memberships_of(user).await? {
            if matches!(membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
                if let Err(e) = self.membership.leave(user, &room_id, Some("Account deactivated".into())).await {
                    tracing::warn!(%room_id, error = %e, "could not leave room on deactivation");
                }
            }
        }
        // Its addresses are unbound where they were bound (the identity servers would
        // otherwise go on naming a closed account), and forgotten here.
        self.identity.forget_all(user).await?;
        let mut tx = self.db.begin().await?;
        store::delete_all_devices(&mut tx, user.as_str(), None).await?;
        store::set_deactivated(&mut *tx, user.as_str()).await?;
        diplomatie_storage::push::delete_user_pushers(&mut *tx, user.as_str()).await?;
        diplomatie_storage::commit(tx).await?;
        self.accounts.tokens.forget_user(user.as_str());
        if erase {
            self.membership.rooms.erase(user).await?;
        }
        self.push.pushers_changed().await
    }
}
