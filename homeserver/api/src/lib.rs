//! The HTTP layer of Diplomatie: the only crate that knows routes and status codes.
//!
//! Each handler takes a typed ruma request (parsed and authenticated by [`ruma_wrapper::Ruma`])
//! and calls the services. Routes are registered from ruma's own path tables, so every version
//! of a path the spec lists (`r0`, `v3`, unstable prefixes) reaches the same handler.

pub mod admin;
pub mod archive;
pub mod audit;
pub mod circuits;
pub mod client;
pub mod correspondence;
pub mod crisis;
pub mod error;
pub mod federation;
pub mod limits;
pub mod metrics;
pub mod mls;
pub mod retention;
pub mod ruma_wrapper;
pub mod sso;
pub mod stats;
pub mod synapse_admin;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use diplomatie_service::{Error, Services};
use ruma::api::client as c;
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer, trace::TraceLayer};

use crate::{client::*, error::ApiError, ruma_wrapper::route};

/// Builds the application: every route, CORS for web clients, per-request tracing spans, and
/// the spec's `M_UNRECOGNIZED` for everything else.
pub fn router(services: Arc<Services>) -> Router {
    let r = Router::new();
    // Discovery
    let r = r
        .route("/_matrix/client/versions", get(discovery::versions))
        .route("/.well-known/matrix/client", get(discovery::well_known_client))
        .route("/.well-known/matrix/server", get(discovery::well_known_server))
        .route("/_matrix/client/v3/capabilities", get(discovery::capabilities))
        .route("/_matrix/client/r0/capabilities", get(discovery::capabilities));
    // Accounts and sessions
    let r = route::<c::account::register::v3::Request, _, _>(r, account::register);
    let r = route::<c::account::get_username_availability::v3::Request, _, _>(r, account::username_available);
    let r = route::<c::account::check_registration_token_validity::v1::Request, _, _>(
        r,
        account::registration_token_validity,
    );
    let r = route::<c::session::get_login_types::v3::Request, _, _>(r, account::login_types);
    let r = route::<c::session::login::v3::Request, _, _>(r, account::login);
    let r = route::<c::session::sso_login::v3::Request, _, _>(r, sso::redirect);
    let r = route::<c::session::sso_login_with_provider::v3::Request, _, _>(r, sso::redirect_to);
    let r = route::<c::session::get_login_token::v1::Request, _, _>(r, account::get_login_token);
    let r = route::<c::session::refresh_token::v3::Request, _, _>(r, account::refresh);
    let r = route::<c::session::logout::v3::Request, _, _>(r, account::logout);
    let r = route::<c::session::logout_all::v3::Request, _, _>(r, account::logout_all);
    let r = route::<c::account::whoami::v3::Request, _, _>(r, account::whoami);
    let r = route::<c::admin::get_user_info::v3::Request, _, _>(r, account::whois);
    let r = route::<c::account::get_3pids::v3::Request, _, _>(r, account::threepids);
    let r = route::<c::account::request_registration_token_via_email::v3::Request, _, _>(
        r,
        account::request_registration_email_token,
    );
    let r = route::<c::account::request_password_change_token_via_email::v3::Request, _, _>(
        r,
        account::request_password_email_token,
    );
    let r = route::<c::account::bind_3pid::v3::Request, _, _>(r, account::bind_threepid);
    let r = route::<c::account::unbind_3pid::v3::Request, _, _>(r, account::unbind_threepid);
    let r = route::<c::account::delete_3pid::v3::Request, _, _>(r, account::delete_threepid);
    let r = route::<c::account::add_3pid::v3::Request, _, _>(r, account::add_threepid);
    let r = route::<c::account::request_3pid_management_token_via_email::v3::Request, _, _>(
        r,
        account::request_threepid_email_token,
    );
    let r = route::<c::account::request_openid_token::v3::Request, _, _>(r, account::request_openid_token);
    let r = route::<c::account::change_password::v3::Request, _, _>(r, account::change_password);
    let r = route::<c::account::deactivate::v3::Request, _, _>(r, account::deactivate);
    let r = route::<c::device::get_devices::v3::Request, _, _>(r, account::devices);
    let r = route::<c::device::get_device::v3::Request, _, _>(r, account::device);
    let r = route::<c::device::update_device::v3::Request, _, _>(r, account::update_device);
    let r = route::<c::device::delete_device::v3::Request, _, _>(r, account::delete_device);
    let r = route::<c::device::delete_devices::v3::Request, _, _>(r, account::delete_devices);
    let r = route::<c::profile::get_profile::v3::Request, _, _>(r, account::profile);
    let r = r
        .route(
            "/_matrix/client/v3/profile/{user_id}/{field}",
            get(account::profile_field_untyped).put(account::set_profile_field),
        )
        .route(
            "/_matrix/client/r0/profile/{user_id}/{field}",
            get(account::profile_field_untyped).put(account::set_profile_field),
        );
    // Rooms
    let r = route::<c::room::create_room::v3::Request, _, _>(r, rooms::create_room);
    let r = route::<c::membership::join_room_by_id::v3::Request, _, _>(r, rooms::join_by_id);
    let r = route::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(r, rooms::join_by_id_or_alias);
    let r = route::<c::knock::knock_room::v3::Request, _, _>(r, rooms::knock);
    let r = route::<c::membership::invite_user::v3::Request, _, _>(r, rooms::invite);
    let r = route::<c::membership::leave_room::v3::Request, _, _>(r, rooms::leave);
    let r = route::<c::membership::forget_room::v3::Request, _, _>(r, rooms::forget);
    let r = route::<c::membership::kick_user::v3::Request, _, _>(r, rooms::kick);
    let r = route::<c::membership::ban_user::v3::Request, _, _>(r, rooms::ban);
    let r = route::<c::membership::unban_user::v3::Request, _, _>(r, rooms::unban);
    let r = route::<c::membership::joined_rooms::v3::Request, _, _>(r, rooms::joined_rooms);
    let r = route::<c::membership::get_mutual_rooms::v1::Request, _, _>(r, rooms::mutual_rooms);
    let r = route::<c::membership::get_mutual_rooms::unstable::Request, _, _>(r, rooms::mutual_rooms_unstable);
    let r = route::<c::membership::get_member_events::v3::Request, _, _>(r, rooms::members);
    let r = route::<c::membership::joined_members::v3::Request, _, _>(r, rooms::joined_members);
    let r = route::<c::state::get_state_events::v3::Request, _, _>(r, rooms::state);
    let r = route::<c::state::get_state_event_for_key::v3::Request, _, _>(r, rooms::state_event);
    let r = route::<c::state::send_state_event::v3::Request, _, _>(r, rooms::send_state);
    let r = route::<c::room::aliases::v3::Request, _, _>(r, rooms::room_aliases);
    let r = route::<c::alias::get_alias::v3::Request, _, _>(r, rooms::get_alias);
    let r = route::<c::alias::create_alias::v3::Request, _, _>(r, rooms::create_alias);
    let r = route::<c::alias::delete_alias::v3::Request, _, _>(r, rooms::delete_alias);
    let r = route::<c::directory::get_room_visibility::v3::Request, _, _>(r, rooms::room_visibility);
    let r = route::<c::directory::set_room_visibility::v3::Request, _, _>(r, rooms::set_visibility);
    let r = route::<c::directory::get_public_rooms::v3::Request, _, _>(r, rooms::public_rooms);
    let r = route::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(r, rooms::public_rooms_filtered);
    let r = route::<c::user_directory::search_users::v3::Request, _, _>(r, rooms::search_users);
    let r = route::<c::space::get_hierarchy::v1::Request, _, _>(r, rooms::hierarchy);
    // Reporting content
    let r = route::<c::room::report_room::v3::Request, _, _>(r, reports::report_room);
    let r = route::<c::reporting::report_user::v3::Request, _, _>(r, reports::report_user);
    // Events
    let r = route::<c::message::send_message_event::v3::Request, _, _>(r, events::send_message);
    let r = route::<c::redact::redact_event::v3::Request, _, _>(r, events::redact);
    // Calls: TURN, RTC transports, delayed events (MSC4140)
    let r = route::<c::voip::get_turn_server_info::v3::Request, _, _>(r, voip::turn_server);
    let r = route::<c::rtc::transports::v1::Request, _, _>(r, voip::rtc_transports);
    let r = route::<c::delayed_events::send_delayed_event::unstable::Request, _, _>(r, voip::send_delayed);
    let r = route::<c::delayed_events::update_delayed_event::unstable_v2::Request, _, _>(r, voip::update_by_path);
    let r = r.route(
        "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}",
        get(voip::get).post(voip::update_by_body),
    );
    let r = route::<c::delayed_events::get_all_delayed_events::unstable::Request, _, _>(r, voip::list);
    // Application services and third-party networks
    let r = route::<c::appservice::request_ping::v1::Request, _, _>(r, appservice::ping);
    // Sydent-era clients bind and unbind through the unstable prefix (as Synapse serves it).
    let r = r
        .route("/_matrix/client/unstable/account/3pid/bind", post(account::bind_threepid))
        .route("/_matrix/client/unstable/account/3pid/unbind", post(account::unbind_threepid));
    let mut r = r;
    for v in ["r0", "v3"] {
        r = r
            .route(
                &format!("/_matrix/client/{v}/directory/list/appservice/{{network_id}}/{{room_id}}"),
                axum::routing::put(appservice::set_listed).delete(appservice::unlist),
            )
            .route(&format!("/_matrix/client/{v}/thirdparty/protocols"), get(appservice::protocols))
            .route(&format!("/_matrix/client/{v}/thirdparty/protocol/{{protocol}}"), get(appservice::protocol))
            .route(
                &format!("/_matrix/client/{v}/thirdparty/{{kind}}/{{protocol}}"),
                get(appservice::lookup_in_protocol),
            )
            .route(&format!("/_matrix/client/{v}/thirdparty/user"), get(appservice::user_of_matrix_id))
            .route(&format!("/_matrix/client/{v}/thirdparty/location"), get(appservice::location_of_alias));
    }
    for v in ["r0", "v3"] {
        r = r
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/typing/{{user_id}}"),
                axum::routing::put(sync::typing),
            )
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/upgrade"), post(rooms::upgrade))
            .route(&format!("/_matrix/client/{v}/peek/{{room}}"), post(rooms::peek))
            .route(&format!("/_matrix/client/{v}/account/3pid"), post(account::add_threepid_deprecated))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/unpeek"), post(rooms::unpeek))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/report/{{event_id}}"), post(reports::report_event))
            .route(&format!("/_matrix/client/{v}/pushrules/global/{{kind}}/"), get(push::of_kind).put(push::malformed))
            .route(&format!("/_matrix/client/{v}/pushrules/{{*rest}}"), any(push::malformed))
            .route(&format!("/_matrix/client/{v}/pushrules/"), axum::routing::put(push::malformed))
            .route(&format!("/_matrix/client/{v}/pushrules/global/"), axum::routing::put(push::malformed))
            .route(&format!("/_matrix/client/{v}/events"), get(legacy::events))
            .route(&format!("/_matrix/client/{v}/initialSync"), get(legacy::initial_sync))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/initialSync"), get(legacy::room_initial_sync));
        r = r
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/send/{{event_type}}"),
                post(events::send_without_txn),
            )
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/redact/{{event_id}}"),
                post(events::redact_without_txn),
            );
    }
    let r = route::<c::room::get_room_event::v3::Request, _, _>(r, events::get_event);
    let r = route::<c::message::get_message_events::v3::Request, _, _>(r, events::messages);
    let r = route::<c::context::get_context::v3::Request, _, _>(r, events::context);
    let r = route::<c::room::get_event_by_timestamp::v1::Request, _, _>(r, events::timestamp_to_event);
    let r = route::<c::relations::get_relating_events::v1::Request, _, _>(r, events::relations);
    let r = route::<c::relations::get_relating_events_with_rel_type::v1::Request, _, _>(r, events::relations_with_type);
    let r = route::<c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
        r,
        events::relations_with_type_and_event_type,
    );
    let r = route::<c::threads::get_threads::v1::Request, _, _>(r, events::threads);
    let r = route::<c::search::search_events::v3::Request, _, _>(r, events::search);
    // Sync and its streams
    let r = route::<c::sync::sync_events::v3::Request, _, _>(r, sync::sync);
    let r = route::<c::sync::sync_events::v5::Request, _, _>(r, sync::sliding_sync);
    let r = route::<c::room::get_summary::v1::Request, _, _>(r, rooms::room_summary);
    let r = route::<c::filter::create_filter::v3::Request, _, _>(r, sync::create_filter);
    let r = route::<c::filter::get_filter::v3::Request, _, _>(r, sync::get_filter);
    let r = route::<c::receipt::create_receipt::v3::Request, _, _>(r, sync::receipt);
    let r = route::<c::read_marker::set_read_marker::v3::Request, _, _>(r, sync::read_markers);
    let r = route::<c::config::set_global_account_data::v3::Request, _, _>(r, sync::set_global_account_data);
    let r = route::<c::config::get_global_account_data::v3::Request, _, _>(r, sync::global_account_data);
    let r = route::<c::config::set_room_account_data::v3::Request, _, _>(r, sync::set_room_account_data);
    let r = route::<c::config::get_room_account_data::v3::Request, _, _>(r, sync::room_account_data);
    let r = route::<c::tag::get_tags::v3::Request, _, _>(r, sync::tags);
    let r = route::<c::tag::create_tag::v3::Request, _, _>(r, sync::set_tag);
    let r = route::<c::tag::delete_tag::v3::Request, _, _>(r, sync::delete_tag);
    let r = route::<c::presence::set_presence::v3::Request, _, _>(r, sync::set_presence);
    let r = route::<c::presence::get_presence::v3::Request, _, _>(r, sync::presence);
    // End-to-end encryption
    let r = route::<c::keys::upload_keys::v3::Request, _, _>(r, keys::upload);
    let r = route::<c::keys::get_keys::v3::Request, _, _>(r, keys::query);
    let r = route::<c::keys::claim_keys::v3::Request, _, _>(r, keys::claim);
    let r = route::<c::keys::get_key_changes::v3::Request, _, _>(r, keys::changes);
    let r = route::<c::to_device::send_event_to_device::v3::Request, _, _>(r, keys::send_to_device);
    let r = route::<c::keys::upload_signing_keys::v3::Request, _, _>(r, keys::upload_signing_keys);
    let r = route::<c::keys::upload_signatures::v3::Request, _, _>(r, keys::upload_signatures);
    let r = route::<c::backup::create_backup_version::v3::Request, _, _>(r, keys::create_backup);
    let r = route::<c::backup::get_latest_backup_info::v3::Request, _, _>(r, keys::latest_backup);
    let r = route::<c::backup::get_backup_info::v3::Request, _, _>(r, keys::backup);
    let r = route::<c::backup::update_backup_version::v3::Request, _, _>(r, keys::update_backup);
    let r = route::<c::backup::delete_backup_version::v3::Request, _, _>(r, keys::delete_backup);
    let r = route::<c::backup::add_backup_keys::v3::Request, _, _>(r, keys::put_keys);
    let r = route::<c::backup::add_backup_keys_for_room::v3::Request, _, _>(r, keys::put_room_keys);
    let r = route::<c::backup::add_backup_keys_for_session::v3::Request, _, _>(r, keys::put_session_key);
    let r = route::<c::backup::get_backup_keys::v3::Request, _, _>(r, keys::get_keys);
    let r = route::<c::backup::get_backup_keys_for_room::v3::Request, _, _>(r, keys::get_room_keys);
    let r = route::<c::backup::get_backup_keys_for_session::v3::Request, _, _>(r, keys::get_session_key);
    let r = route::<c::backup::delete_backup_keys::v3::Request, _, _>(r, keys::delete_keys);
    let r = route::<c::backup::delete_backup_keys_for_room::v3::Request, _, _>(r, keys::delete_room_keys);
    let r = route::<c::backup::delete_backup_keys_for_session::v3::Request, _, _>(r, keys::delete_session_key);
    let r =
        route::<c::dehydrated_device::put_dehydrated_device::unstable::Request, _, _>(r, keys::put_dehydrated_device);
    let r =
        route::<c::dehydrated_device::get_dehydrated_device::unstable::Request, _, _>(r, keys::get_dehydrated_device);
    let r = route::<c::dehydrated_device::delete_dehydrated_device::unstable::Request, _, _>(
        r,
        keys::delete_dehydrated_device,
    );
    let r = route::<c::dehydrated_device::get_events::unstable::Request, _, _>(r, keys::dehydrated_device_events);
    // Push notifications
    let r = route::<c::push::get_pushrules_all::v3::Request, _, _>(r, push::all);
    let r = route::<c::push::get_pushrules_global_scope::v3::Request, _, _>(r, push::global);
    let r = route::<c::push::get_pushrule::v3::Request, _, _>(r, push::get);
    let r = route::<c::push::set_pushrule::v3::Request, _, _>(r, push::set);
    let r = route::<c::push::delete_pushrule::v3::Request, _, _>(r, push::delete);
    let r = route::<c::push::get_pushrule_enabled::v3::Request, _, _>(r, push::enabled);
    let r = route::<c::push::set_pushrule_enabled::v3::Request, _, _>(r, push::set_enabled);
    let r = route::<c::push::get_pushrule_actions::v3::Request, _, _>(r, push::actions);
    let r = route::<c::push::set_pushrule_actions::v3::Request, _, _>(r, push::set_actions);
    let r = route::<c::push::get_notifications::v3::Request, _, _>(r, push::notifications);
    let r = route::<c::push::get_pushers::v3::Request, _, _>(r, push::pushers);
    let r = route::<c::push::set_pusher::v3::Request, _, _>(r, push::set_pusher);
    // Content repository
    let r = route::<c::authenticated_media::get_media_config::v1::Request, _, _>(r, media::config);
    let r = route::<c::authenticated_media::get_content::v1::Request, _, _>(r, media::download);
    let r = route::<c::authenticated_media::get_content_as_filename::v1::Request, _, _>(r, media::download_as);
    let r = route::<c::authenticated_media::get_content_thumbnail::v1::Request, _, _>(r, media::thumbnail);
    let r = route::<c::authenticated_media::get_media_preview::v1::Request, _, _>(r, media::preview);
    let r = route::<c::media::create_content::v3::Request, _, _>(r, media::upload);
    let r = route::<c::media::create_mxc_uri::v1::Request, _, _>(r, media::create);
    let r = route::<c::media::create_content_async::v3::Request, _, _>(r, media::upload_to);
    let r = legacy_media_routes(r);
    // Synapse-compatible administration
    let r = r
        .route("/_synapse/admin/v1/register", get(admin::register_nonce).post(admin::register))
        .route("/_synapse/admin/v1/event_reports", get(reports::synapse_list))
        .route("/_synapse/admin/v1/event_reports/{id}", get(reports::synapse_get).delete(reports::delete));
    use synapse_admin as sa;
    let r = r
        .route("/health", get(metrics::health))
        .route(diplomatie_service::sso::CALLBACK_PATH, get(sso::callback))
        .route("/_matrix/client/r0/login/cas/redirect", get(sso::cas_redirect))
        .route("/_matrix/client/v3/login/cas/redirect", get(sso::cas_redirect))
        .route(diplomatie_service::cas::TICKET_PATH, get(sso::cas_ticket))
        .route("/_matrix/client/v3/login/cas/ticket", get(sso::cas_ticket))
        .route("/_matrix/client/r0/auth/{auth_type}/fallback/web", get(sso::fallback))
        .route("/_matrix/client/v3/auth/{auth_type}/fallback/web", get(sso::fallback))
        .route("/_diplomatie/dashboard", get(stats::dashboard))
        .route("/_diplomatie/admin/v1/stats/units", get(stats::units))
        .route("/_diplomatie/admin/v1/stats/server", get(stats::server))
        .route("/_synapse/admin/v1/server_version", get(sa::server_version))
        .route("/_synapse/admin/v2/users", get(sa::list_users))
        .route("/_synapse/admin/v2/users/{user_id}", get(sa::get_user).put(sa::put_user))
        .route("/_synapse/admin/v1/deactivate/{user_id}", post(sa::deactivate))
        .route("/_synapse/admin/v1/reset_password/{user_id}", post(sa::reset_password))
        .route("/_synapse/admin/v2/users/{user_id}/devices", get(sa::devices))
        .route("/_synapse/admin/v2/users/{user_id}/devices/{device_id}", get(sa::device).delete(sa::delete_device))
        .route("/_synapse/admin/v2/users/{user_id}/delete_devices", post(sa::delete_devices))
        .route("/_synapse/admin/v1/users/{user_id}/joined_rooms", get(sa::joined_rooms))
        .route("/_synapse/admin/v1/whois/{user_id}", get(sa::whois))
        .route("/_synapse/admin/v1/users/{user_id}/shadow_ban", post(sa::shadow_ban).delete(sa::shadow_unban))
        .route("/_synapse/admin/v1/users/{user_id}/media", get(sa::user_media).delete(sa::delete_user_media))
        .route("/_synapse/admin/v1/media/{server}/{media_id}", delete(sa::delete_media))
        .route("/_synapse/admin/v1/media/{server}/delete", post(sa::delete_media_before))
        .route("/_synapse/admin/v1/media/quarantine/{server}/{media_id}", post(sa::quarantine_media))
        .route("/_synapse/admin/v1/media/unquarantine/{server}/{media_id}", post(sa::unquarantine_media))
        .route("/_synapse/admin/v1/media/protect/{media_id}", post(sa::protect_media))
        .route("/_synapse/admin/v1/media/unprotect/{media_id}", post(sa::unprotect_media))
        .route("/_synapse/admin/v1/room/{room_id}/media", get(sa::room_media))
        .route("/_synapse/admin/v1/room/{room_id}/media/quarantine", post(sa::quarantine_room_media))
        .route("/_synapse/admin/v1/user/{user_id}/media/quarantine", post(sa::quarantine_user_media))
        .route(
            "/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            get(sa::ratelimit_override).post(sa::set_ratelimit_override).delete(sa::delete_ratelimit_override),
        )
        .route("/_synapse/admin/v1/rooms", get(sa::list_rooms))
        .route("/_synapse/admin/v1/rooms/{room_id}", get(sa::get_room).delete(sa::delete_room_now))
        .route("/_synapse/admin/v2/rooms/{room_id}", delete(sa::delete_room))
        .route("/_synapse/admin/v2/rooms/{room_id}/delete_status", get(sa::room_deletions))
        .route("/_synapse/admin/v2/rooms/delete_status/{delete_id}", get(sa::deletion_status))
        .route("/_synapse/admin/v1/rooms/{room_id}/members", get(sa::room_members))
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(sa::room_state))
        .route("/_synapse/admin/v1/rooms/{room_id}/messages", get(sa::room_messages))
        .route("/_synapse/admin/v1/rooms/{room_id}/block", get(sa::room_block).put(sa::block_room))
        .route("/_synapse/admin/v1/registration_tokens", get(sa::registration_tokens))
        .route("/_synapse/admin/v1/registration_tokens/new", post(sa::new_registration_token))
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(sa::registration_token).put(sa::update_registration_token).delete(sa::delete_registration_token),
        )
        .route("/_diplomatie/admin/v1/audit", get(sa::audit));
    // The portal's administration
    let r = r
        .route("/_diplomatie/admin/v1/users/{user_id}/clearance", get(admin::get_clearance).put(admin::set_clearance))
        .route(
            "/_diplomatie/admin/v1/users/{user_id}/devices/{device_id}/clearance",
            get(admin::get_device_clearance).put(admin::set_device_clearance),
        )
        .route("/_diplomatie/admin/v1/users/{user_id}/kind", axum::routing::put(admin::set_kind))
        .route("/_diplomatie/admin/v1/users/{user_id}/primary_group", axum::routing::put(admin::set_primary_group))
        .route("/_diplomatie/admin/v1/groups", axum::routing::post(admin::create_group))
        .route("/_diplomatie/admin/v1/import", axum::routing::post(admin::import))
        .route("/_diplomatie/admin/v1/archive/export", axum::routing::post(archive::export))
        .route("/_diplomatie/admin/v1/archive/check", axum::routing::post(archive::check))
        .route("/_diplomatie/admin/v1/rooms/{room_id}/retention", get(retention::get_policy).put(retention::set_policy))
        .route("/_diplomatie/admin/v1/retention/purge", axum::routing::post(retention::purge))
        .route("/_diplomatie/admin/v1/retention/runs", get(retention::runs))
        .route("/_diplomatie/admin/v1/holds", get(retention::holds).post(retention::place))
        .route("/_diplomatie/admin/v1/holds/{hold_id}/release", axum::routing::post(retention::release))
        .route("/_diplomatie/admin/v1/reports", get(reports::list))
        .route("/_diplomatie/admin/v1/reports/{id}", get(reports::get).delete(reports::delete))
        .route("/_diplomatie/client/v1/rooms/{room_id}/reports", get(reports::room_list))
        .route("/_diplomatie/client/v1/email/submit_token", get(account::email_link).post(account::email_submit_token))
        .route("/_diplomatie/admin/v1/groups/{slug}/managers", axum::routing::put(admin::set_group_managers))
        .route("/_diplomatie/admin/v1/communities/{slug}/managers", axum::routing::put(admin::set_community_managers))
        .route("/_diplomatie/client/v1/communities", axum::routing::post(admin::create_community));
    // Formal correspondence and journals
    use axum::routing::{delete, put};
    let r = r
        .route("/_diplomatie/client/v1/crisis", post(crisis::activate))
        .route("/_diplomatie/client/v1/crisis/{cell_id}", get(crisis::info))
        .route("/_diplomatie/client/v1/crisis/{cell_id}/alert", post(crisis::alert))
        .route("/_diplomatie/client/v1/crisis/{cell_id}/sitrep", get(crisis::sitreps).put(crisis::set_sitrep))
        .route("/_diplomatie/client/v1/crisis/{cell_id}/log", get(crisis::log))
        .route("/_diplomatie/client/v1/crisis/{cell_id}/stand_down", post(crisis::stand_down))
        .route("/_diplomatie/client/v1/crisis/{cell_id}/alerts/{event_id}/recipients", get(crisis::alert_recipients));
    use correspondence as corr;
    let r = r
        .route("/_diplomatie/client/v1/correspondence", post(corr::send))
        .route("/_diplomatie/client/v1/correspondence/references", post(corr::reserve))
        .route("/_diplomatie/client/v1/correspondence/encrypted", post(corr::send_encrypted))
        .route("/_diplomatie/client/v1/groups/{slug}/dr_room", get(corr::dr_room).put(corr::set_dr_room))
        .route("/_diplomatie/client/v1/correspondence/keys/{key_id}", put(corr::put_key))
        .route("/_diplomatie/client/v1/users/{user_id}/correspondence_keys", get(corr::keys))
        .route("/_diplomatie/client/v1/correspondence/{reference}", get(corr::export))
        .route("/_diplomatie/client/v1/circuits", post(circuits::start))
        .route("/_diplomatie/client/v1/circuits/{circuit_id}", get(circuits::get))
        .route("/_diplomatie/client/v1/circuits/{circuit_id}/{action}", post(circuits::decide))
        .route("/_diplomatie/client/v1/circuits/{circuit_id}/draft", put(circuits::resubmit))
        .route("/_diplomatie/client/v1/delegations", post(circuits::delegate))
        .route("/_diplomatie/admin/v1/groups/{slug}/signatories", put(circuits::set_signatories))
        .route("/_diplomatie/client/v1/mls/config", get(crate::mls::config))
        .route("/_diplomatie/client/v1/mls/key_packages", post(crate::mls::upload))
        .route("/_diplomatie/client/v1/mls/key_packages/claim", post(crate::mls::claim))
        .route(
            "/_diplomatie/client/v1/mls/rooms/{room_id}/group",
            get(crate::mls::group).post(crate::mls::create_group),
        )
        .route("/_diplomatie/client/v1/mls/rooms/{room_id}/handshakes", get(crate::mls::handshakes))
        .route("/_diplomatie/client/v1/mls/rooms/{room_id}/commit", post(crate::mls::commit))
        .route("/_diplomatie/client/v1/mls/rooms/{room_id}/send/{txn_id}", put(crate::mls::send))
        .route("/_diplomatie/client/v1/correspondence/{reference}/audience", get(corr::audience))
        .route("/_diplomatie/client/v1/correspondence/{reference}/status/{group}", put(corr::set_status))
        .route("/_diplomatie/client/v1/journal", get(corr::journal))
        .route("/_diplomatie/client/v1/journal/tags/{tag}", put(corr::follow).merge(delete(corr::unfollow)));

    let r = federation::routes(r);

    let limits = limits::Limits::new(&services);
    r.fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(services.clone())
        // Bodies are limited by `limits` (per endpoint, answered as Matrix errors), not by
        // axum's plain-text default of 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state((services.clone(), limits), limits::limit_requests))
        .layer(axum::middleware::from_fn_with_state(services.clone(), audit::portal_changes))
        .layer(axum::middleware::from_fn_with_state(services, metrics::record))
        .layer(CorsLayer::very_permissive().max_age(Duration::from_secs(86400)))
        .layer(CatchPanicLayer::custom(|_| ApiError(Error::Internal).into_response()))
        .layer(TraceLayer::new_for_http().make_span_with(
            // `user` and `room` are recorded by the extractor once it knows them.
            |req: &Request| {
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    path = %req.uri().path(),
                    user = tracing::field::Empty,
                    room = tracing::field::Empty,
                )
            },
        ))
}

/// The content repository's `/_matrix/media/v3` endpoints, deprecated since v1.11 but still
/// allowed by the spec.
#[allow(deprecated)]
fn legacy_media_routes(r: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    let r = route::<c::media::get_media_config::v3::Request, _, _>(r, media::legacy_config);
    let r = route::<c::media::get_media_preview::v3::Request, _, _>(r, media::legacy_preview);
    let r = route::<c::media::get_content::v3::Request, _, _>(r, media::legacy_download);
    let r = route::<c::media::get_content_as_filename::v3::Request, _, _>(r, media::legacy_download_as);
    route::<c::media::get_content_thumbnail::v3::Request, _, _>(r, media::legacy_thumbnail)
}

/// Any endpoint this server does not implement: the spec's `M_UNRECOGNIZED`, 404.
async fn unrecognized(req: Request) -> Response {
    unrecognized_with(req, http::StatusCode::NOT_FOUND)
}

/// A known endpoint asked with a method it does not take: `M_UNRECOGNIZED`, 405 (client-server
/// spec, "Common error codes").
async fn method_not_allowed(req: Request) -> Response {
    unrecognized_with(req, http::StatusCode::METHOD_NOT_ALLOWED)
}

fn unrecognized_with(req: Request, status: http::StatusCode) -> Response {
    // CORS preflights of any path succeed (the CORS layer adds its headers).
    let status = if req.method() == http::Method::OPTIONS { http::StatusCode::OK } else { status };
    let body = serde_json::json!({ "errcode": "M_UNRECOGNIZED", "error": "Unrecognized request" });
    (status, axum::Json(body)).into_response()
}
