//! State resolution: the room state where the DAG's forks meet.
//!
//! A room whose forward extremities are several (forks, which federation brings) has as its
//! state the resolution of the states after each extremity, by the version's algorithm
//! (v2, or v2.1 with the conflicted state subgraph since v12, computed by ruma-state-res; v1
//! for room version 1, which ruma does not implement, by `event_core::resolve_v1`) over
//! the events loaded here (`event_core::resolve`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{state_res::StateMap, OwnedEventId, RoomVersionId};

use super::event_core;
use super::Rooms;
use crate::{Pdu, Result};

impl Rooms {
    /// The state of a room at the meeting point of `extremities`.
    pub async fn resolve_extremities(
        &self,
        version: &RoomVersionId,
        extremities: &[OwnedEventId],
    ) -> Result<StateMap<OwnedEventId>> {
        let mut maps = Vec::new();
        for id in extremities {
            let pdu = self.get_pdu(id).await?.ok_or_else(crate::internal!("a value present by construction"))?;
            maps.push((*self.state_map(pdu.state_group).await?).clone());
        }
        self.resolve_states(version, maps).await
    }

    /// The resolution of several states of a room (v1 for version 1, v2, or v2.1 since
    /// v12).
    pub async fn resolve_states(
        &self,
        version: &RoomVersionId,
        maps: Vec<StateMap<OwnedEventId>>,
    ) -> Result<StateMap<OwnedEventId>> {
        self.resolve_states_with(version, maps, &HashMap::new()).await
    }

    /// [`Self::resolve_states`] where some events are not stored yet (`pending`: a batch being
    /// written). Loads the states' events and their auth chains, then resolves in memory
    /// ([`event_core::resolve`]).
    pub(crate) async fn resolve_states_with(
        &self,
        version: &RoomVersionId,
        mut maps: Vec<StateMap<OwnedEventId>>,
        pending: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<StateMap<OwnedEventId>> {
        maps.dedup();
        if maps.len() == 1 {
            return Ok(maps.pop().expect("one map"));
        }
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        // Every event the algorithm may read: the states' events and their auth ancestors.
        let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let mut queue: VecDeque<OwnedEventId> = maps.iter().flat_map(|m| m.values().cloned()).collect();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let pdu = match pending.get(&id) {
                Some(p) => Some(p.clone()),
                None => self.get_pdu(&id).await?,
            };
            if let Some(p) = pdu {
                queue.extend(p.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
                events.insert(id, p);
            }
        }
        event_core::resolve(&rules, maps, &events)
    }

    /// Every event reachable from `starts` through auth_events.
    pub async fn auth_chain_events(&self, starts: &[OwnedEventId]) -> Result<Vec<Arc<Pdu>>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut queue: Vec<OwnedEventId> = Vec::new();
        for id in starts {
            if let Some(p) = self.get_pdu(id).await? {
                queue.extend(p.auth_events.iter().cloned());
            }
        }
        let mut out = Vec::new();
        while let Some(id) = queue.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.get_pdu(&id).await? {
                queue.extend(p.auth_events.iter().cloned());
                out.push(p);
            }
        }
        Ok(out)
    }
}
