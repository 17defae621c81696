//! Outbound: the events the homeserver pushes to the bridge (application-service
//! transactions) that must leave as mail, the bot's membership, and the `!email` commands.
//!
//! A message leaves when it answers a mail's thread (to that mail's sender) or when its room
//! names recipients (`!email to ...`). Its Message-ID is derived from the event id, and
//! `In-Reply-To` and `References` continue the thread, so that mail clients thread it; each
//! mail is DKIM-signed for the mail domain and carries the loop header.

use diplomatie_policies::is_mail_address;
use mail_auth::common::{crypto::Ed25519Key, headers::HeaderWriter};
use mail_builder::{headers::message_id::MessageId, headers::raw::Raw, MessageBuilder};
use serde_json::{json, Value};

use crate::{
    inbound::{one_line, LOOP_HEADER},
    matrix::errcode,
    store::Mail,
    Bridge,
};

/// A crisis cell's alert (the portal's event type).
const ALERT: &str = "fr.diplomatie.crisis.alert";

/// The address a room takes from its alias: a functional group's general room
/// (`#g.<slug>.general`) the group's slug, another of its rooms `<slug>.<room>`, any other
/// room its alias's name.
fn alias_address(local: &str) -> String {
    let local = local.to_lowercase();
    match local.strip_prefix("g.") {
        Some(rest) => match rest.strip_suffix(".general") {
            Some(slug) => slug.to_owned(),
            None => rest.to_owned(),
        },
        None => local,
    }
}

/// A reply's own text: the body without the quoted fallback of the message it answers.
fn without_fallback(body: &str) -> String {
    let mut lines = body.lines().peekable();
    if body.starts_with("> ") {
        while lines.peek().is_some_and(|l| l.starts_with('>')) {
            lines.next();
        }
        if lines.peek().is_some_and(|l| l.is_empty()) {
            lines.next();
        }
    }
    lines.collect::<Vec<_>>().join("\n")
}

fn without_html_fallback(html: &str) -> &str {
    match html.find("</mx-reply>") {
        Some(end) => &html[end + "</mx-reply>".len()..],
        None => html,
    }
}

const HELP: &str = "!email address <name>: mail to <name>@DOMAIN lands here (managers)\n\
!email to <address> ...: new messages of this room also go to these addresses (managers; none: stop)\n\
!email status: what this room receives and sends";

impl Bridge {
    /// Handles one transaction of events; an error makes the homeserver send it again (what
    /// was already sent is not sent twice).
    pub async fn transaction(&self, txn_id: &str, events: &[Value]) -> anyhow::Result<()> {
        if self.store.transaction_done(txn_id).await? {
            return Ok(());
        }
        for event in events {
            match self.event(event).await {
                Ok(()) => {}
                // What cannot succeed later does not hold up the events behind it.
                Err(e) if Bridge::permanent(&e) => {
                    tracing::warn!(event = %event["event_id"], error = %e, "an event was not bridged")
                }
                Err(e) => return Err(e),
            }
        }
        self.store.set_transaction_done(txn_id).await
    }

    fn is_ours(&self, user: &str) -> bool {
        user == self.matrix.bot || user.starts_with(&format!("@{}", self.config.puppet_prefix))
    }

    async fn notice(&self, room: &str, text: &str) -> anyhow::Result<()> {
        let txn = format!("notice.{}", rand::random::<u64>());
        self.matrix.send(room, None, &txn, &json!({ "msgtype": "m.notice", "body": text })).await?;
        Ok(())
    }

    async fn event(&self, event: &Value) -> anyhow::Result<()> {
        let room = event["room_id"].as_str().unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        let kind = event["type"].as_str().unwrap_or_default();
        match kind {
            "m.room.member" if event["state_key"] == self.matrix.bot.as_str() => {
                match event["content"]["membership"].as_str() {
                    Some("invite") => self.invited(room).await,
                    Some("leave" | "ban") => self.store.remove_room(room).await,
                    _ => Ok(()),
                }
            }
            // A room raised to DR is no longer bridged.
            crate::CLASSIFICATION if event["content"]["level"] == "DR" => {
                if self.store.room(room).await?.is_some() {
                    self.store.remove_room(room).await?;
                    let _ = self.notice(room, "This room is now DR: it is no longer bridged to e-mail.").await;
                    self.matrix.leave(room, None).await?;
                }
                Ok(())
            }
            ALERT if !self.is_ours(sender) => self.alert(event).await,
            "m.room.message" if !self.is_ours(sender) => {
                let Some(bridged) = self.store.room(room).await? else { return Ok(()) };
                let content = &event["content"];
                let body = content["body"].as_str().unwrap_or_default();
                if content["msgtype"] == "m.notice" {
                    return Ok(());
                }
                if let Some(command) = body.strip_prefix("!email") {
                    if command.is_empty() || command.starts_with(' ') {
                        return self.command(&bridged, sender, command.trim()).await;
                    }
                }
                self.send_mail(&bridged, event).await
            }
            _ => Ok(()),
        }
    }

    /// The bot is invited: it joins unless the room is DR, and takes the address its alias
    /// gives (`#g.<slug>.general` → `<slug>@`, another alias → its name).
    async fn invited(&self, room: &str) -> anyhow::Result<()> {
        if let Err(e) = self.matrix.join(&self.matrix.bot, room).await {
            tracing::info!(room, error = %e, "could not join a room it was invited to");
            return Ok(());
        }
        let state = self.matrix.room_state(room).await?;
        let content =
            |kind: &str| state.iter().find(|e| e["type"] == kind && e["state_key"] == "").map(|e| &e["content"]);
        if content(crate::CLASSIFICATION).is_some_and(|c| c["level"] == "DR") || content("fr.diplomatie.mls").is_some()
        {
            let _ = self.notice(room, "DR rooms are never bridged to e-mail.").await;
            self.matrix.leave(room, None).await?;
            return Ok(());
        }
        self.store.add_room(room).await?;
        let local = content("m.room.canonical_alias")
            .and_then(|a| a["alias"].as_str())
            .and_then(|a| a.strip_prefix('#'))
            .and_then(|a| a.split_once(':'))
            .map(|(local, _)| alias_address(local));
        let text = match local {
            Some(local) if self.store.set_address(room, &local).await? => {
                format!("Mail to {local}@{} now lands in this room. Say !email help for more.", self.mail_domain)
            }
            _ => "This room has no mail address yet: a manager gives it one with !email address <name>.".to_owned(),
        };
        self.notice(room, &text).await
    }

    /// Whether `user` may change the room's bridging: a manager (the power to send state), or
    /// a creator of a room of version 12 or later (creators are above the power levels there).
    async fn manages(&self, room: &str, user: &str) -> anyhow::Result<bool> {
        let state = self.matrix.room_state(room).await?;
        let event = |kind: &str| state.iter().find(|e| e["type"] == kind && e["state_key"] == "");
        if let Some(create) = event("m.room.create") {
            let version = create["content"]["room_version"].as_str().unwrap_or("1");
            let creators_above_levels =
                !matches!(version, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "10" | "11");
            let creator = create["sender"] == user
                || create["content"]["additional_creators"].as_array().is_some_and(|c| c.iter().any(|c| c == user));
            if creators_above_levels && creator {
                return Ok(true);
            }
        }
        let Some(levels) = event("m.room.power_levels").map(|e| &e["content"]) else { return Ok(false) };
        let power = levels["users"][user].as_i64().or_else(|| levels["users_default"].as_i64()).unwrap_or(0);
        let needed = levels["state_default"].as_i64().unwrap_or(50);
        Ok(power >= needed)
    }

    async fn command(&self, room: &crate::store::Room, sender: &str, command: &str) -> anyhow::Result<()> {
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        let answer = match verb {
            "address" | "to" if !self.manages(&room.room_id, sender).await? => {
                "Only the room's managers change its e-mail bridging.".to_owned()
            }
            "address" => {
                let local = rest.trim().to_lowercase();
                if local.is_empty() || !local.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    "An address is made of letters, digits, '.', '_' and '-'.".to_owned()
                } else if self.store.set_address(&room.room_id, &local).await? {
                    format!("Mail to {local}@{} now lands in this room.", self.mail_domain)
                } else {
                    format!("{local}@{} belongs to another room.", self.mail_domain)
                }
            }
            "to" => {
                let addresses: Vec<String> =
                    rest.split([' ', ',', ';']).filter(|a| !a.is_empty()).map(str::to_lowercase).collect();
                if let Some(bad) = addresses.iter().find(|a| !is_mail_address(a)) {
                    format!("Not an e-mail address: {bad}")
                } else {
                    self.store.set_recipients(&room.room_id, &addresses.join(",")).await?;
                    if addresses.is_empty() {
                        "New messages of this room no longer go out by e-mail.".to_owned()
                    } else {
                        format!("New messages of this room also go to {}.", addresses.join(", "))
                    }
                }
            }
            "status" => {
                let address = room.address.as_ref().map(|a| format!("{a}@{}", self.mail_domain));
                format!(
                    "Receives mail at: {}. Sends new messages to: {}.",
                    address.as_deref().unwrap_or("no address"),
                    if room.recipients.is_empty() { "nobody" } else { &room.recipients }
                )
            }
            _ => HELP.replace("DOMAIN", &self.mail_domain),
        };
        self.notice(&room.room_id, &answer).await
    }

    /// A crisis alert: mailed, one mail each, to the members it names as unreached (no device
    /// of theirs seen lately), at the addresses the server gives the bridge.
    async fn alert(&self, event: &Value) -> anyhow::Result<()> {
        let event_id = event["event_id"].as_str().unwrap_or_default();
        let content = &event["content"];
        let Some(cell) = content["cell"]["cell_id"].as_str() else { return Ok(()) };
        if content["unreached"].as_array().is_none_or(|u| u.is_empty())
            || self.store.mail_of_event(event_id).await?.is_some()
        {
            return Ok(());
        }
        let answer =
            self.matrix.portal(reqwest::Method::GET, &["v1", "crisis", cell, "alerts", event_id, "recipients"]).await?;
        let recipients: Vec<String> = answer["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["address"].as_str())
            .filter(|a| is_mail_address(a))
            .map(str::to_owned)
            .collect();
        if recipients.is_empty() {
            return Ok(());
        }
        let name = one_line(content["cell"]["name"].as_str().unwrap_or("Cellule de crise"));
        let text = content["text"].as_str().or(content["body"].as_str()).unwrap_or_default();
        let from = format!("alerte@{}", self.mail_domain);
        let subject = format!("[ALERTE] {name}");
        let body = format!(
            "{text}\n\n-- \nAlerte de la cellule de crise « {name} », envoyée par courriel parce qu'aucun de vos \
             appareils n'a été vu récemment sur le portail. Ouvrez le portail pour la suite.\n"
        );
        let base = event_id.trim_start_matches('$');
        for (i, to) in recipients.iter().enumerate() {
            let message = MessageBuilder::new()
                .from((format!("Cellule de crise — {name}"), from.clone()))
                .to(to.as_str())
                .subject(subject.clone())
                .message_id(format!("{base}.{i}@{}", self.mail_domain))
                .header(LOOP_HEADER, Raw::new(self.mail_domain.clone()))
                .header("Auto-Submitted", Raw::new("auto-generated"))
                .header("Importance", Raw::new("high"))
                .text_body(body.clone())
                .write_to_vec()?;
            let signed = self.sign(&message)?;
            if let Err(e) = self.relay(&from, std::slice::from_ref(to), signed).await {
                tracing::warn!(to = %to, error = %e, "an alert could not be mailed");
            }
        }
        self.store
            .add_mail(&Mail {
                message_id: format!("{base}@{}", self.mail_domain),
                room_id: event["room_id"].as_str().unwrap_or_default().to_owned(),
                event_id: event_id.to_owned(),
                thread_root: event_id.to_owned(),
                peer: String::new(),
                refs: String::new(),
                subject,
            })
            .await
    }

    /// Mails a message of a bridged room, when it answers a mail or its room has recipients.
    async fn send_mail(&self, room: &crate::store::Room, event: &Value) -> anyhow::Result<()> {
        let event_id = event["event_id"].as_str().unwrap_or_default();
        if self.store.mail_of_event(event_id).await?.is_some() {
            return Ok(()); // Sent already.
        }
        let content = &event["content"];
        let relates = &content["m.relates_to"];
        if relates["rel_type"] == "m.replace" {
            return Ok(()); // An edit: the mail has left already.
        }
        let thread_root = (relates["rel_type"] == "m.thread").then(|| relates["event_id"].as_str()).flatten();
        let replied = relates["m.in_reply_to"]["event_id"].as_str();
        // The mail this one answers: the event replied to, else the thread's root.
        let mut parent = None;
        for id in [replied, thread_root].into_iter().flatten() {
            if let Some(mail) = self.store.mail_of_event(id).await? {
                parent = Some(mail);
                break;
            }
        }
        let msgtype = content["msgtype"].as_str().unwrap_or_default();
        let record = &content[crate::CORRESPONDENCE];
        let recipients: Vec<String> = match &parent {
            // A formal correspondence leaves once, from its sending group's room, to the
            // external addressees its record names.
            _ if msgtype == crate::CORRESPONDENCE => {
                if content["fr.diplomatie.delivery"]["as"] != "origin" || record["classification"] == "DR" {
                    return Ok(());
                }
                let external = record["external"].as_array().cloned().unwrap_or_default();
                external
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|a| is_mail_address(a))
                    .map(str::to_lowercase)
                    .collect()
            }
            Some(p) => p.peer.split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect(),
            None if thread_root.is_none() && replied.is_none() => {
                room.recipients.split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect()
            }
            None => Vec::new(),
        };
        if recipients.is_empty() {
            return Ok(());
        }
        let Some(local) = &room.address else {
            return self
                .notice(&room.room_id, "This room has no mail address: !email address <name> gives it one.")
                .await;
        };
        let from_address = format!("{local}@{}", self.mail_domain);
        // A correspondence's author signed it; the server's account only carried it.
        let sender = match record["author"].as_str() {
            Some(author) if msgtype == crate::CORRESPONDENCE => author,
            _ => event["sender"].as_str().unwrap_or_default(),
        };
        let name =
            match self.matrix.call(reqwest::Method::GET, &["v3", "profile", sender, "displayname"], None, None).await {
                Ok(v) => v["displayname"].as_str().map(one_line).unwrap_or_else(|| sender.to_owned()),
                Err(_) => sender.to_owned(),
            };

        let message_id = format!("{}@{}", event_id.trim_start_matches('$'), self.mail_domain);
        let body = content["body"].as_str().unwrap_or_default();
        let mut text = without_fallback(body);
        let mut html = (content["format"] == "org.matrix.custom.html")
            .then(|| content["formatted_body"].as_str())
            .flatten()
            .map(|h| without_html_fallback(h).to_owned());
        let mut attachments: Vec<(String, String, Vec<u8>)> = Vec::new();
        let mut subject = match &parent {
            Some(p) if p.subject.to_lowercase().starts_with("re:") => p.subject.clone(),
            Some(p) => format!("Re: {}", p.subject),
            None => one_line(text.lines().next().unwrap_or_default()).chars().take(78).collect(),
        };
        match msgtype {
            "m.file" | "m.image" | "m.video" | "m.audio" => {
                let url = content["url"].as_str().unwrap_or_default();
                let file = content["filename"].as_str().or(content["body"].as_str()).unwrap_or("attachment");
                let (bytes, kind) = match self.matrix.download(url, self.config.max_message_bytes).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::info!(error = %e, "an attachment was not sent");
                        return self.notice(&room.room_id, &format!("Not sent by e-mail: {e}")).await;
                    }
                };
                attachments.push((kind, one_line(file), bytes));
                text = format!("{name} sent {}.", one_line(file));
                html = None;
            }
            crate::CORRESPONDENCE => {
                let reference = record["reference"].as_str().unwrap_or_default();
                if parent.is_none() {
                    subject = one_line(&format!("{} — {}", reference, record["subject"].as_str().unwrap_or_default()));
                }
                text.push_str(&format!(
                    "\n\n--\nThis formal letter is signed. Its record is attached (record.json): \
                     `diplomatie verify record.json` checks it, with the author's public keys from \
                     GET /_diplomatie/client/v1/correspondence/{reference} on {}.",
                    self.matrix.server_name
                ));
                html = None;
                attachments.push(("application/json".into(), "record.json".into(), serde_json::to_vec_pretty(record)?));
            }
            _ => {}
        }

        let mut refs: Vec<String> = parent
            .as_ref()
            .map(|p| p.refs.split(' ').filter(|r| !r.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(p) = &parent {
            refs.push(p.message_id.clone());
        }
        let mut builder = MessageBuilder::new()
            .from((name.clone(), from_address.clone()))
            .to(recipients.iter().map(|a| a.as_str()).collect::<Vec<_>>())
            .subject(one_line(&subject))
            .message_id(message_id.clone())
            .header(LOOP_HEADER, Raw::new(self.mail_domain.clone()))
            .text_body(text);
        if let Some(p) = &parent {
            builder = builder
                .in_reply_to(p.message_id.clone())
                .references(MessageId::new_list(refs.iter().map(|r| r.as_str())));
        }
        if let Some(h) = html {
            builder = builder.html_body(crate::inbound::sanitise(&h));
        }
        for (kind, file, bytes) in attachments {
            builder = builder.attachment(kind, file, bytes);
        }
        let body = builder.write_to_vec()?;
        let signed = self.sign(&body)?;
        match self.relay(&from_address, &recipients, signed).await {
            Ok(()) => {}
            // The relay refuses for good: the room is told, and the mail is not tried again.
            Err(mail_send::Error::UnexpectedReply(reply)) if reply.code() >= 500 => {
                let text =
                    format!("Not sent by e-mail to {}: {} {}", recipients.join(", "), reply.code(), reply.message());
                self.notice(&room.room_id, &one_line(&text)).await?;
            }
            Err(e) => return Err(anyhow::anyhow!("relay: {e}")),
        }

        let thread = thread_root.map(str::to_owned).or_else(|| parent.as_ref().map(|p| p.thread_root.clone()));
        self.store
            .add_mail(&Mail {
                message_id,
                room_id: room.room_id.clone(),
                event_id: event_id.to_owned(),
                thread_root: thread.unwrap_or_else(|| event_id.to_owned()),
                peer: recipients.join(","),
                refs: refs.join(" "),
                subject,
            })
            .await
    }

    /// The message with its DKIM-Signature header first.
    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key = Ed25519Key::from_pkcs8_der(&self.dkim_key).map_err(|e| anyhow::anyhow!("DKIM key: {e}"))?;
        let signature = mail_auth::dkim::DkimSigner::from_key(key)
            .domain(self.mail_domain.clone())
            .selector(self.config.dkim.selector.clone())
            .headers(["From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References"])
            .sign(message)
            .map_err(|e| anyhow::anyhow!("DKIM signing: {e}"))?;
        let mut signed = signature.to_header().into_bytes();
        signed.extend_from_slice(message);
        Ok(signed)
    }

    /// Hands a message to the configured relay.
    async fn relay(&self, from: &str, to: &[String], body: Vec<u8>) -> mail_send::Result<()> {
        let message = mail_send::smtp::message::Message {
            mail_from: from.into(),
            rcpt_to: to.iter().map(|a| a.as_str().into()).collect(),
            body: body.into(),
        };
        // Without Nagle's algorithm: the message and its final dot, written apart, would wait
        // for the relay's delayed acknowledgement.
        if self.config.relay.tls == "none" {
            let mut client = self.relay.connect_plain().await?;
            client.stream.set_nodelay(true)?;
            client.send(message).await
        } else {
            let mut client = self.relay.connect().await?;
            client.stream.get_ref().0.set_nodelay(true)?;
            client.send(message).await
        }
    }

    /// Whether a Matrix error means the bridge should give up on an event rather than retry.
    fn permanent(e: &anyhow::Error) -> bool {
        matches!(errcode(e), Some("M_FORBIDDEN" | "M_NOT_FOUND" | "M_BAD_JSON" | "M_INVALID_PARAM"))
    }
}

/// The relay's client, made once (its TLS verifier reads the system's roots).
pub fn relay_client(
    config: &crate::config::Config,
    domain: &str,
) -> anyhow::Result<mail_send::SmtpClientBuilder<String>> {
    let relay = &config.relay;
    let mut builder = mail_send::SmtpClientBuilder::new(relay.host.clone(), relay.port)
        .map_err(|e| anyhow::anyhow!("relay: {e}"))?
        .implicit_tls(relay.tls == "implicit")
        .helo_host(domain.to_owned())
        .timeout(std::time::Duration::from_secs(60));
    if relay.allow_invalid_certs {
        builder = builder.allow_invalid_certs();
    }
    if let (Some(user), Some(password)) = (&relay.username, &relay.password) {
        builder = builder.credentials((user.clone(), password.clone()));
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_take_their_address_from_their_alias() {
        assert_eq!(alias_address("g.paris.general"), "paris");
        assert_eq!(alias_address("g.paris.correspondence"), "paris.correspondence");
        assert_eq!(alias_address("Cellule-Crise"), "cellule-crise");
    }

    #[test]
    fn only_plain_addresses_are_sent_to() {
        assert!(is_mail_address("desk@partner.example"));
        for bad in [
            "desk",
            "@partner.example",
            "a@b",
            "a b@c.example",
            "a@c.example\r\nBcc: x@y.z",
            "<a@b.example>",
            "a@b.example,c@d.example",
        ] {
            assert!(!is_mail_address(bad), "{bad}");
        }
    }

    #[test]
    fn a_reply_is_sent_without_the_quote_of_what_it_answers() {
        assert_eq!(without_fallback("> <@ana:x> Hello\n> there\n\nThank you"), "Thank you");
        assert_eq!(without_fallback("Plain\n> quoted later"), "Plain\n> quoted later");
        assert_eq!(without_html_fallback("<mx-reply><blockquote>q</blockquote></mx-reply><p>a</p>"), "<p>a</p>");
    }
}
