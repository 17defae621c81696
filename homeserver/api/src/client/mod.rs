//! Client-server API handlers, one file per section of the spec.

pub mod account;
pub mod appservice;
pub mod discovery;
pub mod events;
pub mod keys;
pub mod legacy;
pub mod media;
pub mod push;
pub mod reports;
pub mod rooms;
pub mod sync;
pub mod voip;
