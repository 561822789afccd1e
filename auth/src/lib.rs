//! Who is calling and what they may do.
//!
//! The [`AuthLayer`] sits in front of every gRPC service: it turns a bearer
//! token (`authorization: Bearer ...`, checked against a file of SHA-256
//! hashes that is reloaded when it changes) or a verified client
//! certificate (its CN or a DNS SAN) into a [`Principal`], puts it into the
//! request's extensions, and answers UNAUTHENTICATED when it cannot. The
//! handlers then [`check`] a capability and an instance name. With no auth
//! configured no principal is present and every check passes.
//!
//! [`ServerTls`] terminates TLS on a gRPC port, from certificate files that
//! are read again when they change.

mod auth_layer;
mod authenticator;
mod capability;
mod file_watch;
mod principal;
mod principals_file;
mod server_tls;

pub use auth_layer::{AuthLayer, AuthService};
pub use authenticator::{hash_token, Authenticator};
pub use capability::{Capability, CapabilitySet};
pub use principal::{caller, check, check_request, sees, Principal};
pub use principals_file::PrincipalsFile;
pub use server_tls::{ServerTls, TlsFiles};
