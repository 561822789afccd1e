use std::collections::BTreeSet;

use memobuild_proto::reapi;
use memobuild_proto::worker::ANY_VALUE;

/// Platform properties as (name, value) pairs, sorted: what an action asks
/// for or what a worker offers. A name may appear with several values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Platform(Vec<(String, String)>);

impl Platform {
    pub fn new(properties: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut properties: Vec<_> = properties.into_iter().collect();
        properties.sort();
        properties.dedup();
        Platform(properties)
    }

    pub fn from_proto(platform: Option<&reapi::Platform>) -> Self {
        Self::new(platform.into_iter().flat_map(|p| p.properties.iter().map(|p| (p.name.clone(), p.value.clone()))))
    }

    pub fn to_proto(&self) -> Vec<reapi::platform::Property> {
        self.0
            .iter()
            .map(|(name, value)| reapi::platform::Property { name: name.clone(), value: value.clone() })
            .collect()
    }

    pub fn properties(&self) -> &[(String, String)] {
        &self.0
    }
}

/// How requested properties are matched against offered ones: equal values,
/// except for `minimum_keys`, whose numeric values are lower bounds, and an
/// offered [`ANY_VALUE`], which takes any value.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    minimum_keys: BTreeSet<String>,
}

impl Matcher {
    pub fn new(minimum_keys: impl IntoIterator<Item = String>) -> Self {
        Matcher { minimum_keys: minimum_keys.into_iter().collect() }
    }

    /// The requested properties `offer` does not satisfy, as `name=value`.
    pub fn unmet(&self, offer: &Platform, wanted: &Platform) -> Vec<String> {
        wanted
            .0
            .iter()
            .filter(|(name, value)| !offer.0.iter().any(|(n, v)| n == name && self.satisfies(name, v, value)))
            .map(|(name, value)| format!("{name}={value}"))
            .collect()
    }

    pub fn matches(&self, offer: &Platform, wanted: &Platform) -> bool {
        self.unmet(offer, wanted).is_empty()
    }

    fn satisfies(&self, name: &str, offered: &str, wanted: &str) -> bool {
        if offered == ANY_VALUE {
            return true;
        }
        if self.minimum_keys.contains(name) {
            if let (Ok(offered), Ok(wanted)) = (offered.parse::<f64>(), wanted.parse::<f64>()) {
                return offered >= wanted;
            }
        }
        offered == wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(pairs: &[(&str, &str)]) -> Platform {
        Platform::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
    }

    #[test]
    fn exact_and_minimum_keys() {
        let matcher = Matcher::new(["cores".to_string()]);
        let worker = platform(&[("OSFamily", "Linux"), ("cores", "8"), ("ISA", "x86-64"), ("ISA", "x86-64-v3")]);
        assert!(matcher.matches(&worker, &platform(&[])));
        assert!(matcher.matches(&worker, &platform(&[("OSFamily", "Linux"), ("cores", "4"), ("ISA", "x86-64-v3")])));
        assert_eq!(matcher.unmet(&worker, &platform(&[("cores", "16")])), vec!["cores=16"]);
        assert_eq!(
            matcher.unmet(&worker, &platform(&[("OSFamily", "Windows"), ("gpu", "1")])),
            vec!["OSFamily=Windows", "gpu=1"]
        );
        // A worker that interprets a property itself takes any value of it.
        let images = platform(&[("OSFamily", "Linux"), ("container-image", "*")]);
        assert!(matcher.matches(&images, &platform(&[("container-image", "docker://r/i@sha256:00")])));
        assert_eq!(
            matcher.unmet(&worker, &platform(&[("container-image", "docker://r/i")])),
            vec!["container-image=docker://r/i"]
        );
        // Numbers compare exactly unless the key is a minimum key.
        assert!(!matcher.matches(&platform(&[("version", "12")]), &platform(&[("version", "11")])));
    }
}
