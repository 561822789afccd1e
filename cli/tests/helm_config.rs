//! The Helm chart's ConfigMap is read by the real config loader: every
//! profile in helm/memobuild/ci renders a memobuild.toml that the roles
//! accept, with the sections each role reads. Needs helm
//! (scripts/install-deps.sh puts it at /opt/memobuild-k8s/helm; $HELM
//! overrides).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use memobuild_cas::{MetadataConfig, StoreConfig};
use memobuild_cli::config::{OperationStoreConfig, ServerConfig};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/memobuild")
}

fn helm() -> String {
    std::env::var("HELM").unwrap_or_else(|_| "/opt/memobuild-k8s/helm".to_string())
}

/// The `memobuild.toml` of the ConfigMap `helm template` renders with `args`.
fn rendered_toml(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(["template", "mb"])
        .arg(chart())
        .args(["--show-only", "templates/configmap.yaml"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (install it with scripts/install-deps.sh)", helm()));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    // The ConfigMap's one key is a block scalar indented by four spaces.
    let body = yaml.split_once("  memobuild.toml: |\n").unwrap_or_else(|| panic!("no memobuild.toml in:\n{yaml}")).1;
    body.lines().map(|line| line.strip_prefix("    ").unwrap_or(line.trim_start())).collect::<Vec<_>>().join("\n")
}

/// Loads the rendered TOML from a file, as a pod does.
fn load(args: &[&str]) -> ServerConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memobuild.toml");
    let text = rendered_toml(args);
    std::fs::write(&path, &text).unwrap();
    ServerConfig::load(&path).unwrap_or_else(|e| panic!("{args:?} renders a config the loader refuses: {e:#}\n{text}"))
}

fn profiles() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_profile_renders_a_config_every_role_loads() {
    let profiles = profiles();
    assert!(profiles.len() >= 6, "{profiles:?}");
    for profile in profiles {
        let path = profile.display().to_string();
        let config = load(&["-f", &path]);
        // The scheduler and worker roles read these sections of the same file
        // (the scheduler's store URL is filled from the pod's environment).
        let scheduler = config.scheduler.clone().unwrap_or_else(|| panic!("{path}: no [scheduler]"));
        config.worker_section(Path::new("memobuild.toml")).unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(config.listen.port(), 8980, "{path}");
        assert_eq!(config.admin_listen.map(|a| a.port()), Some(9090), "{path}");
        let cluster = std::fs::read_to_string(&profile).unwrap().contains("mode: cluster");
        assert_eq!(matches!(scheduler.store, OperationStoreConfig::Postgres { .. }), cluster, "{path}");
    }
}

#[test]
fn values_map_one_to_one_to_the_config() {
    let config = load(&[
        "--set",
        "config.worker.slots=7",
        "--set",
        "config.limits.max_uploads=12",
        "--set",
        "config.scheduler.max_attempts=5",
        "--set",
        "config.worker.network.egress=false",
        "--set",
        "config.worker.properties.pool=gpu",
        "--set",
        "config.worker.oci_runtime=runc",
    ]);
    let worker = config.worker.unwrap();
    assert_eq!(worker.slots, Some(7));
    assert!(!worker.network.egress);
    assert_eq!(worker.properties.get("pool").map(String::as_str), Some("gpu"));
    assert_eq!(worker.oci_runtime.as_deref(), Some("runc"));
    assert_eq!(config.limits.max_uploads, 12);
    assert_eq!(config.scheduler.unwrap().max_attempts, 5);
}

#[test]
fn cluster_cas_has_the_shape_of_the_composed_stores() {
    let config =
        load(&["--set", "mode=cluster", "--set", "postgresql.url=postgres://db/m", "--set", "s3.buckets={abc}"]);
    let StoreConfig::Metered { inner, .. } = config.cas else { panic!("{:?}", config.cas) };
    let StoreConfig::Evicting { inner, metadata: MetadataConfig::Postgres { url, .. }, max_bytes, .. } = *inner else {
        panic!()
    };
    assert_eq!((url.as_str(), max_bytes), ("${DATABASE_URL}", 1 << 40));
    // Without Redis configured the existence index has none.
    let StoreConfig::ExistenceCached { inner, redis: None, .. } = *inner else { panic!() };
    let StoreConfig::Tiered { slow, .. } = *inner else { panic!() };
    let StoreConfig::Metered { inner, .. } = *slow else { panic!() };
    assert!(matches!(*inner, StoreConfig::S3Shards { ref buckets, .. } if buckets == "${S3_BUCKETS}"));
    assert!(matches!(config.action_cache, StoreConfig::Metered { .. }));
}

#[test]
fn auth_and_tls_values_fill_the_sections() {
    let config = load(&[
        "--set",
        "auth.enabled=true",
        "--set",
        "auth.existingSecret=p",
        "--set",
        "tls.enabled=true",
        "--set",
        "tls.existingSecret=t",
        "--set",
        "tls.clientCertificates=true",
    ]);
    assert_eq!(config.auth.unwrap().principals_file, Path::new("/etc/memobuild/auth/principals.toml"));
    let tls = config.tls.unwrap();
    assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/etc/memobuild/tls/ca.crt")));
}
