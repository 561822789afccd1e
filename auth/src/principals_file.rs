//! The file of principals: hashed bearer tokens and client-certificate
//! names, each with capabilities, instances and an optional expiry.
//!
//! ```toml
//! [[token]]
//! principal = "ci"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! capabilities = ["read", "write", "ac-write"]
//! instances = ["ci"]                  # prefixes by segment; omitted or "*": all
//! expires = 2027-01-01T00:00:00Z      # optional
//!
//! [[certificate]]
//! name = "worker-1.cluster.internal"  # the certificate's CN or a DNS SAN
//! principal = "worker-1"
//! capabilities = ["worker"]
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use memobuild_proto::{Error, Result};
use serde::Deserialize;

use crate::{Capability, Principal};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    token: Vec<TokenText>,
    #[serde(default)]
    certificate: Vec<CertificateText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenText {
    principal: String,
    sha256: String,
    capabilities: Vec<Capability>,
    instances: Option<Vec<String>>,
    expires: Option<toml::value::Datetime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateText {
    name: String,
    principal: String,
    capabilities: Vec<Capability>,
    instances: Option<Vec<String>>,
}

/// One token's principal and when it stops working (Unix seconds).
#[derive(Clone, Debug)]
pub(crate) struct TokenEntry {
    pub principal: Arc<Principal>,
    pub expires: Option<i64>,
}

/// A parsed principals file.
#[derive(Clone, Debug, Default)]
pub struct PrincipalsFile {
    pub(crate) tokens: HashMap<[u8; 32], TokenEntry>,
    pub(crate) certificates: HashMap<String, Arc<Principal>>,
}

impl PrincipalsFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid_argument(format!("reading principals file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| e.context(format!("principals file {}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let file: FileText = toml::from_str(text).map_err(|e| Error::invalid_argument(e.to_string()))?;
        let mut parsed = PrincipalsFile::default();
        for (i, token) in file.token.into_iter().enumerate() {
            let what = || format!("token #{} (principal {:?})", i + 1, token.principal);
            let hash = parse_sha256(&token.sha256).map_err(|e| e.context(what()))?;
            let expires = token.expires.as_ref().map(unix_seconds).transpose().map_err(|e| e.context(what()))?;
            let principal = Arc::new(Principal::new(token.principal.clone(), &token.capabilities, token.instances));
            if parsed.tokens.insert(hash, TokenEntry { principal, expires }).is_some() {
                return Err(Error::invalid_argument(format!("{}: the same token hash appears twice", what())));
            }
        }
        for certificate in file.certificate {
            let principal = Principal::new(certificate.principal, &certificate.capabilities, certificate.instances);
            if parsed.certificates.insert(certificate.name.clone(), Arc::new(principal)).is_some() {
                return Err(Error::invalid_argument(format!("certificate name {:?} appears twice", certificate.name)));
            }
        }
        Ok(parsed)
    }
}

fn parse_sha256(text: &str) -> Result<[u8; 32]> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash).map_err(|_| {
        Error::invalid_argument("sha256 must be 64 hex digits: the SHA-256 of the token (sha256sum of the token text)")
    })?;
    Ok(hash)
}

/// A TOML offset date-time as Unix seconds.
fn unix_seconds(datetime: &toml::value::Datetime) -> Result<i64> {
    let (Some(date), Some(time), Some(offset)) = (datetime.date, datetime.time, datetime.offset) else {
        return Err(Error::invalid_argument(format!(
            "expires = {datetime}: give a full date, time and offset, e.g. 2027-01-01T00:00:00Z"
        )));
    };
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(i64::from(date.year), i64::from(date.month), i64::from(date.day));
    let seconds = i64::from(time.hour) * 3600 + i64::from(time.minute) * 60 + i64::from(time.second);
    Ok(days * 86_400 + seconds - offset_minutes * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_tokens_and_certificates() {
        let text = r#"
            [[token]]
            principal = "ci"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            capabilities = ["read", "ac-write"]
            instances = ["ci"]
            expires = 2027-01-01T01:00:00+01:00

            [[certificate]]
            name = "worker-1.internal"
            principal = "worker-1"
            capabilities = ["worker"]
        "#;
        let file = PrincipalsFile::parse(text).unwrap();
        let entry = file.tokens.values().next().unwrap();
        assert_eq!(entry.expires, Some(1_798_761_600));
        assert!(entry.principal.has(Capability::AcWrite) && !entry.principal.has(Capability::Write));
        assert!(entry.principal.sees("ci/x") && !entry.principal.sees("other"));
        assert!(file.certificates["worker-1.internal"].has(Capability::Worker));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = PrincipalsFile::parse("[[token]]\nprincipal=\"a\"\nsha256=\"xyz\"\ncapabilities=[]").unwrap_err();
        assert!(e.message().contains("64 hex digits") && e.message().contains("\"a\""), "{}", e.message());
        let e = PrincipalsFile::parse("[[token]]\nprincipal=\"a\"\nsha256=\"\"\ncapabilities=[\"fly\"]").unwrap_err();
        assert!(e.message().contains("fly"), "{}", e.message());
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
