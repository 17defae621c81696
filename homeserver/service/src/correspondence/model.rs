//! The vocabulary of formal correspondence: its kinds, a composition before it is sealed, and
//! the organisation's rooms as dispatch addresses them. The other files of this module use it;
//! it uses none of them.

use ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};

/// The three kinds of formal correspondence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Telegram,
    DiplomaticNote,
    FormalLetter,
}

impl Kind {
    /// Accepts the record's names and the words agents type (French or English).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim().to_lowercase().as_str() {
            "telegram" | "télégramme" | "telegramme" | "td" => Some(Kind::Telegram),
            "diplomatic_note" | "note" | "note diplomatique" | "note_diplomatique" => Some(Kind::DiplomaticNote),
            "formal_letter" | "letter" | "courrier" | "courrier formel" | "courrier_formel" => Some(Kind::FormalLetter),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telegram => "telegram",
            Kind::DiplomaticNote => "diplomatic_note",
            Kind::FormalLetter => "formal_letter",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Telegram => "Télégramme diplomatique",
            Kind::DiplomaticNote => "Note diplomatique",
            Kind::FormalLetter => "Courrier formel",
        }
    }
}

/// What an author asks to send (the API's body, or a draft typed in a correspondence room).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Composition {
    pub kind: String,
    /// The sending group's slug.
    pub from: String,
    pub subject: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Addressee groups for action (slugs).
    #[serde(default)]
    pub action: Vec<String>,
    /// Addressee groups for information (slugs).
    #[serde(default)]
    pub information: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// "NP" (default) or "DR".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    /// Media (`mxc://` URIs).
    #[serde(default)]
    pub attachments: Vec<String>,
    /// The reference of the correspondence this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// External addressees (e-mail addresses, NP only): the e-mail bridge, when the sending
    /// group's correspondence room is bridged, sends them the correspondence as a formal letter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<String>,
}

/// A draft submitted to a signature circuit: the approvers in order, then the signatory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitRequest {
    pub correspondence: Composition,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub signatory: String,
}

/// A circuit as its people see it.
#[derive(Clone, Debug, Serialize)]
pub struct CircuitView {
    pub circuit_id: String,
    pub group: String,
    pub drafter: String,
    /// `pending`, `returned` (refused, back with its drafter) or `signed` (dispatched).
    pub status: String,
    pub approvers: Vec<String>,
    pub signatory: String,
    /// Whose decision the circuit waits for.
    pub awaiting: Option<String>,
    pub draft: Composition,
    /// Every decision so far, each signed by whoever gave it.
    pub decisions: Vec<serde_json::Value>,
    pub reference: Option<String>,
    /// The circuit's notice in the group's correspondence room (reactions act on it).
    pub event_id: Option<String>,
}

/// A decision in a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Refuse,
    Sign,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Refuse => "refused",
            Decision::Sign => "signed",
        }
    }
}

/// Who signs for a functional group, and as what (head of post, director).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Signatory {
    pub user_id: String,
    pub title: String,
}

/// A delegation asked for: `delegate` acts for the caller in circuits until `until_ts`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationRequest {
    pub delegate: String,
    #[serde(default)]
    pub from_ts: Option<i64>,
    pub until_ts: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DelegationView {
    pub delegation_id: String,
    pub delegator: String,
    pub delegate: String,
    pub from_ts: i64,
    pub until_ts: i64,
}

/// A group the correspondence goes to, and how.
#[derive(Clone, Debug)]
pub(crate) struct Addressee {
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) space: OwnedRoomId,
    /// Its correspondence room (groups) or general room (communities).
    pub(crate) room: OwnedRoomId,
    pub(crate) role: &'static str,
}

/// A group's or community's space, name, and one of its rooms.
pub(crate) type OrgRoom = (OwnedRoomId, String, OwnedRoomId);

/// A community, as dispatch matches it.
#[derive(Clone, Debug)]
pub(crate) struct Community {
    pub(crate) addressee: Addressee,
    pub(crate) tags: Vec<String>,
    pub(crate) facts: diplomatie_policies::Room,
}

/// A tag as stored and matched: trimmed, lower case, without a leading `#`.
pub fn normalise_tag(tag: &str) -> String {
    tag.trim().trim_start_matches('#').to_lowercase()
}

/// What an agent's journal holds besides its room: the action items of their groups, and the
/// tags they follow.
#[derive(Debug, Serialize)]
pub struct JournalItems {
    pub action: Vec<ActionItem>,
    pub tags: Vec<String>,
}

/// A correspondence one of the agent's groups must act on (its subject hidden above the
/// agent's clearance).
#[derive(Debug, Serialize)]
pub struct ActionItem {
    pub reference: String,
    pub group: String,
    pub status: String,
    pub assignee: Option<String>,
    pub updated_by: Option<String>,
    pub updated_ts: i64,
    pub subject: Option<String>,
}

/// A DR correspondence the author's client signed and sent, MLS-encrypted, into each group's
/// DR room: what the server may see of it (`POST /correspondence/encrypted`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedDispatch {
    pub reference: String,
    pub kind: String,
    pub from: String,
    #[serde(default)]
    pub action: Vec<String>,
    #[serde(default)]
    pub information: Vec<String>,
    /// The MLS message carrying the record in each group's DR room: `{group: event id}`,
    /// the sending group included.
    pub copies: std::collections::BTreeMap<String, ruma::OwnedEventId>,
}
