//! Reading and writing OCI image layouts, checked with umoci and skopeo.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{
    busybox_layout, config_for, hello_image, hello_layer, require, run, store, umoci_unpack, xattr_supported,
};
use memobuild_cas::BlobStore;
use memobuild_oci::{read_oci_layout, write_oci_layout, Layer, OciDestination, DEFAULT_MAX_LAYER_BYTES};
use memobuild_proto::{Digest, DigestFunction};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn reads_a_umoci_layout_by_tag() {
    require(&["umoci"]);
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_layout(dir.path());
    let store = store();
    let image =
        read_oci_layout(&layout, Some("busybox"), "linux/amd64", &store, None, DEFAULT_MAX_LAYER_BYTES).await.unwrap();
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.config.rootfs().diff_ids(), &vec![image.layers[0].diff_id_string()]);
    assert!(store.find_missing(&[image.layers[0].blob]).await.unwrap().is_empty());
    assert_eq!(image.reference, format!("oci-layout://{}:busybox", layout.display()));
    assert_eq!(image.resolved, format!("{}@{}", layout.display(), image.manifest_digest));
    // The only image, without naming it.
    let only = read_oci_layout(&layout, None, "linux/amd64", &store, None, DEFAULT_MAX_LAYER_BYTES).await.unwrap();
    assert_eq!(only.manifest_digest, image.manifest_digest);

    let err =
        read_oci_layout(&layout, Some("nope"), "linux/amd64", &store, None, DEFAULT_MAX_LAYER_BYTES).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope") && err.message().contains("busybox"), "{err}");
}

fn write_blob(layout: &Path, data: &[u8]) -> serde_json::Value {
    let digest = Digest::of(DigestFunction::Sha256, data);
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), data).unwrap();
    serde_json::json!({"digest": format!("sha256:{}", digest.hex()), "size": data.len()})
}

async fn copy_layer(store: &dyn BlobStore, layout: &Path, layer: &Layer) -> serde_json::Value {
    let data = store.get_bytes(&layer.blob).await.unwrap();
    let mut d = write_blob(layout, &data);
    d["mediaType"] = layer.media_type.clone().into();
    d
}

/// A layout whose one index entry (tagged `multi`) is an index of a
/// linux/amd64 and a linux/arm64 image.
#[tokio::test(flavor = "multi_thread")]
async fn selects_a_platform_from_a_nested_index() {
    let source = store();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut entries = Vec::new();
    let mut layers = BTreeMap::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let layer = hello_layer(&source, arch).await;
        let mut config: serde_json::Value = serde_json::from_slice(&config_for(std::slice::from_ref(&layer))).unwrap();
        config["architecture"] = arch.into();
        let mut config_desc = write_blob(&layout, &serde_json::to_vec(&config).unwrap());
        config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [copy_layer(&source, &layout, &layer).await],
        });
        let mut desc = write_blob(&layout, &serde_json::to_vec(&manifest).unwrap());
        desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        desc["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            desc["platform"]["variant"] = v.into();
        }
        entries.push(desc);
        layers.insert(arch, layer);
    }
    let nested = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries.clone()
    });
    let mut nested_desc = write_blob(&layout, &serde_json::to_vec(&nested).unwrap());
    nested_desc["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    nested_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "multi"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [nested_desc]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let store = store();
    let arm =
        read_oci_layout(&layout, Some("multi"), "linux/arm64", &store, None, DEFAULT_MAX_LAYER_BYTES).await.unwrap();
    assert_eq!(arm.layers, vec![layers["arm64"].clone()]);
    assert_eq!(arm.config.architecture().to_string(), "arm64");
    assert_eq!(arm.manifest_digest, entries[1]["digest"]);
    let amd = read_oci_layout(&layout, None, "linux/amd64", &store, None, DEFAULT_MAX_LAYER_BYTES).await.unwrap();
    assert_eq!(amd.layers, vec![layers["amd64"].clone()]);
    let err = read_oci_layout(&layout, Some("multi"), "linux/s390x", &store, None, DEFAULT_MAX_LAYER_BYTES)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("linux/amd64, linux/arm64/v8"), "{err}");

    // The same two manifests listed straight in index.json, untagged.
    let flat = serde_json::json!({"schemaVersion": 2, "manifests": entries});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&flat).unwrap()).unwrap();
    let arm = read_oci_layout(&layout, None, "linux/arm64/v8", &store, None, DEFAULT_MAX_LAYER_BYTES).await.unwrap();
    assert_eq!(arm.layers, vec![layers["arm64"].clone()]);

    // A corrupted blob is refused.
    let blob = layout.join("blobs/sha256").join(layers["amd64"].blob.hex());
    let mut data = std::fs::read(&blob).unwrap();
    data[600] ^= 1;
    std::fs::write(&blob, data).unwrap();
    let err = read_oci_layout(&layout, None, "linux/amd64", &common::store(), None, DEFAULT_MAX_LAYER_BYTES)
        .await
        .unwrap_err();
    assert!(err.message().contains(&layers["amd64"].blob.hex()), "{err}");
}

fn check_layout(layout: &Path, bundle: &Path) {
    let inspect = run(Command::new("skopeo").arg("inspect").arg(format!("oci:{}:v1", layout.display())));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    umoci_unpack(&format!("{}:v1", layout.display()), bundle);
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/hello/world.txt")).unwrap(), "hello world\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_layouts_as_directory_and_tar() {
    use std::os::unix::fs::MetadataExt;
    require(&["skopeo", "umoci", "tar"]);
    let store = store();
    let image = hello_image(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let tags = vec!["example.com/app:v1".to_string(), "app:v2".to_string()];

    let layout = dir.path().join("layout");
    write_oci_layout(&image, &store, &OciDestination::Directory(layout.clone()), &tags).await.unwrap();
    check_layout(&layout, &dir.path().join("bundle1"));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "example.com/app:v1");
    assert_eq!(index["manifests"][1]["annotations"]["org.opencontainers.image.ref.name"], "v2");
    assert_eq!(index["manifests"][1]["digest"], image.manifest_digest());
    // The same image again writes nothing: every file keeps its inode and time.
    let files_and_times = || {
        let mut files: Vec<_> = ["index.json", "oci-layout"]
            .iter()
            .map(|f| layout.join(f))
            .chain(std::fs::read_dir(layout.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()))
            .map(|path| {
                let meta = std::fs::metadata(&path).unwrap();
                (path, meta.ino(), meta.mtime(), meta.mtime_nsec())
            })
            .collect();
        files.sort();
        files
    };
    let before = files_and_times();
    write_oci_layout(&image, &store, &OciDestination::Directory(layout.clone()), &tags).await.unwrap();
    if xattr_supported(&layout.join("x")) {
        assert_eq!(files_and_times(), before);
    }
    // Writing over an existing layout brings it up to date: a blob changed
    // since is written again, one no longer named goes; over another
    // directory is refused.
    let layer_blob = layout.join("blobs/sha256").join(image.layers[0].blob.hex());
    let mut data = std::fs::read(&layer_blob).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 1;
    std::fs::write(&layer_blob, data).unwrap();
    std::fs::write(layout.join("blobs/sha256/stale"), b"old").unwrap();
    write_oci_layout(&image, &store, &OciDestination::Directory(layout.clone()), &tags).await.unwrap();
    assert!(!layout.join("blobs/sha256/stale").exists());
    check_layout(&layout, &dir.path().join("bundle3"));
    let back = read_oci_layout(&layout, Some("v1"), "linux/amd64", &common::store(), None, DEFAULT_MAX_LAYER_BYTES)
        .await
        .unwrap();
    assert_eq!(back.manifest_digest, image.manifest_digest());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep"), b"x").unwrap();
    let err = write_oci_layout(&image, &store, &OciDestination::Directory(other.clone()), &tags).await.unwrap_err();
    assert!(err.message().contains(&other.display().to_string()), "{err}");
    assert!(other.join("keep").is_file());

    let tar_a = dir.path().join("a.tar");
    let tar_b = dir.path().join("b.tar");
    write_oci_layout(&image, &store, &OciDestination::Tar(tar_a.clone()), &tags).await.unwrap();
    write_oci_layout(&image, &store, &OciDestination::Tar(tar_b.clone()), &tags).await.unwrap();
    assert_eq!(std::fs::read(&tar_a).unwrap(), std::fs::read(&tar_b).unwrap());
    // The same image again leaves the tar alone, unless it changed since.
    let inode = std::fs::metadata(&tar_a).unwrap().ino();
    write_oci_layout(&image, &store, &OciDestination::Tar(tar_a.clone()), &tags).await.unwrap();
    let marked = xattr_supported(&tar_a);
    assert_eq!(std::fs::metadata(&tar_a).unwrap().ino() == inode, marked);
    std::fs::write(&tar_b, b"not a layout").unwrap();
    write_oci_layout(&image, &store, &OciDestination::Tar(tar_b.clone()), &tags).await.unwrap();
    assert_eq!(std::fs::read(&tar_a).unwrap(), std::fs::read(&tar_b).unwrap());
    let listing = run(Command::new("tar").arg("-tvf").arg(&tar_a));
    let names: Vec<&str> = listing.lines().map(|l| l.split_whitespace().last().unwrap()).collect();
    // What changes most comes last: layers bottom first, then the config,
    // the manifest and index.json.
    let blob = |hex: String| format!("blobs/sha256/{hex}");
    let manifest_hex = image.manifest_digest().trim_start_matches("sha256:").to_string();
    let expected = ["blobs/", "blobs/sha256/", "oci-layout"]
        .map(String::from)
        .into_iter()
        .chain(image.layers.iter().map(|l| blob(l.blob.hex())))
        .chain([blob(image.config_digest().hex()), blob(manifest_hex), "index.json".to_string()]);
    assert_eq!(names, expected.collect::<Vec<_>>());
    assert!(listing.lines().all(|l| l.contains("0/0") && l.contains("1970-01-01")), "{listing}");
    let unpacked = dir.path().join("from-tar");
    std::fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar_a).arg("-C").arg(&unpacked));
    check_layout(&unpacked, &dir.path().join("bundle2"));

    // And it reads back.
    let back = read_oci_layout(&unpacked, Some("v2"), "linux/amd64", &common::store(), None, DEFAULT_MAX_LAYER_BYTES)
        .await
        .unwrap();
    assert_eq!(back.manifest_digest, image.manifest_digest());
}
