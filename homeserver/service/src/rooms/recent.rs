//! The newest events of each room, by stream position, kept from the commits this process
//! made: a woken `/sync` (one new message for thousands of long-polling clients) reads its
//! timeline here instead of asking the database each time.
//!
//! A room's list is complete above a position: every event of the room stored with a higher
//! stream position is in it. History fetched from other servers is stored below every
//! position given out, so it never falls in that range; a range reaching below it is read
//! from the database.

use std::collections::VecDeque;

use ruma::OwnedEventId;

/// How many of a room's newest events are kept.
const PER_ROOM: usize = 32;

/// A room's newest events, oldest first.
#[derive(Debug)]
pub(crate) struct RecentEvents {
    /// Every event of the room above this position is in `events`.
    complete_above: i64,
    events: VecDeque<(i64, OwnedEventId)>,
}

impl RecentEvents {
    /// The list of a room whose first event since start-up is at `position`: the events
    /// committed before it are below it.
    pub(crate) fn starting_at(position: i64) -> RecentEvents {
        RecentEvents { complete_above: position - 1, events: VecDeque::with_capacity(PER_ROOM) }
    }

    /// Records an event committed at `position`. Positions only grow; one that does not (none
    /// should) is below the covered range already, and left out.
    pub(crate) fn push(&mut self, position: i64, event_id: OwnedEventId) {
        if position <= self.events.back().map_or(self.complete_above, |(p, _)| *p) {
            return;
        }
        if self.events.len() == PER_ROOM {
            if let Some((dropped, _)) = self.events.pop_front() {
                self.complete_above = dropped;
            }
        }
        self.events.push_back((position, event_id));
    }

    /// The ids of the events with `from < position <= to`, newest first, `limit` at most;
    /// `None` when the list does not cover `from`.
    pub(crate) fn between(&self, from: i64, to: i64, limit: usize) -> Option<Vec<OwnedEventId>> {
        if from < self.complete_above {
            return None;
        }
        Some(
            self.events
                .iter()
                .rev()
                .filter(|(p, _)| *p > from && *p <= to)
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> OwnedEventId {
        OwnedEventId::try_from(format!("$e{n}")).unwrap()
    }

    #[test]
    fn answers_only_the_ranges_it_covers() {
        let mut recent = RecentEvents::starting_at(10);
        for p in 10..15 {
            recent.push(p, id(p));
        }
        // From the position before the first event on: complete.
        assert_eq!(recent.between(9, 14, 10), Some(vec![id(14), id(13), id(12), id(11), id(10)]));
        assert_eq!(recent.between(11, 13, 10), Some(vec![id(13), id(12)]));
        assert_eq!(recent.between(12, 14, 1), Some(vec![id(14)]));
        assert_eq!(recent.between(14, 20, 10), Some(vec![]));
        // Below it, events committed before start-up may exist: not known here.
        assert_eq!(recent.between(8, 14, 10), None);
    }

    #[test]
    fn forgets_the_oldest_and_says_so() {
        let mut recent = RecentEvents::starting_at(1);
        for p in 1..=(PER_ROOM as i64 + 5) {
            recent.push(p, id(p));
        }
        // Events 1 to 5 were dropped: a range from 4 is no longer covered, one from 5 is.
        assert_eq!(recent.between(4, 100, 100), None);
        let from_five = recent.between(5, 100, 100).unwrap();
        assert_eq!(from_five.len(), PER_ROOM);
        assert_eq!(from_five.first(), Some(&id(PER_ROOM as i64 + 5)));
        assert_eq!(from_five.last(), Some(&id(6)));
    }
}
