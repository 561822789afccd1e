//! An authenticated caller and the checks handlers make against it.

use std::sync::Arc;

use memobuild_proto::{Error, Result};
use tonic::Code;

use crate::{Capability, CapabilitySet};

/// Who is calling: a name, what they may do and in which instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    capabilities: CapabilitySet,
    /// Instance-name prefixes; `None` is every instance.
    instances: Option<Vec<String>>,
}

impl Principal {
    /// `instances` are prefixes by path segment: `team-a` covers `team-a`
    /// and `team-a/ci`, not `team-ab`; `""` is the default instance alone;
    /// `"*"` (or `None`) is every instance.
    pub fn new(name: impl Into<String>, capabilities: &[Capability], instances: Option<Vec<String>>) -> Self {
        let instances = instances.filter(|list| !list.iter().any(|p| p == "*"));
        Principal { name: name.into(), capabilities: CapabilitySet::granting(capabilities), instances }
    }

    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(capability)
    }

    /// Whether the principal may use instance `instance` at all.
    pub fn sees(&self, instance: &str) -> bool {
        match &self.instances {
            None => true,
            Some(prefixes) => prefixes.iter().any(|prefix| covers(prefix, instance)),
        }
    }

    /// PERMISSION_DENIED unless the principal holds `capability` (in some instance).
    pub fn require(&self, capability: Capability) -> Result<()> {
        match self.has(capability) {
            true => Ok(()),
            false => Err(Error::new(
                Code::PermissionDenied,
                format!("principal {:?} lacks the {capability} capability", self.name),
            )),
        }
    }

    /// PERMISSION_DENIED unless the principal holds `capability` in `instance`.
    pub fn check(&self, capability: Capability, instance: &str) -> Result<()> {
        self.require(capability)?;
        if !self.sees(instance) {
            return Err(Error::new(
                Code::PermissionDenied,
                format!("principal {:?} may not use instance {instance:?}", self.name),
            ));
        }
        Ok(())
    }
}

fn covers(prefix: &str, instance: &str) -> bool {
    if prefix.is_empty() {
        return instance.is_empty();
    }
    match instance.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The principal the [`crate::AuthLayer`] found for this request; `None`
/// when the server runs without auth.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Arc<Principal>> {
    request.extensions().get::<Arc<Principal>>().cloned()
}

/// [`Principal::check`] for an optional principal: no principal (no auth
/// configured) may do everything.
pub fn check(principal: Option<&Principal>, capability: Capability, instance: &str) -> Result<()> {
    match principal {
        Some(principal) => principal.check(capability, instance),
        None => Ok(()),
    }
}

/// [`check`] against the caller of `request`.
pub fn check_request<T>(request: &tonic::Request<T>, capability: Capability, instance: &str) -> Result<()> {
    check(request.extensions().get::<Arc<Principal>>().map(|p| p.as_ref()), capability, instance)
}

/// Whether an optional principal may see `instance` (always, without auth).
pub fn sees(principal: Option<&Principal>, instance: &str) -> bool {
    principal.is_none_or(|p| p.sees(instance))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefixes_cover_whole_segments() {
        let p = Principal::new("a", &[Capability::Read], Some(vec!["team-a".into(), "".into()]));
        assert!(p.sees("team-a") && p.sees("team-a/ci") && p.sees(""));
        assert!(!p.sees("team-ab") && !p.sees("team-b") && !p.sees("x/team-a"));
        let slash = Principal::new("b", &[Capability::Read], Some(vec!["team-b/".into()]));
        assert!(slash.sees("team-b/x") && !slash.sees("team-bx") && !slash.sees(""));
        let all = Principal::new("c", &[Capability::Read], Some(vec!["*".into()]));
        assert!(all.sees("anything") && all.sees(""));
    }

    #[test]
    fn checks_name_the_missing_capability_or_instance() {
        let p = Principal::new("ci", &[Capability::Read], Some(vec!["team-a".into()]));
        let e = p.check(Capability::Write, "team-a").unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("\"ci\" lacks the write capability"), "{}", e.message());
        let e = p.check(Capability::Read, "team-b").unwrap_err();
        assert!(e.message().contains("may not use instance \"team-b\""), "{}", e.message());
        p.check(Capability::Read, "team-a/x").unwrap();
        check(None, Capability::Admin, "any").unwrap();
    }
}
