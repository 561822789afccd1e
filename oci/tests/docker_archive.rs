//! docker-archive export, checked with skopeo.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{hello_image, require, run, store};
use memobuild_oci::{compress_layer, write_docker_archive, BuiltImage, Compression};

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_reads_the_docker_archive() {
    require(&["skopeo", "tar"]);
    let store = store();
    let image = hello_image(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let tags = vec!["hello:v1".to_string(), "example.com/team/hello:v2".to_string()];
    write_docker_archive(&image, &store, &archive, &tags).await.unwrap();

    let inspect = run(Command::new("skopeo").arg("inspect").arg(format!("docker-archive:{}", archive.display())));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(inspect["Architecture"], "amd64");
    // Selecting the image by its tag works.
    run(Command::new("skopeo").arg("inspect").arg(format!("docker-archive:{}:hello:v1", archive.display())));
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}:example.com/team/hello:v2", archive.display())));

    let manifest = run(Command::new("tar").arg("-xOf").arg(&archive).arg("manifest.json"));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["hello:v1", "example.com/team/hello:v2"]));

    // Deterministic, and zstd layers are written uncompressed.
    let again = dir.path().join("again.tar");
    write_docker_archive(&image, &store, &again, &tags).await.unwrap();
    assert_eq!(std::fs::read(&archive).unwrap(), std::fs::read(&again).unwrap());
    let zstd = compress_layer(&store, &image.layers[0], Compression::Zstd).await.unwrap();
    let zimage = BuiltImage::new(image.config.clone(), vec![zstd], Default::default()).unwrap();
    let zarchive = dir.path().join("zstd.tar");
    write_docker_archive(&zimage, &store, &zarchive, &tags).await.unwrap();
    let copied = dir.path().join("copied");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", zarchive.display()))
        .arg(format!("oci:{}:x", copied.display())));
}
