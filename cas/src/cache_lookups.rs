use prometheus::{IntCounterVec, Opts, Registry};

/// gRPC metadata on a GetActionResult whose caller counts the lookup itself
/// (a scheduler proxying a client's lookup, or looking up for Execute or a
/// build step): the action cache it reaches does not count it again, so the
/// lookups summed over a cluster's roles are the lookups clients made.
pub const LOOKUP_COUNTED_BY_CALLER: &str = "x-memobuild-lookup-counted";

/// `memobuild_cache_lookups_total{kind, result}`: cache lookups by kind
/// (`ac` for GetActionResult, `execute` for Execute's own lookup, `step`
/// for a build's Dockerfile steps) and result (`hit`, `miss`). The hit
/// ratio of a kind is hits over all its lookups.
#[derive(Clone)]
pub struct CacheLookups {
    counter: IntCounterVec,
}

/// What a cache lookup was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    ActionCache,
    Execute,
    Step,
}

impl CacheKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::ActionCache => "ac",
            CacheKind::Execute => "execute",
            CacheKind::Step => "step",
        }
    }
}

impl CacheLookups {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = IntCounterVec::new(
            Opts::new("memobuild_cache_lookups_total", "Cache lookups by kind (ac, execute, step) and result"),
            &["kind", "result"],
        )?;
        registry.register(Box::new(counter.clone()))?;
        Ok(CacheLookups { counter })
    }

    /// Counts one lookup of `kind`.
    pub fn record(&self, kind: CacheKind, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.counter.with_label_values(&[kind.as_str(), result]).inc();
    }

    /// Lookups of `kind` so far with this result.
    pub fn count(&self, kind: CacheKind, hit: bool) -> u64 {
        let result = if hit { "hit" } else { "miss" };
        self.counter.with_label_values(&[kind.as_str(), result]).get()
    }
}
