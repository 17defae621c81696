//! The homeserver, as the bridge speaks to it: the client-server API with the application
//! service's `as_token`, acting as its bot or as one of its puppets (`user_id` assertion).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

/// An answer of the homeserver other than success.
#[derive(Debug, thiserror::Error)]
#[error("{status} {errcode}: {error}")]
pub struct MatrixError {
    pub status: u16,
    pub errcode: String,
    pub error: String,
}

pub struct Matrix {
    http: reqwest::Client,
    base: url::Url,
    as_token: String,
    /// The bot's user id, `@<sender_localpart>:<server>`.
    pub bot: String,
    /// The homeserver's name, as the bot's id tells it.
    pub server_name: String,
}

impl Matrix {
    /// Connects as the bot and learns the server's name (the registration must be loaded).
    pub async fn connect(base: &str, as_token: &str) -> anyhow::Result<Matrix> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let mut matrix = Matrix {
            http,
            base: url::Url::parse(base)?,
            as_token: as_token.into(),
            bot: String::new(),
            server_name: String::new(),
        };
        let who = matrix.call(Method::GET, &["v3", "account", "whoami"], None, None).await?;
        matrix.bot = who["user_id"].as_str().unwrap_or_default().to_owned();
        matrix.server_name = matrix.bot.split_once(':').map(|(_, s)| s.to_owned()).unwrap_or_default();
        Ok(matrix)
    }

    fn url(&self, root: &[&str], segments: &[&str], user: Option<&str>) -> anyhow::Result<url::Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("homeserver_url cannot be a base"))?
            .pop_if_empty()
            .extend(root)
            .extend(segments);
        if let Some(user) = user {
            url.query_pairs_mut().append_pair("user_id", user);
        }
        Ok(url)
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(MatrixError {
            status: status.as_u16(),
            errcode: body["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
            error: body["error"].as_str().unwrap_or_default().to_owned(),
        }
        .into())
    }

    /// `/_matrix/client/<segments>` as `user` (the bot when `None`).
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        user: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url(&["_matrix", "client"], segments, user)?;
        let mut request = self.http.request(method, url).bearer_auth(&self.as_token);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::answer(request.send().await?).await
    }

    /// `/_diplomatie/client/<segments>`, the portal's API, as the bot.
    pub async fn portal(&self, method: Method, segments: &[&str]) -> anyhow::Result<Value> {
        let url = self.url(&["_diplomatie", "client"], segments, None)?;
        Self::answer(self.http.request(method, url).bearer_auth(&self.as_token).send().await?).await
    }

    /// Registers a puppet (no password: the namespace is the service's); one that exists is fine.
    pub async fn register(&self, localpart: &str) -> anyhow::Result<()> {
        let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
        match self.call(Method::POST, &["v3", "register"], None, Some(&body)).await {
            Ok(_) => Ok(()),
            Err(e) if errcode(&e) == Some("M_USER_IN_USE") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn set_display_name(&self, user: &str, name: &str) -> anyhow::Result<()> {
        let body = json!({ "displayname": name });
        self.call(Method::PUT, &["v3", "profile", user, "displayname"], Some(user), Some(&body)).await?;
        Ok(())
    }

    pub async fn join(&self, user: &str, room: &str) -> anyhow::Result<()> {
        self.call(Method::POST, &["v3", "join", room], Some(user), Some(&json!({}))).await?;
        Ok(())
    }

    pub async fn invite(&self, room: &str, user: &str) -> anyhow::Result<()> {
        self.call(Method::POST, &["v3", "rooms", room, "invite"], None, Some(&json!({ "user_id": user }))).await?;
        Ok(())
    }

    pub async fn leave(&self, room: &str, user: Option<&str>) -> anyhow::Result<()> {
        self.call(Method::POST, &["v3", "rooms", room, "leave"], user, Some(&json!({}))).await?;
        Ok(())
    }

    /// Sends an event as `user`; `txn` makes a retry of the same send a no-op.
    pub async fn send(&self, room: &str, user: Option<&str>, txn: &str, content: &Value) -> anyhow::Result<String> {
        let answer =
            self.call(Method::PUT, &["v3", "rooms", room, "send", "m.room.message", txn], user, Some(content)).await?;
        Ok(answer["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// The room's whole current state, as events.
    pub async fn room_state(&self, room: &str) -> anyhow::Result<Vec<Value>> {
        let state = self.call(Method::GET, &["v3", "rooms", room, "state"], None, None).await?;
        Ok(state.as_array().cloned().unwrap_or_default())
    }

    /// Uploads a file as `user`; its `mxc://` URI.
    pub async fn upload(&self, user: &str, content_type: &str, name: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        let mut url = self.url(&["_matrix", "media"], &["v3", "upload"], Some(user))?;
        url.query_pairs_mut().append_pair("filename", name);
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.as_token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await?;
        let answer = Self::answer(response).await?;
        Ok(answer["content_uri"].as_str().unwrap_or_default().to_owned())
    }

    /// A file of the content repository (authenticated media), at most `limit` bytes; its
    /// bytes and type.
    pub async fn download(&self, mxc: &str, limit: usize) -> anyhow::Result<(Vec<u8>, String)> {
        let (server, media) = mxc
            .strip_prefix("mxc://")
            .and_then(|r| r.split_once('/'))
            .ok_or_else(|| anyhow::anyhow!("not an mxc URI: {mxc}"))?;
        let url = self.url(&["_matrix", "client"], &["v1", "media", "download", server, media], None)?;
        let mut response = self.http.get(url).bearer_auth(&self.as_token).send().await?;
        if !response.status().is_success() {
            return Err(Self::answer(response).await.err().unwrap_or_else(|| anyhow::anyhow!("download failed")));
        }
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > limit {
                anyhow::bail!("{mxc} is larger than {limit} bytes");
            }
        }
        Ok((bytes, kind))
    }
}

/// The Matrix error code of a failed call, if the homeserver gave one.
pub fn errcode(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<MatrixError>().map(|m| m.errcode.as_str())
}
