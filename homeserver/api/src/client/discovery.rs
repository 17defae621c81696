//! Discovery: `/versions`, `.well-known`, capabilities (client-server spec, "Server Discovery",
//! "Capabilities Negotiation").

use std::sync::Arc;

use axum::{extract::State, Json};
use diplomatie_service::{rooms::create::SUPPORTED_ROOM_VERSIONS, Services};
use serde::Serialize;

// `m.set_displayname` and `m.set_avatar_url` are deprecated since Matrix 1.16, and still read
// by clients of earlier versions.
#[allow(deprecated)]
use ruma::{
    api::{
        client::discovery::{
            discover_homeserver::{self, HomeserverInfo},
            get_capabilities::v3::{
                ChangePasswordCapability, GetLoginTokenCapability, RoomVersionStability, RoomVersionsCapability,
                SetAvatarUrlCapability, SetDisplayNameCapability, ThirdPartyIdChangesCapability,
            },
            get_supported_versions,
        },
        federation::discovery::discover_homeserver as federation_discovery,
    },
    OwnedServerName, RoomVersionId,
};

use crate::ruma_wrapper::{ApiResult, RumaResponse};

type S = State<Arc<Services>>;

/// The spec versions this server speaks, advertised to clients.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

/// The unstable features this server serves: simplified sliding sync (MSC4186) and room
/// summaries (MSC3266, its unstable name).
pub const UNSTABLE_FEATURES: &[&str] = &[
    "org.matrix.simplified_msc3575",
    "im.nheko.summary",
    "uk.half-shot.msc2666.query_mutual_rooms",
    "uk.half-shot.msc2666.query_mutual_rooms.stable",
    "org.matrix.msc4140",
];

pub async fn versions() -> RumaResponse<get_supported_versions::Response> {
    let mut answer = get_supported_versions::Response::new(SPEC_VERSIONS.iter().map(|v| v.to_string()).collect());
    answer.unstable_features = UNSTABLE_FEATURES.iter().map(|f| (f.to_string(), true)).collect();
    answer.into()
}

/// `/.well-known/matrix/client`: the base URL, and the MatrixRTC foci (SFUs) configured.
pub async fn well_known_client(State(s): S) -> RumaResponse<discover_homeserver::Response> {
    let mut answer = discover_homeserver::Response::new(HomeserverInfo::new(s.config.public_baseurl()));
    answer.rtc_foci = super::voip::rtc_foci(&s);
    answer.into()
}

/// Delegation (`m.server`): as configured, or the server name on port 443 when the name has no
/// port; a name with a port needs none (404).
pub async fn well_known_server(State(s): S) -> ApiResult<federation_discovery::Response> {
    let configured = &s.config.federation.well_known_server;
    let delegated = if !configured.is_empty() {
        configured.clone()
    } else if s.server_name().port().is_none() {
        format!("{}:443", s.server_name())
    } else {
        return Err(diplomatie_service::Error::not_found("No delegation: the server name carries its port").into());
    };
    let server = OwnedServerName::try_from(delegated).map_err(diplomatie_service::internal!())?;
    Ok(federation_discovery::Response::new(server).into())
}

/// What `/capabilities` answers. ruma's `Capabilities` leaves out a capability at its default
/// (`m.change_password` enabled, say); this server states each one it knows.
#[derive(Serialize)]
pub struct CapabilitiesAnswer {
    capabilities: Capabilities,
}

#[derive(Serialize)]
#[allow(deprecated)]
struct Capabilities {
    #[serde(rename = "m.room_versions")]
    room_versions: RoomVersionsCapability,
    #[serde(rename = "m.change_password")]
    change_password: ChangePasswordCapability,
    #[serde(rename = "m.set_displayname")]
    set_displayname: SetDisplayNameCapability,
    #[serde(rename = "m.set_avatar_url")]
    set_avatar_url: SetAvatarUrlCapability,
    #[serde(rename = "m.3pid_changes")]
    thirdparty_id_changes: ThirdPartyIdChangesCapability,
    #[serde(rename = "m.get_login_token")]
    get_login_token: GetLoginTokenCapability,
}

#[allow(deprecated)]
pub async fn capabilities(
    State(s): S,
    parts: http::request::Parts,
) -> Result<Json<CapabilitiesAnswer>, crate::error::ApiError> {
    crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let available = SUPPORTED_ROOM_VERSIONS
        .iter()
        .filter_map(|v| RoomVersionId::try_from(*v).ok())
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    Ok(Json(CapabilitiesAnswer {
        capabilities: Capabilities {
            room_versions: RoomVersionsCapability::new(s.membership.default_room_version(), available),
            change_password: ChangePasswordCapability::new(true),
            set_displayname: SetDisplayNameCapability::new(true),
            set_avatar_url: SetAvatarUrlCapability::new(true),
            thirdparty_id_changes: ThirdPartyIdChangesCapability::new(false),
            get_login_token: GetLoginTokenCapability::new(true),
        },
    }))
}
