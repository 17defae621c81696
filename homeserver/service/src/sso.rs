//! Single sign-on through OpenID Connect providers (`m.login.sso`, the spec's redirect flow).
//!
//! `GET /login/sso/redirect[/{idpId}]` sends the browser to the provider (authorization code
//! flow, PKCE, a nonce), after setting a cookie that binds the attempt to that browser; the
//! provider sends it back to `/_synapse/client/oidc/callback`, where the code is exchanged, the
//! ID token checked (signature against the provider's keys, issuer, audience, expiry, nonce),
//! and the identity mapped to an account: the one linked to it, or a new one named after a claim
//! (`preferred_username` by default), with its display name and the portal's kind of account
//! from claims. The browser then goes back to the client with a single-use login token
//! (`m.login.token`), at once when the client's URL is on the allow-list, else after a page that
//! asks the person to confirm. Pending attempts live in memory for ten minutes.
//!
//! The same journey, started from a user-interactive session's fallback page, completes that
//! session's `m.login.sso` stage instead (when the identity is the session's user). CAS
//! (`crate::cas`) maps its identities and ends its journeys through the same functions.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use diplomatie_policies::AccountKind;
use diplomatie_storage::accounts as store;
use openidconnect::{
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use crate::{
    accounts::Accounts, config::OidcProvider, core::Core, organisation::Organisation, random_string, uia::Uia, Error,
    Result,
};

/// How long a browser has between leaving for the provider and coming back.
const PENDING_LIFETIME: Duration = Duration::from_secs(600);
/// How long a provider's discovered metadata is used before it is read again.
const METADATA_LIFETIME: Duration = Duration::from_secs(300);
/// The cookie that binds an attempt to the browser that started it.
pub const SESSION_COOKIE: &str = "diplomatie_oidc_session";
/// The callback's path on this server (Synapse's).
pub const CALLBACK_PATH: &str = "/_synapse/client/oidc/callback";

/// An attempt waiting for the provider's answer, by its `state`.
struct Pending {
    provider: String,
    purpose: Purpose,
    verifier: String,
    nonce: String,
    browser: String,
    expires: Instant,
}

pub struct Sso {
    core: Arc<Core>,
    accounts: Arc<Accounts>,
    organisation: Arc<Organisation>,
    uia: Arc<Uia>,
    /// To the providers: redirects are not followed (the library's advice against SSRF).
    http: crate::outbound::Client,
    metadata: Mutex<HashMap<String, (CoreProviderMetadata, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

crate::core::over_core!(Sso);

/// A client made from a provider's discovered metadata: its authorization endpoint is set, its
/// token and user info endpoints may be.
type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// Where `/login/sso/redirect` sends the browser, and the cookie it sets.
pub struct Departure {
    pub location: String,
    pub cookie: String,
}

/// What a journey to the identity provider is for.
#[derive(Clone, Debug)]
pub enum Purpose {
    /// Logging in to the client at this URL (absolute, http or https).
    Login(String),
    /// Completing this user-interactive session's `m.login.sso` stage.
    Uia(String),
}

impl Purpose {
    /// A login whose client URL is checked.
    pub fn login(client_redirect: &str) -> Result<Purpose> {
        let url = reqwest::Url::parse(client_redirect)
            .map_err(|_| Error::invalid_param("redirectUrl must be an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_param("redirectUrl must be an http or https URL"));
        }
        Ok(Purpose::Login(client_redirect.to_owned()))
    }
}

/// Where the browser goes once the provider has answered.
pub enum Return {
    /// Straight to the client, with the login token.
    Redirect(String),
    /// To a page that asks the person to confirm going to this client as this user.
    Confirm { url: String, user: OwnedUserId },
    /// To a page that ends a user-interactive session's fallback: `done` when the stage is
    /// complete, not when the provider named another user than the session's.
    AuthDone { done: bool },
}

/// An identity a provider vouched for, to map to an account.
pub(crate) struct Identity<'a> {
    /// The provider, as `user_external_ids` names it (`oidc-<id>`, `cas`).
    pub auth_provider: &'a str,
    /// The identity at that provider.
    pub subject: &'a str,
    /// The localpart a new account takes (with a number added when it is taken).
    pub localpart: String,
    pub display_name: Option<&'a str>,
    /// The portal's kind of account the provider says, if it says one.
    pub kind: Option<AccountKind>,
    /// Whether an unlinked identity named like an existing account logs into it.
    pub allow_existing: bool,
}

fn remote(provider: &str, what: impl std::fmt::Display) -> Error {
    tracing::warn!(provider, error = %what, "single sign-on provider failure");
    Error::Remote(format!("The identity provider could not be used: {what}"))
}

fn refused(what: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("Single sign-on failed: {what}"))
}

/// A localpart from a claim's value: lower case, what a user id refuses replaced by `_`.
pub fn localpart_from(claim: &str) -> String {
    let mapped: String = claim
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._=-/".contains(c) { c } else { '_' })
        .collect();
    if mapped.is_empty() {
        "user".to_owned()
    } else {
        mapped
    }
}

impl Sso {
    pub(crate) fn new(
        core: Arc<Core>,
        accounts: Arc<Accounts>,
        organisation: Arc<Organisation>,
        uia: Arc<Uia>,
    ) -> Result<Sso> {
        let http = crate::outbound::operator_client(&core.config.outbound, Duration::from_secs(10), "sso")?;
        Ok(Sso { core, accounts, organisation, uia, http, metadata: Mutex::default(), pending: Mutex::default() })
    }

    /// The providers, as the login flows name them: (`oidc-<id>`, name).
    pub fn providers(&self) -> Vec<(String, String)> {
        self.config.sso.oidc_providers.iter().map(|p| (format!("oidc-{}", p.id), p.name.clone())).collect()
    }

    /// Whether an OpenID Connect provider is configured under this login-flow id (`oidc-<id>`).
    pub fn offers(&self, idp: &str) -> bool {
        idp.strip_prefix("oidc-").is_some_and(|id| self.config.sso.oidc_providers.iter().any(|p| p.id == id))
    }

    /// Whether any OpenID Connect provider is configured.
    pub fn has_providers(&self) -> bool {
        !self.config.sso.oidc_providers.is_empty()
    }

    fn provider(&self, idp: Option<&str>) -> Result<&OidcProvider> {
        let providers = &self.config.sso.oidc_providers;
        if providers.is_empty() {
            return Err(Error::unrecognized("This server has no single sign-on"));
        }
        match idp {
            None => Ok(&providers[0]),
            Some(idp) => providers
                .iter()
                .find(|p| idp.strip_prefix("oidc-") == Some(p.id.as_str()))
                .ok_or_else(|| Error::not_found(format!("Unknown identity provider {idp}"))),
        }
    }

    /// The provider's metadata, discovered (and kept a while).
    async fn client(&self, provider: &OidcProvider) -> Result<Client> {
        let cached = self.metadata.lock().unwrap().get(&provider.id).cloned();
        let metadata = match cached {
            Some((metadata, at)) if at.elapsed() < METADATA_LIFETIME => metadata,
            _ => {
                let issuer = IssuerUrl::new(provider.issuer.clone()).map_err(|e| remote(&provider.id, e))?;
                let http = self.http.for_url(issuer.url());
                let metadata =
                    CoreProviderMetadata::discover_async(issuer, http).await.map_err(|e| remote(&provider.id, e))?;
                self.metadata.lock().unwrap().insert(provider.id.clone(), (metadata.clone(), Instant::now()));
                metadata
            }
        };
        let callback = format!("{}{CALLBACK_PATH}", self.config.public_baseurl().trim_end_matches('/'));
        let secret = (!provider.client_secret.is_empty()).then(|| ClientSecret::new(provider.client_secret.clone()));
        Ok(CoreClient::from_provider_metadata(metadata, ClientId::new(provider.client_id.clone()), secret)
            .set_redirect_uri(RedirectUrl::new(callback).map_err(|e| remote(&provider.id, e))?))
    }

    /// `GET /login/sso/redirect[/{idpId}]`, or a session's fallback page: where to send the
    /// browser, and the cookie to set.
    pub async fn depart(&self, idp: Option<&str>, purpose: Purpose) -> Result<Departure> {
        let provider = self.provider(idp)?;
        let client = self.client(provider).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for scope in provider.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (location, state, nonce) = request.set_pkce_challenge(challenge).url();
        let browser = random_string(32);
        let mut pending = self.pending.lock().unwrap();
        let now = Instant::now();
        pending.retain(|_, p| p.expires > now);
        if pending.len() > 10_000 {
            return Err(Error::new(
                ruma::api::error::ErrorKind::LimitExceeded(Default::default()),
                "Too many single sign-on attempts under way",
            ));
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                provider: provider.id.clone(),
                purpose,
                verifier: verifier.secret().clone(),
                nonce: nonce.secret().clone(),
                browser: browser.clone(),
                expires: now + PENDING_LIFETIME,
            },
        );
        let cookie = format!(
            "{SESSION_COOKIE}={browser}; Path=/_synapse/client/oidc; Max-Age={}; HttpOnly; SameSite=Lax",
            PENDING_LIFETIME.as_secs()
        );
        Ok(Departure { location: location.to_string(), cookie })
    }

    /// The provider's answer (`code` and `state`, or `error`), in the browser that carries
    /// `browser` (the session cookie): where to send it back.
    pub async fn arrive(
        &self,
        state: Option<&str>,
        code: Option<&str>,
        error: Option<&str>,
        browser: Option<&str>,
    ) -> Result<Return> {
        let state = state.ok_or_else(|| Error::missing_param("Missing state"))?;
        let pending = self.pending.lock().unwrap().remove(state);
        let pending = match pending {
            Some(p) if p.expires > Instant::now() => p,
            _ => return Err(refused("unknown or expired session (state)")),
        };
        if browser != Some(pending.browser.as_str()) {
            return Err(refused("the session was started in another browser"));
        }
        if let Some(error) = error {
            return Err(refused(format!("the identity provider answered {error}")));
        }
        let code = code.ok_or_else(|| Error::missing_param("Missing code"))?;
        let provider = self.provider(Some(&format!("oidc-{}", pending.provider)))?;
        let client = self.client(provider).await?;
        let exchange = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| remote(&provider.id, e))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier));
        let issuer = reqwest::Url::parse(&provider.issuer).map_err(|e| remote(&provider.id, e))?;
        let tokens = exchange.request_async(self.http.for_url(&issuer)).await.map_err(|e| match e {
            openidconnect::RequestTokenError::ServerResponse(r) => {
                refused(format!("the code was refused ({})", r.error()))
            }
            other => remote(&provider.id, other),
        })?;
        let id_token = tokens.id_token().ok_or_else(|| refused("no ID token"))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(pending.nonce))
            .map_err(|e| refused(format!("invalid ID token ({e})")))?;
        let subject = claims.subject().to_string();
        // Every claim, as the token carries them (its signature checked above).
        let all = id_token_claims(&id_token.to_string()).ok_or_else(|| refused("unreadable ID token"))?;
        let claim = |name: &str| all.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
        let kind = (!provider.kind_claim.is_empty()).then(|| match claim(&provider.kind_claim) {
            Some(v) if provider.external_values.iter().any(|e| e == v) => AccountKind::External,
            _ => AccountKind::Agent,
        });
        let auth_provider = format!("oidc-{}", provider.id);
        let identity = Identity {
            auth_provider: &auth_provider,
            subject: &subject,
            localpart: localpart_from(claim(&provider.localpart_claim).unwrap_or(&subject)),
            display_name: claim(&provider.display_name_claim),
            kind,
            allow_existing: false,
        };
        let user = self.account_for(identity).await?;
        self.conclude(&user, pending.purpose)
    }

    /// The providers an account is linked to, as the login flows name them.
    pub async fn linked_providers(&self, user: &UserId) -> Result<Vec<String>> {
        let ids = store::external_ids(self.db.pool(), user.as_str()).await?;
        Ok(ids.into_iter().map(|(provider, _)| provider).collect())
    }

    /// Ends a journey: `user` logs in to the client, or has done a session's stage.
    pub(crate) fn conclude(&self, user: &UserId, purpose: Purpose) -> Result<Return> {
        let client_redirect = match purpose {
            Purpose::Login(url) => url,
            Purpose::Uia(session) => return Ok(Return::AuthDone { done: self.uia.sso_done(&session, user)? }),
        };
        let token = self.accounts.issue_login_token(user)?;
        let mut url = reqwest::Url::parse(&client_redirect).map_err(crate::internal!())?;
        url.query_pairs_mut().append_pair("loginToken", &token);
        let url = url.to_string();
        // The server's own dashboards are always allowed.
        let dashboard = format!("{}/_diplomatie/dashboard", self.config.public_baseurl().trim_end_matches('/'));
        let allowed = client_redirect.starts_with(&dashboard)
            || self.config.sso.client_allowlist.iter().any(|prefix| client_redirect.starts_with(prefix));
        Ok(if allowed { Return::Redirect(url) } else { Return::Confirm { url, user: user.to_owned() } })
    }

    /// The account of an identity: the one linked to it; else, when allowed, the existing
    /// account of its name; else a new one. Its kind follows the provider at each login.
    pub(crate) async fn account_for(&self, identity: Identity<'_>) -> Result<OwnedUserId> {
        let Identity { auth_provider, subject, localpart, display_name, kind, allow_existing } = identity;
        let linked = match store::user_by_external_id(self.db.pool(), auth_provider, subject).await? {
            Some(user) => Some(OwnedUserId::try_from(user).map_err(crate::internal!())?),
            None if allow_existing => {
                let user = self.accounts.parse_local_user(&localpart).ok();
                let existing = match &user {
                    Some(u) => store::user_exists(self.db.pool(), u.as_str()).await?,
                    None => false,
                };
                match user.filter(|_| existing) {
                    Some(user) => {
                        store::link_external_id(self.db.pool(), auth_provider, subject, user.as_str()).await?;
                        tracing::info!(%user, provider = auth_provider, "existing account linked at single sign-on");
                        Some(user)
                    }
                    None => None,
                }
            }
            None => None,
        };
        if let Some(user) = linked {
            let listed = diplomatie_storage::admin::listed_user(self.db.pool(), user.as_str()).await?;
            let Some(listed) = listed.filter(|u| !u.deactivated) else {
                return Err(refused("this account is deactivated"));
            };
            if let Some(kind) = kind.filter(|k| listed.account_kind != k.as_str()) {
                self.organisation.set_account_kind(&user, kind).await?;
            }
            return Ok(user);
        }
        let mut created = None;
        for n in 0..100 {
            let candidate = if n == 0 { localpart.clone() } else { format!("{localpart}{n}") };
            match self.accounts.create_account(Some(&candidate), None, false, display_name).await {
                Ok(user) => {
                    created = Some(user);
                    break;
                }
                Err(Error::Matrix(ruma::api::error::ErrorKind::UserInUse, _)) => continue,
                Err(e) => return Err(e),
            }
        }
        let user = created.ok_or_else(|| refused("no free user id for this identity"))?;
        let kind = kind.unwrap_or(AccountKind::Agent);
        diplomatie_storage::org::set_kind(self.db.pool(), user.as_str(), kind.as_str()).await?;
        store::link_external_id(self.db.pool(), auth_provider, subject, user.as_str()).await?;
        tracing::info!(%user, provider = auth_provider, "account created at its first single sign-on");
        Ok(user)
    }
}

/// The claims of a compact JWT (whose signature was checked), as JSON.
fn id_token_claims(jwt: &str) -> Option<Value> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}
