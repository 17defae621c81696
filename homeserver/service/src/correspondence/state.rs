//! What the correspondence service keeps in memory: journals and their owners, the
//! organisation's directory as dispatch reads it, and the worker's queue.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, RwLock},
};

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};
use tokio::sync::mpsc::UnboundedSender;

use super::model::{Community, OrgRoom};
use crate::Pdu;

/// An event the service looks at, with the device that sent it when known.
pub(super) type Job = (Arc<Pdu>, Option<OwnedDeviceId>);

#[derive(Default)]
pub(crate) struct CorrespondenceState {
    pub(super) journals: RwLock<HashMap<OwnedUserId, OwnedRoomId>>,
    pub(super) owners: RwLock<HashMap<OwnedRoomId, OwnedUserId>>,
    pub(super) loaded: OnceLock<()>,
    /// Held while journals are created, so that nobody gets two.
    pub(super) creating: tokio::sync::Mutex<()>,
    pub(super) queue: OnceLock<UnboundedSender<Job>>,
    /// The group whose correspondence room each room seen is (`None`: not one).
    pub(super) rooms: Mutex<HashMap<OwnedRoomId, Option<String>>>,
    /// The organisation's directory, as dispatch reads it: groups' and communities' rooms by
    /// `<prefix>.<slug>.<key>`, and the communities with their tags. Emptied (and its
    /// generation moved on) by every committed change of a group's marker, a classification
    /// or a name; a reader that started before a change does not store what it read.
    pub(super) directory: Mutex<HashMap<String, Option<OrgRoom>>>,
    pub(super) communities: Mutex<Option<Arc<Vec<Community>>>>,
    /// Held while the list of communities is read, so that it is read once.
    pub(super) reading_communities: tokio::sync::Mutex<()>,
    pub(super) directory_generation: std::sync::atomic::AtomicU64,
}

impl CorrespondenceState {
    pub(super) fn generation(&self) -> u64 {
        self.directory_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn remember(&self, generation: u64, key: String, value: Option<OrgRoom>) {
        let mut directory = self.directory.lock().unwrap();
        if self.generation() == generation {
            directory.insert(key, value);
        }
    }

    pub(super) fn remember_communities(&self, generation: u64, list: Arc<Vec<Community>>) {
        let mut communities = self.communities.lock().unwrap();
        if self.generation() == generation {
            *communities = Some(list);
        }
    }

    pub(super) fn forget_directory(&self) {
        let mut directory = self.directory.lock().unwrap();
        let mut communities = self.communities.lock().unwrap();
        self.directory_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        directory.clear();
        *communities = None;
    }
}
