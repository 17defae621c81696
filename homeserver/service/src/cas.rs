//! Single sign-on through a CAS server (`[cas]`, Synapse's `cas_config`): offered as the
//! `m.login.sso` provider `cas` and as the older `m.login.cas`.
//!
//! The browser goes to `<server_url>/login?service=<this server's ticket URL>`; the CAS server
//! sends it back to that URL with a `ticket`, which is checked at `<server_url>/proxyValidate`
//! against the same service URL. The user it names (with the attributes required) is mapped
//! to an account, linked to it under `cas`, as Synapse maps its CAS users: lower case, every
//! character a user id refuses written `=xx`. The journey then ends as every single sign-on
//! does (`crate::sso`): a login token for the client, or a user-interactive session's stage.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use quick_xml::{events::Event, Reader};

use crate::{
    core::Core,
    sso::{Identity, Purpose, Return, Sso},
    Error, Result,
};

/// The ticket's path on this server (Synapse's, under `r0` as Synapse sends it).
pub const TICKET_PATH: &str = "/_matrix/client/r0/login/cas/ticket";
/// The provider's id in the login flows and in `user_external_ids`.
pub const PROVIDER_ID: &str = "cas";

/// What a query parameter keeps unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub struct Cas {
    core: Arc<Core>,
    sso: Arc<Sso>,
    http: crate::outbound::Client,
}

crate::core::over_core!(Cas);

/// What the CAS server answered about a ticket.
#[derive(Debug, PartialEq)]
enum Validation {
    Success { user: String, attributes: BTreeMap<String, String> },
    Failure(String),
}

fn refused(what: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("CAS sign-on failed: {what}"))
}

fn remote(what: impl std::fmt::Display) -> Error {
    tracing::warn!(error = %what, "CAS server failure");
    Error::Remote(format!("The CAS server could not be used: {what}"))
}

/// Synapse's mapping of an outside user name to a localpart: lower case, and every character
/// outside `a-z0-9._-/` written `=xx` (its UTF-8 bytes in hexadecimal).
pub fn localpart_from(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c) {
            out.push(c);
        } else {
            let mut bytes = [0; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("={b:02x}"));
            }
        }
    }
    out
}

/// Reads a `serviceResponse` (CAS protocol 2 or 3).
fn parse_validation(body: &str) -> std::result::Result<Validation, String> {
    let mut reader = Reader::from_str(body);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut user = None;
    let mut success = false;
    let mut failure = None;
    let mut attributes = BTreeMap::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(start) => {
                let name = start.local_name().as_ref().to_owned();
                if name == "authenticationSuccess" {
                    success = true;
                }
                if name == "authenticationFailure" {
                    let code = start
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == "code")
                        .and_then(|a| quick_xml::escape::unescape(&a.value).ok().map(|v| v.into_owned()));
                    failure = Some(code.unwrap_or_else(|| "UNKNOWN".to_owned()));
                }
                path.push(name);
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(reference) => match reference.resolve_char_ref().map_err(|e| e.to_string())? {
                Some(c) => text.push(c),
                None => text.push_str(quick_xml::escape::resolve_predefined_entity(&reference).unwrap_or_default()),
            },
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let parent = path.last().map(String::as_str);
                match (parent, name.as_str()) {
                    (Some("authenticationSuccess"), "user") => user = Some(text.trim().to_owned()),
                    (Some("attributes"), attribute) => {
                        attributes.insert(attribute.to_owned(), text.trim().to_owned());
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(code) = failure {
        return Ok(Validation::Failure(code));
    }
    match user.filter(|u| success && !u.is_empty()) {
        Some(user) => Ok(Validation::Success { user, attributes }),
        None => Err("neither a user nor a failure in the CAS answer".to_owned()),
    }
}

impl Cas {
    pub(crate) fn new(core: Arc<Core>, sso: Arc<Sso>) -> Result<Cas> {
        let http = crate::outbound::operator_client(&core.config.outbound, Duration::from_secs(10), "cas")?;
        Ok(Cas { core, sso, http })
    }

    pub fn enabled(&self) -> bool {
        self.config.cas.enabled
    }

    /// The provider's name on login pages.
    pub fn name(&self) -> &str {
        match self.config.cas.display_name.as_str() {
            "" => "CAS",
            name => name,
        }
    }

    fn server(&self) -> Result<&str> {
        if !self.enabled() {
            return Err(Error::unrecognized("This server has no CAS sign-on"));
        }
        Ok(self.config.cas.server_url.trim_end_matches('/'))
    }

    /// The service URL of a journey: this server's ticket URL, with what to do afterwards.
    fn service(&self, purpose: &Purpose) -> String {
        let base = match self.config.cas.service_url.as_str() {
            "" => self.config.public_baseurl(),
            url => url.to_owned(),
        };
        let (name, value) = match purpose {
            Purpose::Login(url) => ("redirectUrl", url),
            Purpose::Uia(session) => ("session", session),
        };
        format!("{}{TICKET_PATH}?{name}={}", base.trim_end_matches('/'), utf8_percent_encode(value, QUERY_VALUE))
    }

    /// Where to send the browser: the CAS server's login page.
    pub fn depart(&self, purpose: &Purpose) -> Result<String> {
        let server = self.server()?;
        Ok(format!("{server}/login?service={}", utf8_percent_encode(&self.service(purpose), QUERY_VALUE)))
    }

    /// The browser is back with a ticket: checks it with the CAS server and ends the journey.
    pub async fn ticket(&self, ticket: &str, purpose: Purpose) -> Result<Return> {
        let server = self.server()?;
        let mut url = reqwest::Url::parse(&format!("{server}/proxyValidate")).map_err(remote)?;
        url.query_pairs_mut().append_pair("ticket", ticket).append_pair("service", &self.service(&purpose));
        let response = self.http.get(url).send().await.map_err(remote)?;
        if !response.status().is_success() {
            return Err(remote(format!("HTTP {}", response.status())));
        }
        let body = response.text().await.map_err(remote)?;
        let (user, attributes) = match parse_validation(&body).map_err(remote)? {
            Validation::Success { user, attributes } => (user, attributes),
            Validation::Failure(code) => return Err(refused(format!("the ticket was refused ({code})"))),
        };
        for (name, wanted) in &self.config.cas.required_attributes {
            if attributes.get(name) != Some(wanted) {
                return Err(refused(format!("the attribute {name} is not as required")));
            }
        }
        let display_name = match self.config.cas.displayname_attribute.as_str() {
            "" => None,
            name => attributes.get(name).map(String::as_str).filter(|v| !v.is_empty()),
        };
        let identity = Identity {
            auth_provider: PROVIDER_ID,
            subject: &user,
            localpart: localpart_from(&user),
            display_name,
            kind: None,
            allow_existing: self.config.cas.allow_existing_users,
        };
        let account = self.sso.account_for(identity).await?;
        self.sso.conclude(&account, purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_synapse_maps_them() {
        assert_eq!(localpart_from("cas_user!"), "cas_user=21");
        assert_eq!(localpart_from("Jean.Dupont"), "jean.dupont");
        assert_eq!(localpart_from("é"), "=c3=a9");
    }

    #[test]
    fn answers_are_read() {
        let success = "<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'>
            <cas:authenticationSuccess><cas:user>jdupont</cas:user>
            <cas:attributes><cas:displayName>Jean &amp; Dupont</cas:displayName><cas:unit>DFAE</cas:unit></cas:attributes>
            </cas:authenticationSuccess></cas:serviceResponse>";
        let attributes: BTreeMap<String, String> =
            [("displayName".into(), "Jean & Dupont".into()), ("unit".into(), "DFAE".into())].into();
        assert_eq!(parse_validation(success), Ok(Validation::Success { user: "jdupont".into(), attributes }));
        let failure = "<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'>
            <cas:authenticationFailure code='INVALID_TICKET'>Ticket ST-1 not recognized</cas:authenticationFailure>
            </cas:serviceResponse>";
        assert_eq!(parse_validation(failure), Ok(Validation::Failure("INVALID_TICKET".into())));
        assert!(parse_validation("<html>not CAS</html>").is_err());
        assert!(parse_validation("<a><b></a>").is_err());
    }
}
