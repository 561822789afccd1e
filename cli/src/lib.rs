//! The `memobuild` command line and the server roles it runs.

pub mod admin;
pub mod build;
pub mod config;
pub mod credentials;
pub mod graph;
pub mod remote;
pub mod request_layer;
pub mod security;
pub mod server;
