//! Inbound mail: from an accepted SMTP transaction to events in the rooms of its recipients.
//!
//! Everything that can refuse a mail (its form, a loop, SPF/DKIM/DMARC) is decided before
//! anything is posted; posting is idempotent (transaction ids derived from the Message-ID),
//! so a mail answered 451 and sent again by the client lands once, whole.

use std::{borrow::Cow, net::IpAddr};

use diplomatie_policies::is_mail_address;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, SpfResult};
use mail_parser::{Message, MessageParser, MimeHeaders};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{matrix::errcode, smtp::Reply, store::Mail, Bridge};

/// What the SMTP session gathered for one message.
pub struct Envelope {
    pub peer: IpAddr,
    pub helo: String,
    /// The reverse path, lower case; empty for a bounce.
    pub mail_from: String,
    /// The rooms of the accepted recipients.
    pub rooms: Vec<String>,
}

/// Loops end here: more `Received:` headers than any honest path has.
const MAX_HOPS: usize = 25;
/// The header each mail the bridge sends carries, naming its domain.
pub const LOOP_HEADER: &str = "X-Diplomatie-Loop";

/// SPF, DKIM and DMARC of one message, as shown beside it.
pub struct Verdict {
    pub spf: &'static str,
    pub dkim: &'static str,
    pub dmarc: &'static str,
    /// Fails DMARC, or SPF when its domain publishes no DMARC policy.
    pub failed: bool,
}

impl Verdict {
    fn json(&self) -> Value {
        json!({ "spf": self.spf, "dkim": self.dkim, "dmarc": self.dmarc, "pass": !self.failed })
    }

    fn line(&self) -> String {
        format!("SPF {} · DKIM {} · DMARC {}", self.spf, self.dkim, self.dmarc)
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// A reference (`<id>`), without its angle brackets.
fn bare(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>')
}

/// Whether a mail was written by a program rather than a person (RFC 3834, bounces, lists):
/// it is shown as a notice and never answered.
fn automatic(mail_from: &str, message: &Message) -> bool {
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    mail_from.is_empty()
        || header("Auto-Submitted").is_some_and(|v| !v.starts_with("no"))
        || header("Precedence").is_some_and(|v| ["bulk", "junk", "list", "auto_reply"].contains(&v.as_str()))
        || header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || message
            .content_type()
            .is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart") && c.subtype() == Some("report"))
}

/// The localpart of a puppet for `address`: lower case, every character outside
/// `[a-z0-9._-]` written `=xx` (its UTF-8 bytes in hexadecimal).
pub fn puppet_localpart(prefix: &str, address: &str) -> String {
    let mut out = String::from(prefix);
    for b in address.to_lowercase().bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("={b:02x}")),
        }
    }
    out
}

/// A header value the bridge writes or shows: one line, no control characters.
pub fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned()
}

fn txn_id(message_id: &str, room: &str, part: usize) -> String {
    let digest = Sha256::digest(format!("{message_id}\n{room}\n{part}").as_bytes());
    format!("mail.{}", hex::encode(&digest[..16]))
}

/// The tags and attributes Matrix clients render (client-server spec, "m.room.message" HTML).
pub(crate) fn sanitise(html: &str) -> String {
    let tags = [
        "font",
        "del",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "p",
        "a",
        "ul",
        "ol",
        "sup",
        "sub",
        "li",
        "b",
        "i",
        "u",
        "strong",
        "em",
        "s",
        "code",
        "hr",
        "br",
        "div",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "caption",
        "pre",
        "span",
    ];
    ammonia::Builder::empty()
        .add_tags(tags)
        .add_tag_attributes("a", ["href"])
        .url_schemes(["https", "http", "mailto"].into())
        .link_rel(Some("noopener"))
        .clean(html)
        .to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Bridge {
    /// The room an address of the mail domain leads to.
    pub async fn recipient(&self, address: &str) -> anyhow::Result<Option<String>> {
        let Some((local, domain)) = address.rsplit_once('@') else { return Ok(None) };
        if !domain.eq_ignore_ascii_case(&self.mail_domain) {
            return Ok(None);
        }
        Ok(self.store.room_by_address(&local.to_lowercase()).await?.map(|r| r.room_id))
    }

    /// Whether the bridge sent the mail with this Message-ID (its ids are event ids).
    async fn sent_by_us(&self, message_id: &str) -> anyhow::Result<bool> {
        let Some(local) = message_id.strip_suffix(&format!("@{}", self.mail_domain)) else { return Ok(false) };
        let mail = self.store.mail_of_event(&format!("${local}")).await?;
        Ok(mail.is_some_and(|m| m.message_id == message_id))
    }

    async fn verdict(&self, env: &Envelope, data: &[u8]) -> Verdict {
        let Some(auth) = AuthenticatedMessage::parse(data) else {
            return Verdict { spf: "none", dkim: "none", dmarc: "none", failed: true };
        };
        let dkim = self.authenticator.verify_dkim(&auth).await;
        let sender = if env.mail_from.is_empty() { format!("postmaster@{}", env.helo) } else { env.mail_from.clone() };
        let spf = self
            .authenticator
            .verify_spf(mail_auth::spf::verify::SpfParameters::verify_mail_from(
                env.peer,
                &env.helo,
                &self.mail_domain,
                &sender,
            ))
            .await;
        let from_domain = sender.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
        let dmarc = self
            .authenticator
            .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(&auth, &dkim, &from_domain, &spf))
            .await;
        let dkim_result = dkim
            .iter()
            .map(|o| o.result())
            .find(|r| **r == DkimResult::Pass)
            .or_else(|| dkim.first().map(|o| o.result()))
            .unwrap_or(&DkimResult::None);
        let dmarc_result = dmarc.result();
        let failed = match &dmarc_result {
            DmarcResult::Fail(_) => !matches!(dmarc.policy(), mail_auth::dmarc::Policy::None),
            DmarcResult::None => spf.result() == SpfResult::Fail,
            _ => false,
        };
        Verdict { spf: spf_word(spf.result()), dkim: dkim_word(dkim_result), dmarc: dmarc_word(&dmarc_result), failed }
    }

    /// Posts one accepted message in its rooms; the SMTP reply to give.
    pub async fn deliver(&self, env: Envelope, data: Vec<u8>) -> Reply {
        match self.deliver_checked(&env, &data).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "posting a mail failed");
                Reply::new(451, [4, 3, 0], "Could not post the message now, try again later")
            }
        }
    }

    async fn deliver_checked(&self, env: &Envelope, data: &[u8]) -> anyhow::Result<Reply> {
        let Some(message) = MessageParser::default().parse(data) else {
            return Ok(Reply::new(550, [5, 6, 0], "Malformed message"));
        };
        let Some(from) = message.from().and_then(|f| f.first()).and_then(|a| a.address()).map(str::to_lowercase) else {
            return Ok(Reply::new(550, [5, 6, 0], "Malformed message: no From: address"));
        };
        if !is_mail_address(&from) {
            return Ok(Reply::new(550, [5, 6, 0], "Malformed message: invalid From: address"));
        }
        // Loops: a mail of ours come back, or one that went round too often.
        let ours = message.header_raw(LOOP_HEADER).is_some_and(|v| v.trim().eq_ignore_ascii_case(&self.mail_domain));
        let message_id = match message.message_id() {
            Some(id) if !id.trim().is_empty() => one_line(bare(id)),
            _ => format!("{}@{}", hex::encode(&Sha256::digest(data)[..16]), self.mail_domain),
        };
        if ours || message.received_all().count() > MAX_HOPS || self.sent_by_us(&message_id).await? {
            return Ok(Reply::new(554, [5, 4, 6], "Mail loop detected"));
        }

        let verdict = self.verdict(env, data).await;
        if verdict.failed && self.config.auth.on_fail == "reject" {
            return Ok(Reply::new(
                550,
                [5, 7, 1],
                format!("Sender not authenticated ({}), refused by policy", verdict.line()),
            ));
        }

        let name = message
            .from()
            .and_then(|f| f.first())
            .and_then(|a| a.name())
            .map(one_line)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| from.clone());
        let reply_to = message
            .reply_to()
            .and_then(|r| r.first())
            .and_then(|a| a.address())
            .map(str::to_lowercase)
            .filter(|a| is_mail_address(a))
            .unwrap_or_else(|| from.clone());
        let subject = message.subject().map(one_line).unwrap_or_default();
        let text = message.body_text(0).map(Cow::into_owned).unwrap_or_default();
        let html = (message.html_body_count() > 0).then(|| message.body_html(0)).flatten().map(|h| sanitise(&h));
        let mut parents: Vec<String> = Vec::new();
        if let Some(list) = message.in_reply_to().as_text_list() {
            parents.extend(list.iter().map(|s| bare(s).to_owned()));
        } else if let Some(one) = message.in_reply_to().as_text() {
            parents.push(bare(one).to_owned());
        }
        let references: Vec<String> = match message.references().as_text_list() {
            Some(list) => list.iter().map(|s| bare(s).to_owned()).collect(),
            None => message.references().as_text().map(|s| vec![bare(s).to_owned()]).unwrap_or_default(),
        };
        parents.extend(references.iter().rev().cloned());
        let is_automatic = automatic(&env.mail_from, &message);

        // The attachments are uploaded before anything is posted (media show nowhere until an
        // event names them): one the server refuses refuses the whole mail, posted nowhere.
        // The sender's puppet (none for a program's mail, which the bot posts as a notice).
        let puppet = if is_automatic { None } else { Some(self.registered_puppet(&from, &name).await?) };
        let uploader = puppet.as_deref().unwrap_or(self.matrix.bot.as_str());
        let mut uploads = Vec::new();
        for (i, part) in message.attachments().enumerate() {
            let file = part.attachment_name().map(one_line).unwrap_or_else(|| format!("attachment-{}", i + 1));
            let kind = part
                .content_type()
                .map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{}", c.ctype(), sub),
                    None => c.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            let size = part.contents().len();
            match self.matrix.upload(uploader, &kind, &file, part.contents().to_vec()).await {
                Ok(url) => uploads.push(Upload { file, kind, size, url }),
                Err(e) if errcode(&e) == Some("M_TOO_LARGE") => {
                    return Ok(Reply::new(
                        552,
                        [5, 3, 4],
                        format!("Attachment {file} is larger than the server accepts"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }

        for room in &env.rooms {
            self.post(
                room,
                &Incoming {
                    message_id: &message_id,
                    puppet: puppet.as_deref(),
                    from: &from,
                    name: &name,
                    reply_to: &reply_to,
                    subject: &subject,
                    text: &text,
                    html: html.as_deref(),
                    parents: &parents,
                    references: &references,
                    verdict: &verdict,
                    automatic: is_automatic,
                    uploads: &uploads,
                },
            )
            .await?;
        }
        Ok(Reply::new(250, [2, 0, 0], format!("Posted <{message_id}>")))
    }

    /// Brings `puppet` into `room`; `None` when the bot may not (it then posts itself, naming
    /// the sender). A puppet already there joins again harmlessly.
    async fn bring_in(&self, puppet: &str, room: &str) -> anyhow::Result<Option<String>> {
        if !self.store.puppet_in(puppet, room).await? {
            let invited = self.matrix.invite(room, puppet).await;
            if let Err(e) = self.matrix.join(puppet, room).await {
                if errcode(&e) == Some("M_FORBIDDEN") {
                    tracing::info!(room, error = %e, invited = ?invited.err(), "the puppet cannot join; posting as the bot");
                    return Ok(None);
                }
                return Err(e);
            }
            self.store.set_puppet_in(puppet, room).await?;
        }
        Ok(Some(puppet.to_owned()))
    }

    /// The puppet for `address`, registered and named `name`.
    async fn registered_puppet(&self, address: &str, name: &str) -> anyhow::Result<String> {
        let localpart = puppet_localpart(&self.config.puppet_prefix, address);
        let user = format!("@{localpart}:{}", self.matrix.server_name);
        if self.store.puppet(&user).await?.as_deref() != Some(name) {
            self.matrix.register(&localpart).await?;
            self.matrix.set_display_name(&user, name).await?;
            self.store.set_puppet(&user, name).await?;
        }
        Ok(user)
    }

    async fn post(&self, room: &str, mail: &Incoming<'_>) -> anyhow::Result<()> {
        if self.store.mail(mail.message_id, room).await?.is_some() {
            return Ok(()); // Already here (the client sent it again).
        }
        let mut parent = None;
        for id in mail.parents {
            if let Some(found) = self.store.mail(id, room).await? {
                parent = Some(found);
                break;
            }
        }
        let sender = match mail.puppet {
            Some(puppet) => self.bring_in(puppet, room).await?,
            None => None,
        };

        let mut body = String::new();
        let mut formatted = String::new();
        if sender.is_none() {
            let who = format!("{} <{}>", mail.name, mail.from);
            body.push_str(&format!("{who}\n"));
            formatted.push_str(&format!("<p><em>{}</em></p>", escape(&who)));
        }
        if mail.verdict.failed {
            body.push_str("⚠ Unauthenticated sender\n");
            formatted.push_str("<p><strong>⚠ Unauthenticated sender</strong></p>");
        }
        if !mail.subject.is_empty() {
            body.push_str(&format!("{}\n\n", mail.subject));
            formatted.push_str(&format!("<p><strong>{}</strong></p>", escape(mail.subject)));
        }
        body.push_str(mail.text.trim_end());
        match mail.html {
            Some(html) => formatted.push_str(html),
            None => formatted.push_str(&format!("<p>{}</p>", escape(mail.text.trim_end()).replace('\n', "<br>"))),
        }
        body.push_str(&format!("\n\n— {}", mail.verdict.line()));
        formatted.push_str(&format!("<p><sub>{}</sub></p>", escape(&mail.verdict.line())));

        let mut content = json!({
            "msgtype": if mail.automatic { "m.notice" } else { "m.text" },
            "body": body,
            "format": "org.matrix.custom.html",
            "formatted_body": formatted,
            "fr.diplomatie.email": {
                "message_id": mail.message_id,
                "from": mail.from,
                "name": mail.name,
                "subject": mail.subject,
                "auth": mail.verdict.json(),
                "automatic": mail.automatic,
            },
        });
        if let Some(p) = &parent {
            content["m.relates_to"] = json!({
                "rel_type": "m.thread", "event_id": p.thread_root, "is_falling_back": false,
                "m.in_reply_to": { "event_id": p.event_id },
            });
        }
        let user = sender.as_deref();
        let txn = txn_id(mail.message_id, room, 0);
        let event_id = match (self.matrix.send(room, user, &txn, &content).await, user) {
            // The puppet left or was removed since the bridge brought it in: in again, once.
            (Err(e), Some(puppet)) if errcode(&e) == Some("M_FORBIDDEN") => {
                self.store.forget_puppet_in(puppet, room).await?;
                match self.bring_in(puppet, room).await? {
                    Some(p) => self.matrix.send(room, Some(&p), &txn, &content).await?,
                    None => return Err(e),
                }
            }
            (sent, _) => sent?,
        };
        let thread_root = parent.as_ref().map_or(event_id.clone(), |p| p.thread_root.clone());

        // Attachments, in the same thread.
        for (i, upload) in mail.uploads.iter().enumerate() {
            let msgtype = if upload.kind.starts_with("image/") { "m.image" } else { "m.file" };
            let attachment = json!({
                "msgtype": msgtype, "body": upload.file, "filename": upload.file, "url": upload.url,
                "info": { "mimetype": upload.kind, "size": upload.size },
                "m.relates_to": { "rel_type": "m.thread", "event_id": thread_root, "is_falling_back": true,
                                  "m.in_reply_to": { "event_id": event_id } },
            });
            self.matrix.send(room, user, &txn_id(mail.message_id, room, i + 1), &attachment).await?;
        }

        // The mail is recorded last: a retry after a failure above posts what is missing.
        let mut refs = mail.references.to_vec();
        if let Some(p) = &parent {
            if !refs.contains(&p.message_id) {
                refs.push(p.message_id.clone());
            }
        }
        self.store
            .add_mail(&Mail {
                message_id: mail.message_id.to_owned(),
                room_id: room.to_owned(),
                event_id,
                thread_root,
                // A program's mail (bounce, auto-reply) has nobody to answer: none is sent.
                peer: if mail.automatic { String::new() } else { mail.reply_to.to_owned() },
                refs: refs.join(" "),
                subject: mail.subject.to_owned(),
            })
            .await
    }
}

/// One message, read, for one room.
struct Incoming<'a> {
    message_id: &'a str,
    /// The sender's puppet, registered; `None` for a program's mail.
    puppet: Option<&'a str>,
    from: &'a str,
    name: &'a str,
    reply_to: &'a str,
    subject: &'a str,
    text: &'a str,
    html: Option<&'a str>,
    parents: &'a [String],
    references: &'a [String],
    verdict: &'a Verdict,
    automatic: bool,
    uploads: &'a [Upload],
}

/// An attachment, uploaded.
struct Upload {
    file: String,
    kind: String,
    size: usize,
    url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puppets_are_named_by_their_address_in_localpart_characters() {
        assert_eq!(puppet_localpart("email_", "Ana.Costa+x@NGO.example"), "email_ana.costa=2bx=40ngo.example");
        assert_eq!(puppet_localpart("email_", "é@x.fr"), "email_=c3=a9=40x.fr");
    }

    #[test]
    fn written_headers_are_one_line() {
        assert_eq!(one_line(" Eve\r\nBcc: victim@evil.example "), "Eve  Bcc: victim@evil.example");
    }

    #[test]
    fn html_keeps_what_clients_render_and_nothing_that_runs() {
        let clean = sanitise(
            r#"<p onclick="x()">Hi <a href="javascript:alert(1)">a</a> <a href="https://ok.example">b</a></p><script>alert(1)</script><img src="https://t.example/p.gif">"#,
        );
        assert!(!clean.contains("script") && !clean.contains("onclick") && !clean.contains("javascript"));
        assert!(!clean.contains("<img"));
        assert!(clean.contains(r#"<a href="https://ok.example" rel="noopener">b</a>"#), "{clean}");
    }

    #[test]
    fn references_lose_their_brackets() {
        assert_eq!(bare(" <m1@ngo.example> "), "m1@ngo.example");
    }
}
