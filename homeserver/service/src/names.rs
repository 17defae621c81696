//! The portal's names in Matrix: its state event types, its message type, the power level of
//! its managers. At the bottom of the service crate: every module may use them, they use
//! nothing.

/// The state event holding a room's classification (NP, DR).
pub const CLASSIFICATION: &str = "fr.diplomatie.classification";
/// The state event opening a room to external persons.
pub const EXTERNALS: &str = "fr.diplomatie.externals";
/// The state event that makes a space a functional group or a community.
pub const GROUP: &str = "fr.diplomatie.group";
/// The power level of a room's managers.
pub const MANAGER_LEVEL: i64 = 100;
/// The msgtype of a correspondence in a room, and the content key holding its record.
pub const MSGTYPE: &str = "fr.diplomatie.correspondence";
/// The content key telling how a copy was delivered (`{"as": ..., "group": ...}`).
pub const DELIVERY: &str = "fr.diplomatie.delivery";
/// The state event that makes a space or room part of a crisis cell (its cell, its role, and
/// whether the cell is active or stood down).
pub const CRISIS_CELL: &str = "fr.diplomatie.crisis.cell";
/// A crisis cell's alert: every member's devices notify it, whatever they muted.
pub const CRISIS_ALERT: &str = "fr.diplomatie.crisis.alert";
/// A crisis cell's situation report (state of its situation room).
pub const CRISIS_SITREP: &str = "fr.diplomatie.crisis.sitrep";
/// The server's push rule for crisis alerts, first of every user's rules.
pub const CRISIS_ALERT_RULE: &str = ".fr.diplomatie.crisis.alert";
/// The localpart of the organisation's service account.
pub const SYSTEM_LOCALPART: &str = "diplomatie";

/// Whether an alias localpart is of the organisation's namespaces (`g.<group>...`,
/// `c.<community>...`, and crisis cells' `x.<cell>...`): those aliases are the service
/// account's alone, so that nobody takes a group's or community's name before it exists, nor
/// points a room of it elsewhere.
pub fn is_organisation_alias(localpart: &str) -> bool {
    localpart.starts_with("g.") || localpart.starts_with("c.") || localpart.starts_with("x.")
}
