//! What people read and type: the readable fallback of a record (every standard client shows
//! `body` / `formatted_body`), journal entries, and the draft form agents type in a
//! correspondence room.
//!
//! A draft is a message whose first line names the kind, followed by header lines, a blank
//! line and the body:
//!
//! ```text
//! !telegram
//! Action: dgm, dfae
//! Information: cabinet
//! Tags: energy, balkans
//! Classification: NP
//! Subject: Gas supply in the Balkans
//! Reply-to: DGM-2026-000012
//! Attachments: mxc://example.org/abc
//!
//! The text of the telegram...
//! ```
//!
//! First lines: `!telegram` / `!télégramme`, `!note`, `!letter` / `!courrier`. Header names
//! also in French: `Pour action`, `Pour information`, `Mots-clés`, `Objet`, `Réponse à`,
//! `Pièces jointes`.
//!
//! A draft that names its signatory (`Signatory:` / `Signataire:`, and its approvers in order,
//! `Approvers:` / `Visas:`) opens a signature circuit instead of waiting for its author's ✅;
//! `Circuit: C-...` submits a returned circuit's draft again.

use diplomatie_policies::JournalView;
use serde_json::{json, Value};

use super::{
    model::{Addressee, Composition, Kind},
    status::ItemStatus,
};
use crate::names::MSGTYPE;
use crate::{Error, Result};

/// The commands that start a draft, with their kind.
const DRAFT_STARTS: &[(&str, Kind)] = &[
    ("!telegram", Kind::Telegram),
    ("!télégramme", Kind::Telegram),
    ("!telegramme", Kind::Telegram),
    ("!note", Kind::DiplomaticNote),
    ("!letter", Kind::FormalLetter),
    ("!courrier", Kind::FormalLetter),
];

/// Whether a message is a draft (its first line names a kind).
pub fn is_draft(body: &str) -> bool {
    let first = body.lines().next().unwrap_or("").trim().to_lowercase();
    DRAFT_STARTS.iter().any(|(s, _)| first == *s)
}

fn list(value: &str) -> Vec<String> {
    value.split([',', ';']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A draft as typed: the composition, and the circuit it goes through, if any.
#[derive(Debug, Default)]
pub struct TypedDraft {
    pub composition: Composition,
    /// Approvers in order (`Visas:`).
    pub approvers: Vec<String>,
    /// Who signs (`Signataire:`): the draft opens a circuit.
    pub signatory: Option<String>,
    /// A returned circuit this draft amends (`Circuit:`).
    pub circuit: Option<String>,
}

/// Parses a draft typed in the correspondence room of group `from` (its circuit headers refused).
pub fn parse_draft(body: &str, from: &str) -> Result<Composition> {
    let typed = parse_typed_draft(body, from)?;
    if typed.signatory.is_some() || typed.circuit.is_some() || !typed.approvers.is_empty() {
        return Err(Error::invalid_param("Circuit headers (Visas:, Signataire:, Circuit:) are not read here"));
    }
    Ok(typed.composition)
}

/// Parses a draft typed in the correspondence room of group `from`, with its circuit headers.
pub fn parse_typed_draft(body: &str, from: &str) -> Result<TypedDraft> {
    let mut lines = body.lines();
    let first = lines.next().unwrap_or("").trim().to_lowercase();
    let kind = DRAFT_STARTS
        .iter()
        .find(|(s, _)| first == *s)
        .map(|(_, k)| *k)
        .ok_or_else(|| Error::invalid_param("A draft starts with !telegram, !note or !letter"))?;
    let mut typed = TypedDraft::default();
    let c = &mut typed.composition;
    c.kind = kind.as_str().to_owned();
    c.from = from.to_owned();
    let mut body_lines = Vec::new();
    let mut in_body = false;
    for line in lines {
        if in_body {
            body_lines.push(line);
            continue;
        }
        if line.trim().is_empty() {
            in_body = true;
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::invalid_param(format!(
                "Line {line:?}: a header is `Name: value`; leave a blank line before the text"
            )));
        };
        let value = value.trim();
        match name.trim().to_lowercase().as_str() {
            "action" | "pour action" | "to" => c.action.extend(list(value)),
            "information" | "info" | "pour information" | "cc" => c.information.extend(list(value)),
            "tags" | "mots-clés" | "mots-cles" => c.tags.extend(list(value)),
            "classification" => c.classification = Some(value.to_owned()),
            "subject" | "objet" => c.subject = value.to_owned(),
            "reply-to" | "réponse à" | "reponse a" | "in-reply-to" => c.in_reply_to = Some(value.to_owned()),
            "attachments" | "pièces jointes" | "pieces jointes" => c.attachments.extend(list(value)),
            "external" | "externe" | "courriel" | "e-mail" => c.external.extend(list(value)),
            "approvers" | "visas" | "visa" => typed.approvers.extend(list(value)),
            "signatory" | "signataire" => typed.signatory = Some(value.to_owned()),
            "circuit" => typed.circuit = Some(value.to_owned()),
            other => return Err(Error::invalid_param(format!("Unknown header {other:?}"))),
        }
    }
    c.body = body_lines.join("\n").trim().to_owned();
    if !typed.approvers.is_empty() && typed.signatory.is_none() && typed.circuit.is_none() {
        return Err(Error::missing_param("A circuit names its signatory (Signataire:)"));
    }
    Ok(typed)
}

/// The preview the service answers to a draft.
pub fn preview(c: &Composition) -> String {
    format!("{}\n\nRéagissez avec ✅ à ce message pour signer et envoyer.", summary(c))
}

/// What a draft says, as its preview and a circuit's notices show it.
pub fn summary(c: &Composition) -> String {
    let kind = Kind::parse(&c.kind).map(Kind::label).unwrap_or("?");
    let mut out = format!(
        "Aperçu — {kind} ({}) de {}\nObjet : {}\n",
        c.classification.as_deref().unwrap_or("NP"),
        c.from,
        c.subject
    );
    if !c.action.is_empty() {
        out.push_str(&format!("Pour action : {}\n", c.action.join(", ")));
    }
    if !c.information.is_empty() {
        out.push_str(&format!("Pour information : {}\n", c.information.join(", ")));
    }
    if !c.tags.is_empty() {
        out.push_str(&format!("Mots-clés : {}\n", c.tags.join(", ")));
    }
    if !c.external.is_empty() {
        out.push_str(&format!("Destinataires externes (courriel) : {}\n", c.external.join(", ")));
    }
    if let Some(r) = &c.in_reply_to {
        out.push_str(&format!("En réponse à : {r}\n"));
    }
    out.push_str(&format!("\n{}", c.body));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn field<'a>(record: &'a Value, name: &str) -> &'a str {
    record.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn names(record: &Value, name: &str) -> String {
    record
        .get(name)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// The plain and HTML text of a record: every field a reader (and the search engine) needs.
fn rendering(record: &Value, kind: Kind) -> (String, String) {
    let reference = field(record, "reference");
    let level = field(record, "classification");
    let mut plain = format!(
        "{} {reference} [{level}]\nDe : {} ({})\nObjet : {}\n",
        kind.label(),
        field(record, "from"),
        field(record, "author"),
        field(record, "subject")
    );
    let mut html = format!(
        "<p><strong>{} {}</strong> [{}]<br>De : {} ({})<br>Objet : <strong>{}</strong>",
        kind.label(),
        escape(reference),
        escape(level),
        escape(field(record, "from")),
        escape(field(record, "author")),
        escape(field(record, "subject"))
    );
    for (label, key) in [
        ("Pour action", "action"),
        ("Pour information", "information"),
        ("Destinataires externes", "external"),
        ("Mots-clés", "tags"),
        ("Pièces jointes", "attachments"),
    ] {
        let v = names(record, key);
        if !v.is_empty() {
            plain.push_str(&format!("{label} : {v}\n"));
            html.push_str(&format!("<br>{label} : {}", escape(&v)));
        }
    }
    if let Some(r) = record.get("in_reply_to").and_then(Value::as_str) {
        plain.push_str(&format!("En réponse à : {r}\n"));
        html.push_str(&format!("<br>En réponse à : {}", escape(r)));
    }
    let body = field(record, "body");
    plain.push('\n');
    plain.push_str(body);
    html.push_str("</p>");
    match record.get("html").and_then(Value::as_str) {
        Some(h) => html.push_str(h),
        None => html.push_str(&format!("<p>{}</p>", escape(body).replace('\n', "<br>"))),
    }
    (plain, html)
}

/// The content of a copy of a record in a group's or community's room.
pub(super) fn room_copy(record: &Value, kind: Kind, role: &str) -> Value {
    let (plain, html) = rendering(record, kind);
    let marker = match role {
        "action" => "[POUR ACTION] ",
        "information" => "[POUR INFORMATION] ",
        "community" => "[PARTAGÉ] ",
        _ => "",
    };
    json!({
        "msgtype": MSGTYPE,
        "body": format!("{marker}{plain}"),
        "format": "org.matrix.custom.html",
        "formatted_body": format!("{}{html}", escape(marker)),
        MSGTYPE: record,
    })
}

/// A journal entry: `section` is `action` (with the group and its item's status: one line,
/// the text being in the group's room) or `interest` (the whole correspondence, which the
/// agent may read nowhere else). A pointer (DR) shows only the reference and where to read it.
pub(super) fn journal_entry(
    record: &Value,
    kind: Kind,
    view: JournalView,
    section: &str,
    item: Option<(&Addressee, &ItemStatus)>,
) -> Value {
    let reference = field(record, "reference");
    let head = match item {
        Some((group, status)) => format!("📌 À traiter par {} — {} — ", group.name, status.label()),
        None => "🏷 Centres d'intérêt — ".to_owned(),
    };
    let journal = json!({
        "section": section,
        "reference": reference,
        "group": item.map(|(g, _)| g.slug.clone()),
        "status": item.map(|(_, s)| s.status.as_str()),
        "assignee": item.and_then(|(_, s)| s.assignee.clone()),
    });
    if view == JournalView::Pointer {
        let body = format!(
            "{head}{} {reference} [DR] : à lire dans le salon de correspondance du groupe (diffusion restreinte).",
            kind.label()
        );
        return json!({ "msgtype": "m.notice", "body": body, "fr.diplomatie.journal": journal });
    }
    if let Some((group, _)) = item {
        // What a group must act on: one line each; the text is in the group's room.
        let line = format!(
            "{} {reference} [{}] — {} (de {}) — à lire dans le salon de correspondance de {}",
            kind.label(),
            field(record, "classification"),
            field(record, "subject"),
            field(record, "from"),
            group.name
        );
        let link = format!("https://matrix.to/#/{}", group.room);
        return json!({
            "msgtype": "m.notice",
            "body": format!("{head}{line}"),
            "format": "org.matrix.custom.html",
            "formatted_body": format!(
                "{}<strong>{} {}</strong> [{}] — {} (de {}) — <a href=\"{}\">salon de correspondance de {}</a>",
                escape(&head),
                kind.label(),
                escape(reference),
                escape(field(record, "classification")),
                escape(field(record, "subject")),
                escape(field(record, "from")),
                escape(&link),
                escape(&group.name)
            ),
            "fr.diplomatie.journal": journal,
        });
    }
    let (plain, html) = rendering(record, kind);
    json!({
        "msgtype": MSGTYPE,
        "body": format!("{head}{plain}"),
        "format": "org.matrix.custom.html",
        "formatted_body": format!("<p>{}</p>{html}", escape(&head)),
        MSGTYPE: record,
        "fr.diplomatie.journal": journal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_headers_parse_only_where_circuits_are_opened() {
        let text = "!note\nAction: dgm\nVisas: @b:x, @c:x\nSignataire: @d:x\n\nTexte";
        let typed = parse_typed_draft(text, "paris").unwrap();
        assert_eq!(
            (typed.approvers, typed.signatory.as_deref()),
            (vec!["@b:x".to_owned(), "@c:x".to_owned()], Some("@d:x"))
        );
        assert_eq!(typed.composition.body, "Texte");
        assert!(parse_draft(text, "paris").is_err());
        assert!(parse_typed_draft("!note\nVisas: @b:x\n\nTexte", "g").unwrap_err().to_string().contains("Signataire"));
        let again = parse_typed_draft("!note\nCircuit: C-1\nVisas: @b:x\n\nTexte", "g").unwrap();
        assert_eq!(again.circuit.as_deref(), Some("C-1"));
    }

    #[test]
    fn drafts_parse() {
        let text = "!Télégramme\nPour action: dgm, dfae\nInformation: cabinet\nTags: Energy; #balkans\n\
                    Objet: Gaz\nClassification: NP\n\nLigne 1\n\nLigne 2";
        let c = parse_draft(text, "paris").unwrap();
        assert_eq!(c.kind, "telegram");
        assert_eq!(c.from, "paris");
        assert_eq!(c.action, vec!["dgm", "dfae"]);
        assert_eq!(c.information, vec!["cabinet"]);
        assert_eq!(c.tags, vec!["Energy", "#balkans"]);
        assert_eq!(c.subject, "Gaz");
        assert_eq!(c.body, "Ligne 1\n\nLigne 2");
        assert!(is_draft(text));
        assert!(!is_draft("hello"));
        assert!(parse_draft("!note\nColour: red\n\nx", "g").unwrap_err().to_string().contains("Unknown header"));
        assert!(parse_draft("!note\nno colon here\n\nx", "g").is_err());
    }

    #[test]
    fn renderings_escape_html_and_name_every_field() {
        let record = json!({
            "reference": "DGM-2026-000001", "classification": "NP", "from": "dgm", "author": "@a:x",
            "subject": "<b>x</b>", "body": "a & b", "action": ["g1"], "tags": ["t"],
        });
        let (plain, html) = rendering(&record, Kind::Telegram);
        assert!(plain.contains("DGM-2026-000001") && plain.contains("Pour action : g1") && plain.contains("a & b"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && html.contains("a &amp; b"));
    }
}
