//! The kinds of remote build a `builds` run mixes, and in what shares.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// What a build finds in the cluster's action cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    /// The same Dockerfile, context and arguments every time: every step
    /// is a cache hit.
    Cached,
    /// A context file differs per build: the COPY that reads it and the
    /// steps after it run again.
    Changed,
    /// A build argument unique to the build, read by the first step: every
    /// step runs.
    Cold,
}

impl BuildKind {
    pub const ALL: [BuildKind; 3] = [BuildKind::Cached, BuildKind::Changed, BuildKind::Cold];

    pub fn name(self) -> &'static str {
        match self {
            BuildKind::Cached => "cached",
            BuildKind::Changed => "changed",
            BuildKind::Cold => "cold",
        }
    }
}

impl fmt::Display for BuildKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of cached, changed and cold builds (`60:30:10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BuildMix {
    pub cached: u32,
    pub changed: u32,
    pub cold: u32,
}

impl BuildMix {
    fn weight(&self, kind: BuildKind) -> u32 {
        match kind {
            BuildKind::Cached => self.cached,
            BuildKind::Changed => self.changed,
            BuildKind::Cold => self.cold,
        }
    }

    /// The kinds of `count` builds in submission order: each kind's share
    /// as close to its weight as whole builds allow (largest remainder), and
    /// the kinds interleaved so that every stretch of the run holds the mix.
    pub fn kinds(&self, count: usize) -> Vec<BuildKind> {
        let total: u64 = BuildKind::ALL.iter().map(|&k| u64::from(self.weight(k))).sum();
        let mut result = Vec::with_capacity(count);
        let mut given = [0u64; 3];
        for i in 0..count as u64 {
            // The kind furthest behind its share of the first i + 1 builds.
            let behind = |(slot, &kind): (usize, &BuildKind)| {
                let due = (i + 1) * u64::from(self.weight(kind));
                (due as i128 - (given[slot] * total) as i128, std::cmp::Reverse(slot))
            };
            let Some((slot, &kind)) = BuildKind::ALL.iter().enumerate().max_by_key(|&entry| behind(entry)) else {
                break;
            };
            given[slot] += 1;
            result.push(kind);
        }
        result
    }
}

impl Default for BuildMix {
    fn default() -> Self {
        BuildMix { cached: 60, changed: 30, cold: 10 }
    }
}

impl fmt::Display for BuildMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.cached, self.changed, self.cold)
    }
}

impl FromStr for BuildMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let [cached, changed, cold] = parts.as_slice() else {
            return Err(format!("expected CACHED:CHANGED:COLD weights such as 60:30:10, got {text:?}"));
        };
        let weight = |part: &str| part.trim().parse::<u32>().map_err(|e| format!("weight {part:?} in {text:?}: {e}"));
        let mix = BuildMix { cached: weight(cached)?, changed: weight(changed)?, cold: weight(cold)? };
        if mix.cached == 0 && mix.changed == 0 && mix.cold == 0 {
            return Err(format!("mix {text:?} has no build with a weight above 0"));
        }
        Ok(mix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn counts(kinds: &[BuildKind]) -> [usize; 3] {
        BuildKind::ALL.map(|k| kinds.iter().filter(|&&x| x == k).count())
    }

    #[test]
    fn parses_weights() {
        assert_eq!("60:30:10".parse::<BuildMix>(), Ok(BuildMix::default()));
        assert_eq!("1:0:0".parse::<BuildMix>(), Ok(BuildMix { cached: 1, changed: 0, cold: 0 }));
        assert!("60:30".parse::<BuildMix>().is_err());
        assert!("0:0:0".parse::<BuildMix>().is_err());
        assert!("a:1:1".parse::<BuildMix>().is_err());
        assert_eq!(BuildMix::default().to_string(), "60:30:10");
    }

    #[test]
    fn shares_follow_the_weights() {
        let mix = BuildMix::default();
        assert_eq!(counts(&mix.kinds(10)), [6, 3, 1]);
        assert_eq!(counts(&mix.kinds(100)), [60, 30, 10]);
        assert_eq!(counts(&mix.kinds(1000)), [600, 300, 100]);
        let only_cold = BuildMix { cached: 0, changed: 0, cold: 5 };
        assert_eq!(counts(&only_cold.kinds(7)), [0, 0, 7]);
        assert!(mix.kinds(0).is_empty());
    }

    #[test]
    fn kinds_are_interleaved() {
        let kinds = BuildMix { cached: 1, changed: 1, cold: 0 }.kinds(6);
        assert_eq!(
            kinds,
            [
                BuildKind::Cached,
                BuildKind::Changed,
                BuildKind::Cached,
                BuildKind::Changed,
                BuildKind::Cached,
                BuildKind::Changed
            ]
        );
        // Every ten builds of 60:30:10 hold the mix.
        let kinds = BuildMix::default().kinds(100);
        for chunk in kinds.chunks(10) {
            assert_eq!(counts(chunk), [6, 3, 1]);
        }
    }
}
