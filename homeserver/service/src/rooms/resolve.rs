//! State resolution: the room state where the DAG's forks meet.
//!
//! A room whose forward extremities are several (forks, which federation brings) has as its
//! state the resolution of the states after each extremity, by the version's algorithm
//! (v2, or v2.1 with the conflicted state subgraph since v12), computed by ruma-state-res.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    api::error::ErrorKind,
    state_res::{self, utils::event_id_set::EventIdSet, StateMap},
    OwnedEventId, RoomVersionId,
};

use crate::{Error, Pdu, Result, Services};

impl Services {
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

    /// The resolution of several states of a room (v2, or v2.1 since v12).
    pub async fn resolve_states(
        &self,
        version: &RoomVersionId,
        maps: Vec<StateMap<OwnedEventId>>,
    ) -> Result<StateMap<OwnedEventId>> {
        self.resolve_states_with(version, maps, &HashMap::new()).await
    }

    /// [`Self::resolve_states`] where some events are not stored yet (`pending`: a batch being
    /// written).
    pub(crate) async fn resolve_states_with(
        &self,
        version: &RoomVersionId,
        mut maps: Vec<StateMap<OwnedEventId>>,
        pending: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<StateMap<OwnedEventId>> {
        let lookup = Lookup { services: self, pending };
        maps.dedup();
        if maps.len() == 1 {
            return Ok(maps.pop().expect("one map"));
        }
        let rules = version.rules().ok_or_else(crate::internal!("a value present by construction"))?;
        let Some(v2) = rules.state_res.v2_rules() else {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "State resolution v1 (room versions 1 and 2) is not available to merge forks",
            ));
        };

        // Every event the algorithm may read: the states' events and their auth chains.
        let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let mut auth_chains = Vec::new();
        for map in &maps {
            let starts: Vec<OwnedEventId> = map.values().cloned().collect();
            auth_chains.push(lookup.auth_chain(&starts, &mut events).await?);
            for id in map.values() {
                if let Some(p) = lookup.get(id).await? {
                    events.insert(id.clone(), p);
                }
            }
        }

        // Since v12: the events between conflicted events, along prev_events.
        let subgraph = if v2.consider_conflicted_state_subgraph {
            let conflicted: HashSet<OwnedEventId> = {
                let mut all: HashMap<_, HashSet<&OwnedEventId>> = HashMap::new();
                for map in &maps {
                    for (key, id) in map {
                        all.entry(key.clone()).or_default().insert(id);
                    }
                }
                let complete = |key: &(_, _)| maps.iter().all(|m| m.contains_key(key));
                all.into_iter()
                    .filter(|(k, ids)| ids.len() > 1 || !complete(k))
                    .flat_map(|(_, ids)| ids.into_iter().cloned())
                    .collect()
            };
            let graph = lookup.conflicted_subgraph(&conflicted, &mut events).await?;
            Some(graph)
        } else {
            None
        };

        let resolved = state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            auth_chains,
            |id| events.get(id).cloned(),
            |_| subgraph.clone(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "state resolution failed");
            Error::Internal
        })?;
        Ok(resolved)
    }
}

/// Events read by a resolution: a batch's pending ones, then those stored.
struct Lookup<'a> {
    services: &'a Services,
    pending: &'a HashMap<OwnedEventId, Arc<Pdu>>,
}

impl Lookup<'_> {
    async fn get(&self, id: &ruma::EventId) -> Result<Option<Arc<Pdu>>> {
        match self.pending.get(id) {
            Some(p) => Ok(Some(p.clone())),
            None => self.services.get_pdu(id).await,
        }
    }

    /// The full recursive set of auth events of `starts`, loading each event into `events`.
    async fn auth_chain(
        &self,
        starts: &[OwnedEventId],
        events: &mut HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        let mut chain = EventIdSet::new();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in starts {
            if let Some(p) = self.get(id).await? {
                queue.extend(p.auth_events.iter().cloned());
            }
        }
        while let Some(id) = queue.pop_front() {
            if !chain.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.get(&id).await? {
                queue.extend(p.auth_events.iter().cloned());
                events.insert(id, p);
            }
        }
        Ok(chain)
    }

    /// The conflicted state subgraph (MSC4297, room version 12): the events on some path of
    /// `auth_events` links from one conflicted event to another, both included. Only state
    /// events lie on such paths (auth events are state events).
    async fn conflicted_subgraph(
        &self,
        conflicted: &HashSet<OwnedEventId>,
        events: &mut HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        // The auth ancestors of the conflicted events (inclusive), with their auth events.
        let mut auths: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        let mut queue: VecDeque<OwnedEventId> = conflicted.iter().cloned().collect();
        while let Some(id) = queue.pop_front() {
            if auths.contains_key(&id) {
                continue;
            }
            let Some(p) = self.get(&id).await? else {
                auths.insert(id, Vec::new());
                continue;
            };
            queue.extend(p.auth_events.iter().cloned());
            auths.insert(id.clone(), p.auth_events.clone());
            events.insert(id, p);
        }
        // An ancestor lies on such a path when its own auth chain reaches a conflicted event:
        // equivalently, when it is a conflicted event or is authorised (transitively) by one.
        // Propagate from the conflicted events along the reversed edges (no recursion, so long
        // histories cannot exhaust the stack).
        let mut children: HashMap<&OwnedEventId, Vec<&OwnedEventId>> = HashMap::new();
        for (id, ps) in &auths {
            for p in ps {
                children.entry(p).or_default().push(id);
            }
        }
        let mut subgraph = EventIdSet::new();
        let mut frontier: Vec<&OwnedEventId> = Vec::new();
        for c in conflicted {
            if let Some(kids) = children.get(c) {
                frontier.extend(kids.iter().copied());
            }
            if events.contains_key(c) {
                subgraph.insert(c.clone());
            }
        }
        while let Some(id) = frontier.pop() {
            if subgraph.insert(id.clone()) {
                if let Some(kids) = children.get(id) {
                    frontier.extend(kids.iter().copied());
                }
            }
        }
        Ok(subgraph)
    }
}
