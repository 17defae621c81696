//! The application services this server knows: their registration files
//! (`app_service_config_files`, in the format Synapse loads), read once at start-up, and the
//! namespaces they claim (application-service spec, "Registration").
//!
//! A namespace's regular expression matches from the start of the user id, alias or room id
//! (as Synapse matches them), and need not match to the end. An exclusive namespace is the
//! service's alone: nobody else registers such a user or creates such an alias.

use std::{collections::HashMap, path::Path, sync::Arc};

use regex::Regex;
use ruma::{api::appservice::Registration, OwnedUserId, ServerName};

/// One namespace: what it matches, and whether it is the service's alone.
struct Namespace {
    regex: Regex,
    exclusive: bool,
}

/// A registered application service.
pub struct Appservice {
    pub registration: Registration,
    /// `@sender_localpart:server`, the service's own user.
    pub sender: OwnedUserId,
    users: Vec<Namespace>,
    aliases: Vec<Namespace>,
    rooms: Vec<Namespace>,
}

impl Appservice {
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether the service may act as `user`: its own user, or one of its user namespaces.
    pub fn owns_user(&self, user: &str) -> bool {
        user == self.sender.as_str() || self.users.iter().any(|n| n.regex.is_match(user))
    }

    /// Whether `user` is in one of the service's exclusive user namespaces.
    pub fn owns_user_exclusively(&self, user: &str) -> bool {
        self.users.iter().any(|n| n.exclusive && n.regex.is_match(user))
    }

    pub fn owns_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.regex.is_match(alias))
    }

    pub fn owns_alias_exclusively(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.exclusive && n.regex.is_match(alias))
    }

    pub fn owns_room(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|n| n.regex.is_match(room_id))
    }

    /// Whether the users it acts as are held to the rate limits (its own user never is).
    pub fn rate_limited(&self, user: &str) -> bool {
        user != self.sender.as_str() && self.registration.rate_limited.unwrap_or(true)
    }

    /// The third-party protocols the service bridges.
    pub fn protocols(&self) -> &[String] {
        self.registration.protocols.as_deref().unwrap_or_default()
    }
}

/// Every registered application service, found by id or by the token it calls with.
#[derive(Default)]
pub struct Registry {
    services: Vec<Arc<Appservice>>,
    by_token: HashMap<String, Arc<Appservice>>,
}

/// The registration files a bridge dropped in `dir` (`<data_dir>/appservices/`), `.yaml` or
/// `.yml`, in name order; none when the directory does not exist.
pub fn dropped_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
        .collect();
    files.sort();
    files
}

impl Registry {
    /// Reads the registration files; any fault in one is an error naming the file, and so is a
    /// second service with the same id or token.
    pub fn load(files: &[std::path::PathBuf], server_name: &ServerName) -> Result<Registry, String> {
        let mut registry = Registry::default();
        for file in files {
            let service = read(file, server_name).map_err(|e| format!("{}: {e}", file.display()))?;
            let service = Arc::new(service);
            if registry.services.iter().any(|s| s.id() == service.id()) {
                return Err(format!("{}: a second application service with id {:?}", file.display(), service.id()));
            }
            if registry.by_token.contains_key(&service.registration.as_token)
                || registry.services.iter().any(|s| s.registration.hs_token == service.registration.as_token)
            {
                return Err(format!("{}: its as_token is another service's token", file.display()));
            }
            registry.by_token.insert(service.registration.as_token.clone(), service.clone());
            registry.services.push(service);
        }
        Ok(registry)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn all(&self) -> &[Arc<Appservice>] {
        &self.services
    }

    /// The service calling with `token` (its `as_token`).
    pub fn by_token(&self, token: &str) -> Option<&Arc<Appservice>> {
        self.by_token.get(token)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Appservice>> {
        self.services.iter().find(|s| s.id() == id)
    }

    /// The service whose exclusive namespace holds `user`, if one does.
    pub fn exclusive_owner_of_user(&self, user: &str) -> Option<&Arc<Appservice>> {
        self.services.iter().find(|s| s.owns_user_exclusively(user))
    }

    /// The service whose exclusive namespace holds `alias`, if one does.
    pub fn exclusive_owner_of_alias(&self, alias: &str) -> Option<&Arc<Appservice>> {
        self.services.iter().find(|s| s.owns_alias_exclusively(alias))
    }
}

/// One registration file.
fn read(file: &Path, server_name: &ServerName) -> Result<Appservice, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let value = crate::yaml::parse(&text)?;
    let registration: Registration = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if registration.id.is_empty() {
        return Err("`id` is empty".into());
    }
    if registration.as_token.is_empty() || registration.hs_token.is_empty() {
        return Err("`as_token` and `hs_token` must not be empty".into());
    }
    if registration.as_token == registration.hs_token {
        return Err("`as_token` and `hs_token` must differ".into());
    }
    if let Some(url) = &registration.url {
        let parsed = url::Url::parse(url).map_err(|e| format!("`url` {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`url` {url:?}: http or https only"));
        }
    }
    let sender = OwnedUserId::try_from(format!("@{}:{server_name}", registration.sender_localpart))
        .map_err(|e| format!("`sender_localpart` {:?}: {e}", registration.sender_localpart))?;
    let compile = |kind: &str, list: &[ruma::api::appservice::Namespace]| {
        list.iter()
            .map(|n| {
                // Anchored at the start, as Synapse's `re.match`; free at the end.
                let regex = Regex::new(&format!("^(?:{})", n.regex))
                    .map_err(|e| format!("namespaces.{kind}: {:?}: {e}", n.regex))?;
                Ok(Namespace { regex, exclusive: n.exclusive })
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let users = compile("users", &registration.namespaces.users)?;
    let aliases = compile("aliases", &registration.namespaces.aliases)?;
    let rooms = compile("rooms", &registration.namespaces.rooms)?;
    Ok(Appservice { registration, sender, users, aliases, rooms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_synapse_registration_file_is_read_with_its_namespaces() {
        let dir = std::env::temp_dir().join(format!("diplomatie-reg-{}", crate::random_string(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = write(
            &dir,
            "bridge.yaml",
            "id: mail\nurl: http://127.0.0.1:9000\nas_token: \"@a[b\"\nhs_token: hs\nsender_localpart: mailbot\n\
             rate_limited: false\nprotocols: [email]\nnamespaces:\n  users:\n    - regex: '@mail_.*:example\\.org'\n      exclusive: true\n\
             \x20   - regex: '@_.*'\n      exclusive: false\n  aliases:\n    - regex: '#mail_.*'\n      exclusive: true\n  rooms: []\n",
        );
        let server = ServerName::parse("example.org").unwrap();
        let registry = Registry::load(std::slice::from_ref(&file), &server).unwrap();
        let s = registry.by_token("@a[b").expect("found by its token");
        assert_eq!(s.sender, "@mailbot:example.org");
        assert!(s.owns_user("@mail_bob:example.org") && s.owns_user_exclusively("@mail_bob:example.org"));
        assert!(s.owns_user("@_x:example.org") && !s.owns_user_exclusively("@_x:example.org"));
        assert!(!s.owns_user("@bob:example.org") && !s.owns_user("@bob_mail_x:example.org"));
        assert!(s.owns_user("@mailbot:example.org"));
        assert!(registry.exclusive_owner_of_alias("#mail_x:example.org").is_some());
        assert!(registry.exclusive_owner_of_alias("#other:example.org").is_none());
        assert!(!s.rate_limited("@mail_bob:example.org"));
        assert_eq!(s.protocols(), ["email".to_owned()]);

        // The same service twice, a bad regex, a missing token: each refused, naming the file.
        let err = Registry::load(&[file.clone(), file.clone()], &server).err().unwrap();
        assert!(err.contains("a second application service"), "{err}");
        let bad = write(
            &dir,
            "bad.yaml",
            "id: x\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: x\nnamespaces:\n  users:\n    - {regex: '(', exclusive: true}\n",
        );
        let err = Registry::load(std::slice::from_ref(&bad), &server).err().unwrap();
        assert!(err.starts_with(&bad.display().to_string()) && err.contains("namespaces.users"), "{err}");
        let missing =
            write(&dir, "missing.yaml", "id: x\nurl: null\nhs_token: h\nsender_localpart: x\nnamespaces: {}\n");
        assert!(Registry::load(&[missing], &server).err().unwrap().contains("as_token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
