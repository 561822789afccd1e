//! Pull and push against a real registry (Debian's docker-registry), with
#![allow(clippy::unwrap_used)]
//! images built by umoci and checked with skopeo.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{busybox_layout, config_for, hello_layer, require, run, store, umoci_unpack, Registry, HTPASSWD};
use memobuild_cas::BlobStore;
use memobuild_oci::{compress_layer, BuiltImage, Compression, ImageReference, RegistryClient};
use tonic::Code;

fn require_tools() {
    require(&["docker-registry", "umoci", "skopeo"]);
}

fn push_base(layout: &std::path::Path, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.arg("copy").arg("--dest-tls-verify=false");
    if let Some(creds) = creds {
        cmd.arg("--dest-creds").arg(creds);
    }
    run(cmd.arg(format!("oci:{}:busybox", layout.display())).arg(format!("docker://{dest}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_round_trip() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(None);
    let layout = busybox_layout(dir.path());
    let base_name = format!("{}/base/busybox:1", registry.host());
    push_base(&layout, &base_name, None);

    let store = store();
    let client = RegistryClient::anonymous();
    let base: ImageReference = base_name.parse().unwrap();
    let pulled = client.pull(&base, "linux/amd64", &store).await.unwrap();
    assert_eq!(pulled.reference, base_name);
    assert!(pulled.resolved.starts_with(&format!("{}/base/busybox@sha256:", registry.host())), "{}", pulled.resolved);
    assert!(pulled.resolved.ends_with(&pulled.manifest_digest));
    assert_eq!(pulled.layers.len(), 1);
    let diff_ids = pulled.config.rootfs().diff_ids();
    assert_eq!(diff_ids, &vec![pulled.layers[0].diff_id_string()]);
    assert!(store.find_missing(&[pulled.layers[0].blob]).await.unwrap().is_empty());
    assert!(pulled.layers[0].diff_id.size() > 1_000_000, "the diff id carries the tar's size");

    // A manifest over the client's bound is refused, naming the tag and the bound.
    let bounded = RegistryClient::anonymous().with_max_manifest_bytes(64);
    let err = bounded.pull(&base, "linux/amd64", &common::store()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains(&format!("manifest {base_name} is more than the 64 bytes allowed")), "{err}");

    // Pulling again finds every blob present and gives the same image.
    let again = client.pull(&base, "linux/amd64", &store).await.unwrap();
    assert_eq!(again, pulled);

    // A new image: the base plus a gzip layer.
    let hello = hello_layer(&store, "hello from memobuild\n").await;
    let hello = compress_layer(&store, &hello, Compression::Gzip).await.unwrap();
    let mut layers = pulled.layers.clone();
    layers.push(hello);
    let image = BuiltImage::new(config_for(&layers), layers, BTreeMap::new()).unwrap();
    let app_name = format!("{}/app/hello:v1", registry.host());
    let app: ImageReference = app_name.parse().unwrap();
    let digest = client.push(&image, &app, &store).await.unwrap();
    assert_eq!(digest, image.manifest_digest());
    // Pushing again skips the blobs the registry has and gives the same digest.
    assert_eq!(client.push(&image, &app, &store).await.unwrap(), digest);

    let inspect =
        run(Command::new("skopeo").args(["inspect", "--tls-verify=false"]).arg(format!("docker://{app_name}")));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], digest);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);

    let out = dir.path().join("out");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{app_name}"))
        .arg(format!("oci:{}:v1", out.display())));
    let bundle = dir.path().join("unpacked");
    umoci_unpack(&format!("{}:v1", out.display()), &bundle);
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/hello/world.txt")).unwrap(), "hello from memobuild\n");
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    // Our pushed image pulls back into a fresh store.
    let fresh = common::store();
    let back = client.pull(&app, "linux/amd64", &fresh).await.unwrap();
    assert_eq!(back.manifest_digest, digest);
    let blobs = |layers: &[memobuild_oci::Layer]| layers.iter().map(|l| (l.blob, l.diff_id)).collect::<Vec<_>>();
    assert_eq!(blobs(&back.layers), blobs(&image.layers));

    // A missing tag: NOT_FOUND naming the reference.
    let missing: ImageReference = format!("{}/base/busybox:nope", registry.host()).parse().unwrap();
    let err = client.pull(&missing, "linux/amd64", &store).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains(&format!("{}/base/busybox:nope", registry.host())), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_basic_auth() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let registry = Registry::start(Some(&htpasswd));
    let layout = busybox_layout(dir.path());
    let base_name = format!("{}/base/busybox:1", registry.host());
    push_base(&layout, &base_name, Some("alice:s3cret"));
    let base: ImageReference = base_name.parse().unwrap();
    let store = store();

    let err = RegistryClient::anonymous().pull(&base, "linux/amd64", &store).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains(&base_name), "{err}");

    let client = RegistryClient::with_credentials(&registry.host(), "alice", "s3cret");
    let pulled = client.pull(&base, "linux/amd64", &store).await.unwrap();
    assert_eq!(pulled.layers.len(), 1);

    let image = common::hello_image(&store).await;
    let app: ImageReference = format!("{}/app/hello:v1", registry.host()).parse().unwrap();
    let digest = client.push(&image, &app, &store).await.unwrap();
    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", "alice:s3cret"])
        .arg(format!("docker://{app}")));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], digest);

    let wrong = RegistryClient::with_credentials(&registry.host(), "alice", "wrong");
    assert!(wrong.push(&image, &app, &store).await.is_err());
}

/// Puts an index under `tag` whose one linux/amd64 entry is the manifest
/// `digest`, `size` bytes by the index's word.
async fn put_index(registry: &str, tag: &str, digest: &str, size: i64) {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": "amd64", "os": "linux"}
        }]
    });
    let response = reqwest::Client::new()
        .put(format!("http://{registry}/v2/base/busybox/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(serde_json::to_vec(&index).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(status.is_success(), "{status}: {}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_manifests_are_bounded_by_the_index_and_the_limit() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(None);
    let host = registry.host();
    push_base(&busybox_layout(dir.path()), &format!("{host}/base/busybox:1"), None);
    let manifest = reqwest::Client::new()
        .get(format!("http://{host}/v2/base/busybox/manifests/1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let digest =
        format!("sha256:{}", memobuild_proto::Digest::of(memobuild_proto::DigestFunction::Sha256, &manifest).hex());
    let size = manifest.len() as i64;
    let client = RegistryClient::anonymous();
    let pull = |tag: &str| format!("{host}/base/busybox:{tag}").parse::<ImageReference>().unwrap();

    put_index(&host, "honest", &digest, size).await;
    let pulled = client.pull(&pull("honest"), "linux/amd64", &store()).await.unwrap();
    assert_eq!(pulled.manifest_digest, digest);

    // An index that gives its manifest fewer bytes than it has: no more is read.
    put_index(&host, "short", &digest, size - 1).await;
    let err = client.pull(&pull("short"), "linux/amd64", &store()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let pinned = format!("{host}/base/busybox@{digest}");
    assert!(err.message().contains(&format!("manifest {pinned} is more than the {} bytes allowed", size - 1)), "{err}");

    // One that gives it more than the client's bound: refused before it is fetched.
    put_index(&host, "huge", &digest, 1 << 40).await;
    let err = client.pull(&pull("huge"), "linux/amd64", &store()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains(&format!(
            "manifest {pinned} is {} bytes by its index, more than the {} allowed",
            1u64 << 40,
            4 << 20
        )),
        "{err}"
    );

    // The index itself over the bound.
    let err =
        client.clone().with_max_manifest_bytes(100).pull(&pull("honest"), "linux/amd64", &store()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains(&format!("manifest {host}/base/busybox:honest is more than the 100 bytes allowed")),
        "{err}"
    );
}
