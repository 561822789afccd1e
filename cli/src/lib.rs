//! The `memobuild` command line and the server roles it runs.

pub mod admin;
pub mod build;
pub mod build_view;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod dashboard;
pub mod graph;
pub mod health;
pub mod remote;
pub mod request_layer;
pub mod security;
pub mod server;
pub mod telemetry;
