//! The portal's rules, as pure decisions over data.
//!
//! Nothing here touches the database, the network or Matrix types: the server gathers the
//! facts (who the person is, what the room is) and asks. Each decision is either `Ok(())` or a
//! [`Refusal`] whose text is shown to the user as the `error` of an `M_FORBIDDEN`.
//!
//! The facts:
//! - a person's **clearance** (NP, not protected; DR, restricted distribution) and **kind**
//!   (an agent, or an external qualified person: NGO, think tank, company);
//! - a device's DR flag (an approved terminal);
//! - a room's (or space's) **classification** (NP or DR), whether it is open to externals,
//!   encrypted, and whether it already holds content.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A clearance (of a person) or a classification (of a room). `DR` is above `NP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Non protégé: not protected.
    #[default]
    NP,
    /// Diffusion restreinte: restricted distribution.
    DR,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "NP" => Some(Level::NP),
            "DR" => Some(Level::DR),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::NP => "NP",
            Level::DR => "DR",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of account a person has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// A public servant of the ministry or of another administration.
    #[default]
    Agent,
    /// An external qualified person, invited to part of the portal.
    External,
}

impl AccountKind {
    pub fn parse(s: &str) -> Option<AccountKind> {
        match s {
            "agent" => Some(AccountKind::Agent),
            "external" => Some(AccountKind::External),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Agent => "agent",
            AccountKind::External => "external",
        }
    }
}

/// A person as the rules see them. Users of other servers are agents whose clearance is DR
/// only when their server is on the DR allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Person {
    pub clearance: Level,
    pub kind: AccountKind,
}

/// A room or a space as the rules see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Room {
    pub classification: Level,
    /// Explicitly opened to external qualified persons.
    pub externals: bool,
    pub encrypted: bool,
    /// Messages were already sent in it.
    pub has_content: bool,
    /// End-to-end encrypted with MLS (set at its creation): only the delivery service's events.
    pub mls: bool,
}

/// How a person would come into a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Invite,
    Join,
    Knock,
    /// Reading a world-readable room without joining it (MSC2753 peeking).
    Peek,
}

impl Entry {
    fn verb(self) -> &'static str {
        match self {
            Entry::Invite => "be invited to",
            Entry::Join => "join",
            Entry::Knock => "knock on",
            Entry::Peek => "peek into",
        }
    }
}

/// Why something is refused, in words for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

pub type Decision = Result<(), Refusal>;

fn refuse(reason: impl Into<String>) -> Decision {
    Err(Refusal(reason.into()))
}

/// Message types a DR room accepts outside encryption: the envelope of encrypted content, and
/// redactions (which carry nothing but a reference).
const CLEAR_TYPES_IN_DR: &[&str] = &["m.room.encrypted", "m.room.redaction"];

/// Message types an MLS room accepts: MLS ciphertext and commits (public key material, no
/// content), which only the delivery service writes, and redactions.
const MLS_TYPES: &[&str] = &["fr.diplomatie.mls.message", "fr.diplomatie.mls.commit", "m.room.redaction"];

/// May `person` come into `room` (invite, join, knock, including a join allowed through a
/// restricted space)?
pub fn may_enter(person: Person, room: Room, entry: Entry) -> Decision {
    if person.kind == AccountKind::External {
        if room.classification == Level::DR {
            return refuse(format!("External persons cannot {} a DR (restricted distribution) room", entry.verb()));
        }
        if !room.externals {
            return refuse(format!("This room is not open to external persons; they cannot {} it", entry.verb()));
        }
    }
    if room.classification == Level::DR && person.clearance < Level::DR {
        return refuse(format!(
            "This room is classified DR (restricted distribution): a user without DR clearance cannot {} it",
            entry.verb()
        ));
    }
    Ok(())
}

/// May a message event of `event_type` be sent into `room` from a device whose DR flag is
/// `device_dr`? State events are judged by [`may_set_state`].
pub fn may_send(room: Room, event_type: &str, device_dr: bool, require_dr_device: bool) -> Decision {
    if room.mls {
        if !MLS_TYPES.contains(&event_type) {
            return refuse("This room is end-to-end encrypted with MLS: send through /_diplomatie/client/v1/mls");
        }
        return Ok(());
    }
    if room.classification != Level::DR {
        return Ok(());
    }
    if require_dr_device && !device_dr {
        return refuse("This device is not approved for DR (restricted distribution) content");
    }
    if !CLEAR_TYPES_IN_DR.contains(&event_type) {
        return refuse("A DR (restricted distribution) room only accepts encrypted messages");
    }
    Ok(())
}

/// May the classification of `room` change from `room.classification` to `new`, set by a
/// sender who is (`manager`) or is not one of its managers? With `dr_needs_mls` (the
/// `portal.dr_rooms_mls` setting), only an MLS room may be DR.
pub fn may_classify(room: Room, new: Level, manager: bool, dr_needs_mls: bool) -> Decision {
    if !manager {
        return refuse("Only a manager may set the classification of a room");
    }
    if new == Level::DR && dr_needs_mls && !room.mls {
        return refuse("DR rooms are MLS rooms here: create the room as DR (an MLS room from its creation)");
    }
    if new < room.classification && room.has_content {
        return refuse("The classification of a room cannot be lowered once it holds messages");
    }
    if new == Level::DR && !room.encrypted {
        return refuse("A DR (restricted distribution) room must be encrypted first");
    }
    if new == Level::DR && room.externals {
        return refuse("A room open to external persons cannot be classified DR");
    }
    Ok(())
}

/// May `room` be opened to external persons?
pub fn may_open_to_externals(room: Room, manager: bool) -> Decision {
    if !manager {
        return refuse("Only a manager may open a room to external persons");
    }
    if room.classification == Level::DR {
        return refuse("A DR (restricted distribution) room cannot be opened to external persons");
    }
    Ok(())
}

/// May encryption be left out of a room being created with `classification`? (A DR room is
/// encrypted from its creation.)
pub fn may_create(classification: Level, encrypted: bool, externals: bool) -> Decision {
    if classification == Level::DR && !encrypted {
        return refuse("A DR (restricted distribution) room must be encrypted from its creation");
    }
    if classification == Level::DR && externals {
        return refuse("A DR (restricted distribution) room cannot be open to external persons");
    }
    Ok(())
}

/// May `room` be shared with another server (events sent, joins and invites accepted), given
/// whether that server is on the DR allow-list of the configuration?
pub fn may_federate(room: Room, server_on_dr_allowlist: bool) -> Decision {
    if room.classification == Level::DR && !server_on_dr_allowlist {
        return refuse("This DR (restricted distribution) room is not shared with that server");
    }
    Ok(())
}

/// May someone be invited into `room` by an e-mail address (a third-party invite, through an
/// identity server)? Not into a DR room: whoever binds the address joins, and nobody vouched
/// for their clearance.
pub fn may_invite_by_address(room: Room) -> Decision {
    if room.classification == Level::DR {
        return refuse("A DR (restricted distribution) room admits nobody invited by e-mail address");
    }
    Ok(())
}

/// Whether `room` may appear in the public room directory and in search results of people
/// who are not in it.
pub fn may_be_listed(room: Room) -> bool {
    room.classification != Level::DR
}

/// Whether `person` may search the internal user directory.
pub fn may_see_user_directory(person: Person) -> bool {
    person.kind == AccountKind::Agent
}

/// Who changes a clearance, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    /// A server administrator (or the server itself, from its command line).
    pub admin: bool,
    /// A manager of the target's primary functional group.
    pub manages_primary_group: bool,
    /// The target themselves.
    pub is_target: bool,
}

/// May someone set the clearance of a person or the DR flag of one of their devices?
/// Administrators may; managers of the person's primary functional group may, when delegation
/// is on, and only up to DR for agents (an external is never cleared DR). Nobody raises their
/// own clearance nor approves their own device for DR, administrators and managers included:
/// that takes someone else. Lowering one's own is allowed.
pub fn may_set_clearance(actor: Actor, delegated: bool, target: Person, new: Level, raises: bool) -> Decision {
    if target.kind == AccountKind::External && new == Level::DR {
        return refuse("External persons cannot be cleared DR");
    }
    if actor.is_target && raises {
        return refuse("Nobody may raise their own clearance or approve their own device: ask an administrator");
    }
    let (admin, manages_primary_group) = (actor.admin, actor.manages_primary_group);
    if admin || manages_primary_group && delegated {
        return Ok(());
    }
    refuse("Only an administrator or a delegated manager of the user's functional group may set clearances")
}

/// May `person` create a community of interest? Agents may; external persons may not.
pub fn may_create_community(person: Person) -> Decision {
    if person.kind == AccountKind::External {
        return refuse("External persons cannot create communities");
    }
    Ok(())
}

/// May one of `person`'s devices be approved for DR content? Only a DR-cleared person's.
pub fn may_approve_device(person: Person) -> Decision {
    if person.clearance < Level::DR {
        return refuse("The user has no DR clearance: their devices cannot be approved for DR");
    }
    Ok(())
}

/// May `person`'s account become an external person's? Not while it is cleared DR.
pub fn may_make_external(person: Person) -> Decision {
    if person.clearance == Level::DR {
        return refuse("External persons cannot be cleared DR: lower the clearance first");
    }
    Ok(())
}

/// May `author` dispatch a formal correspondence of classification `level` from a group they
/// are (`member`) or are not a member of, asked from a device that is (`device_dr`) or is not
/// approved for DR?
pub fn may_send_correspondence(
    author: Person,
    member: bool,
    level: Level,
    device_dr: bool,
    require_dr_device: bool,
) -> Decision {
    if author.kind == AccountKind::External {
        return refuse("External persons cannot send formal correspondence");
    }
    if !member {
        return refuse("Only members of the sending group may send its correspondence");
    }
    if level == Level::DR && author.clearance != Level::DR {
        return refuse("You are not cleared for DR (restricted distribution) correspondence");
    }
    if level == Level::DR && require_dr_device && !device_dr {
        return refuse("This device is not approved for DR (restricted distribution) content");
    }
    Ok(())
}

/// May a correspondence of classification `level` be addressed to a group whose space is
/// `group`?
pub fn may_address(group: Room, level: Level) -> Decision {
    if level > group.classification {
        return refuse("This group lacks DR (restricted distribution) clearance");
    }
    Ok(())
}

/// May a sealed record of classification `level` (a formal correspondence the server posts) be
/// posted in `room`? Never DR content into a room below DR; a DR room takes such records in
/// clear: the server sealed them and keeps them as the archive.
pub fn may_post_record(room: Room, level: Level) -> Decision {
    if level > room.classification {
        return refuse("DR (restricted distribution) content never goes into a room below DR");
    }
    Ok(())
}

/// What an agent's journal (an NP room) shows of a correspondence of classification `level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalView {
    /// Subject, sender and text.
    Full,
    /// Only its reference and where to read it (DR content stays in DR rooms).
    Pointer,
    Nothing,
}

/// What the journal of `person` shows of a correspondence of classification `level`.
pub fn journal_view(person: Person, level: Level) -> JournalView {
    match (person.kind, level, person.clearance) {
        (AccountKind::External, _, _) => JournalView::Nothing,
        (_, Level::NP, _) => JournalView::Full,
        (_, Level::DR, Level::DR) => JournalView::Pointer,
        (_, Level::DR, Level::NP) => JournalView::Nothing,
    }
}

/// Whether `address` is an e-mail address the portal sends to (a correspondence's external
/// addressee, a bridged room's recipient, a mail's sender to answer): `local@domain.tld`, at
/// most 254 characters, without spaces, controls or the characters that separate or quote
/// addresses in a mail header, so that it can stand alone in an envelope and in a header.
pub fn is_mail_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && address.len() <= 254
        && !address.chars().any(|c| c.is_control() || c.is_whitespace() || "<>,;\"()[]\\:".contains(c))
}

#[cfg(test)]
mod tests {

    #[test]
    fn mail_addresses_are_plain_addresses() {
        assert!(is_mail_address("directrice@ngo.example"));
        assert!(is_mail_address("desk@partner.example"));
        for bad in [
            "directrice",
            "desk",
            "@partner.example",
            "a@b",
            "a b@c.example",
            "a@c.example\r\nBcc: x@y.z",
            "<a@b.example>",
            "a@b.example,c@d.example",
            "a@.example",
        ] {
            assert!(!is_mail_address(bad), "{bad}");
        }
    }
    use super::*;

    const NP_AGENT: Person = Person { clearance: Level::NP, kind: AccountKind::Agent };
    const DR_AGENT: Person = Person { clearance: Level::DR, kind: AccountKind::Agent };
    const EXTERNAL: Person = Person { clearance: Level::NP, kind: AccountKind::External };

    const NP_ROOM: Room =
        Room { classification: Level::NP, externals: false, encrypted: false, has_content: false, mls: false };
    const OPEN_ROOM: Room =
        Room { classification: Level::NP, externals: true, encrypted: false, has_content: true, mls: false };
    const DR_ROOM: Room =
        Room { classification: Level::DR, externals: false, encrypted: true, has_content: true, mls: false };

    #[test]
    fn who_may_enter() {
        let entries = [Entry::Invite, Entry::Join, Entry::Knock];
        let table: &[(Person, Room, bool)] = &[
            (NP_AGENT, NP_ROOM, true),
            (NP_AGENT, OPEN_ROOM, true),
            (NP_AGENT, DR_ROOM, false),
            (DR_AGENT, NP_ROOM, true),
            (DR_AGENT, DR_ROOM, true),
            (EXTERNAL, NP_ROOM, false),
            (EXTERNAL, OPEN_ROOM, true),
            (EXTERNAL, DR_ROOM, false),
            // Even a (wrongly) cleared external never enters a DR room.
            (Person { clearance: Level::DR, kind: AccountKind::External }, DR_ROOM, false),
        ];
        for &(person, room, allowed) in table {
            for entry in entries {
                assert_eq!(may_enter(person, room, entry).is_ok(), allowed, "{person:?} {room:?} {entry:?}");
            }
        }
    }

    #[test]
    fn invites_by_address_stay_out_of_dr_rooms() {
        assert!(may_invite_by_address(NP_ROOM).is_ok());
        assert!(may_invite_by_address(OPEN_ROOM).is_ok());
        assert!(may_invite_by_address(DR_ROOM).unwrap_err().0.contains("DR"));
    }

    #[test]
    fn refusals_say_why() {
        let e = may_enter(NP_AGENT, DR_ROOM, Entry::Knock).unwrap_err();
        assert!(e.0.contains("DR") && e.0.contains("knock on"), "{e}");
        let e = may_enter(EXTERNAL, NP_ROOM, Entry::Invite).unwrap_err();
        assert!(e.0.contains("not open to external"), "{e}");
    }

    #[test]
    fn what_may_be_sent() {
        const MLS_ROOM: Room = Room { mls: true, ..DR_ROOM };
        let table: &[(Room, &str, bool, bool, bool)] = &[
            // room, type, device flag, flag required, allowed
            (NP_ROOM, "m.room.message", false, true, true),
            (NP_ROOM, "m.reaction", false, true, true),
            (DR_ROOM, "m.room.message", true, true, false),
            (DR_ROOM, "m.reaction", true, true, false),
            (DR_ROOM, "m.room.encrypted", true, true, true),
            (DR_ROOM, "m.room.redaction", true, true, true),
            (DR_ROOM, "m.room.encrypted", false, true, false),
            (DR_ROOM, "m.room.encrypted", false, false, true),
            (DR_ROOM, "m.room.message", false, false, false),
            // An MLS room takes the delivery service's events only.
            (MLS_ROOM, "m.room.encrypted", true, true, false),
            (MLS_ROOM, "m.room.message", true, true, false),
            (MLS_ROOM, "fr.diplomatie.mls.message", true, true, true),
            (MLS_ROOM, "fr.diplomatie.mls.commit", true, true, true),
            (MLS_ROOM, "m.room.redaction", true, true, true),
        ];
        for &(room, kind, device, required, allowed) in table {
            assert_eq!(may_send(room, kind, device, required).is_ok(), allowed, "{room:?} {kind} {device} {required}");
        }
    }

    #[test]
    fn classification_changes() {
        let empty_np = Room { encrypted: true, has_content: false, ..NP_ROOM };
        let empty_dr = Room { has_content: false, ..DR_ROOM };
        let table: &[(Room, Level, bool, bool)] = &[
            // room, new level, manager, allowed
            (empty_np, Level::DR, true, true),
            (empty_np, Level::DR, false, false),
            (NP_ROOM, Level::DR, true, false),   // not encrypted
            (OPEN_ROOM, Level::DR, true, false), // open to externals
            (DR_ROOM, Level::NP, true, false),   // has content
            (empty_dr, Level::NP, true, true),
            (DR_ROOM, Level::DR, true, true),
            (NP_ROOM, Level::NP, true, true),
            (DR_ROOM, Level::DR, false, false),
        ];
        for &(room, new, manager, allowed) in table {
            assert_eq!(may_classify(room, new, manager, false).is_ok(), allowed, "{room:?} -> {new} manager={manager}");
        }
        // Where DR rooms must be MLS rooms, only an MLS room is (or stays) DR.
        assert!(may_classify(empty_np, Level::DR, true, true).is_err());
        assert!(may_classify(Room { mls: true, ..empty_np }, Level::DR, true, true).is_ok());
        assert!(may_classify(empty_np, Level::NP, true, true).is_ok());
    }

    #[test]
    fn creation() {
        assert!(may_create(Level::NP, false, true).is_ok());
        assert!(may_create(Level::DR, true, false).is_ok());
        assert!(may_create(Level::DR, false, false).is_err());
        assert!(may_create(Level::DR, true, true).is_err());
    }

    #[test]
    fn opening_to_externals() {
        assert!(may_open_to_externals(NP_ROOM, true).is_ok());
        assert!(may_open_to_externals(NP_ROOM, false).is_err());
        assert!(may_open_to_externals(DR_ROOM, true).is_err());
    }

    #[test]
    fn federation_and_listing() {
        assert!(may_federate(NP_ROOM, false).is_ok());
        assert!(may_federate(DR_ROOM, true).is_ok());
        assert!(may_federate(DR_ROOM, false).is_err());
        assert!(may_be_listed(NP_ROOM));
        assert!(!may_be_listed(DR_ROOM));
        assert!(may_see_user_directory(NP_AGENT));
        assert!(!may_see_user_directory(EXTERNAL));
    }

    #[test]
    fn clearance_setting() {
        type Row = (bool, bool, bool, bool, Person, Level, bool, bool);
        let table: &[Row] = &[
            // admin, manages group, oneself, delegated, target, new, raises, allowed
            (true, false, false, false, NP_AGENT, Level::DR, true, true),
            (false, true, false, true, NP_AGENT, Level::DR, true, true),
            (false, true, false, false, NP_AGENT, Level::DR, true, false),
            (false, false, false, true, NP_AGENT, Level::DR, true, false),
            (true, false, false, false, EXTERNAL, Level::DR, true, false),
            (true, false, false, false, EXTERNAL, Level::NP, false, true),
            (false, false, false, false, DR_AGENT, Level::NP, false, false),
            // Nobody raises their own: neither a manager of their own group nor an admin.
            (false, true, true, true, NP_AGENT, Level::DR, true, false),
            (true, false, true, false, NP_AGENT, Level::DR, true, false),
            (true, true, true, true, DR_AGENT, Level::DR, true, false),
            // Lowering one's own is allowed to whoever may set it.
            (false, true, true, true, DR_AGENT, Level::NP, false, true),
            (false, false, true, true, DR_AGENT, Level::NP, false, false),
        ];
        for &(admin, manages, oneself, delegated, target, new, raises, allowed) in table {
            let actor = Actor { admin, manages_primary_group: manages, is_target: oneself };
            assert_eq!(
                may_set_clearance(actor, delegated, target, new, raises).is_ok(),
                allowed,
                "{actor:?} delegated={delegated} {target:?} {new} raises={raises}"
            );
        }
    }

    #[test]
    fn accounts_and_devices() {
        assert!(may_create_community(NP_AGENT).is_ok());
        assert!(may_create_community(EXTERNAL).is_err());
        assert!(may_approve_device(DR_AGENT).is_ok());
        assert!(may_approve_device(NP_AGENT).is_err());
        assert!(may_make_external(NP_AGENT).is_ok());
        assert!(may_make_external(DR_AGENT).is_err());
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("DR"), Some(Level::DR));
        assert_eq!(Level::parse("dr"), None);
        assert!(Level::DR > Level::NP);
        assert_eq!(AccountKind::parse("external"), Some(AccountKind::External));
        assert_eq!(AccountKind::External.as_str(), "external");
    }

    #[test]
    fn who_may_send_correspondence() {
        let table = [
            (NP_AGENT, true, Level::NP, false, true),
            (NP_AGENT, false, Level::NP, false, false),
            (NP_AGENT, true, Level::DR, true, false),
            (DR_AGENT, true, Level::DR, true, true),
            (DR_AGENT, true, Level::DR, false, false),
            (EXTERNAL, true, Level::NP, false, false),
        ];
        for (person, member, level, device, allowed) in table {
            let got = may_send_correspondence(person, member, level, device, true);
            assert_eq!(got.is_ok(), allowed, "{person:?} member={member} {level} device={device}: {got:?}");
        }
        // Without approved devices required, a DR agent sends from any device.
        assert!(may_send_correspondence(DR_AGENT, true, Level::DR, false, false).is_ok());
    }

    #[test]
    fn where_correspondence_goes() {
        assert!(may_address(NP_ROOM, Level::NP).is_ok());
        assert!(may_address(DR_ROOM, Level::NP).is_ok());
        assert!(may_address(DR_ROOM, Level::DR).is_ok());
        let refused = may_address(NP_ROOM, Level::DR).unwrap_err();
        assert!(refused.0.contains("lacks DR"), "{refused:?}");
        assert!(may_post_record(DR_ROOM, Level::DR).is_ok());
        assert!(may_post_record(OPEN_ROOM, Level::NP).is_ok());
        assert!(may_post_record(NP_ROOM, Level::DR).is_err());
        assert!(may_post_record(OPEN_ROOM, Level::DR).is_err());
    }

    #[test]
    fn what_journals_show() {
        assert_eq!(journal_view(NP_AGENT, Level::NP), JournalView::Full);
        assert_eq!(journal_view(NP_AGENT, Level::DR), JournalView::Nothing);
        assert_eq!(journal_view(DR_AGENT, Level::DR), JournalView::Pointer);
        assert_eq!(journal_view(DR_AGENT, Level::NP), JournalView::Full);
        assert_eq!(journal_view(EXTERNAL, Level::NP), JournalView::Nothing);
    }
}
