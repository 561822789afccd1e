//! Writing an image over an image tar: one MemoBuild wrote is updated in
//! place from its first changed entry, any other file is written whole.
//! Both kinds (OCI layout tar, docker archive), checked with skopeo and tar.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{config_for, require, run, store, xattr_supported};
use filetime::FileTime;
use memobuild_cas::{BlobStore, VerifiedStore};
use memobuild_oci::{write_docker_archive, write_oci_layout, BuiltImage, Layer, LayerWriter, OciDestination};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Oci,
    Docker,
}

const KINDS: [Kind; 2] = [Kind::Oci, Kind::Docker];

/// What a user checks: skopeo reads an image of `layers` layers, and the
/// index (`index.json`, `manifest.json`) is the last entry.
fn check(kind: Kind, tar: &Path, layers: usize) {
    let (transport, last) = match kind {
        Kind::Oci => ("oci-archive", "index.json"),
        Kind::Docker => ("docker-archive", "manifest.json"),
    };
    let inspect = run(Command::new("skopeo").arg("inspect").arg(format!("{transport}:{}", tar.display())));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), layers, "{kind:?} {}", tar.display());
    let listing = run(Command::new("tar").arg("-tf").arg(tar));
    assert_eq!(listing.lines().last(), Some(last), "{listing}");
}

/// An uncompressed layer holding `path`: `size` bytes of `byte`.
async fn layer(store: &dyn BlobStore, path: &str, byte: u8, size: usize) -> Layer {
    let mut writer = LayerWriter::new();
    let data = vec![byte; size];
    writer.add_file(path, 0o644, 0, 0, 1_700_000_000, None, &mut data.as_slice(), size as u64).unwrap();
    writer.finish(store).await.unwrap()
}

fn image(layers: Vec<Layer>) -> BuiltImage {
    BuiltImage::new(config_for(&layers), layers, Default::default()).unwrap()
}

/// A store with three images, and a directory for tars. A: a big base
/// layer and a small top one. B: A and one more layer. C: A with another
/// top layer.
struct Fixture {
    store: VerifiedStore,
    a: BuiltImage,
    b: BuiltImage,
    c: BuiltImage,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        require(&["skopeo", "tar"]);
        let store = store();
        let base = layer(&store, "base.bin", b'b', 256 << 10).await;
        let top = layer(&store, "app.txt", b'1', 100).await;
        let more = layer(&store, "more.txt", b'm', 100).await;
        let other_top = layer(&store, "app.txt", b'2', 100).await;
        Fixture {
            a: image(vec![base.clone(), top.clone()]),
            b: image(vec![base.clone(), top, more]),
            c: image(vec![base, other_top]),
            store,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn write(&self, kind: Kind, image: &BuiltImage, dest: &Path) {
        let tags = ["app:v1".to_string()];
        let store = &self.store;
        match kind {
            Kind::Oci => write_oci_layout(image, store, &OciDestination::Tar(dest.into()), &tags).await.unwrap(),
            Kind::Docker => write_docker_archive(image, store, dest, &tags).await.unwrap(),
        }
    }

    /// `image` written to `name` in the directory.
    async fn written(&self, kind: Kind, image: &BuiltImage, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{kind:?}-{name}.tar"));
        self.write(kind, image, &path).await;
        path
    }

    /// `image` written into a new file (in a directory of its own).
    async fn fresh_file(&self, kind: Kind, image: &BuiltImage) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        self.write(kind, image, &path).await;
        (dir, path)
    }

    /// The bytes of `image` written into a new file.
    async fn fresh(&self, kind: Kind, image: &BuiltImage) -> Vec<u8> {
        let (_dir, path) = self.fresh_file(kind, image).await;
        std::fs::read(path).unwrap()
    }

    /// `tar` holds the bytes of `image` written into a new file, and a user
    /// can read it.
    async fn assert_holds(&self, kind: Kind, tar: &Path, image: &BuiltImage) {
        assert!(std::fs::read(tar).unwrap() == self.fresh(kind, image).await, "{kind:?} {}", tar.display());
        check(kind, tar, image.layers.len());
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tar_it_wrote_is_updated_in_place() {
    let f = Fixture::new().await;
    for kind in KINDS {
        let out = f.written(kind, &f.a, "out").await;
        check(kind, &out, 2);
        let first = inode(&out);
        let in_place = xattr_supported(&out);
        // One more layer, the top layer changed, back to fewer bytes.
        for next in [&f.b, &f.c, &f.a] {
            f.write(kind, next, &out).await;
            f.assert_holds(kind, &out, next).await;
            if in_place {
                assert_eq!(inode(&out), first, "{kind:?}: the tar was replaced, not updated");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tar_changed_since_is_written_whole() {
    let f = Fixture::new().await;
    for kind in KINDS {
        // A byte appended.
        let out = f.written(kind, &f.a, "out").await;
        std::fs::OpenOptions::new().append(true).open(&out).unwrap().write_all(b"x").unwrap();
        let before = inode(&out);
        f.write(kind, &f.b, &out).await;
        f.assert_holds(kind, &out, &f.b).await;
        assert_ne!(inode(&out), before);
        // Other content written over it (another image's tar).
        std::fs::write(&out, f.fresh(kind, &f.c).await).unwrap();
        f.write(kind, &f.b, &out).await;
        f.assert_holds(kind, &out, &f.b).await;
    }
}

/// Damage to a tar, done keeping its size and time (so its note still
/// matches): bytes written over it, or the file cut and refilled with zeros.
#[derive(Debug)]
enum Damage {
    Overwrite { at: u64, bytes: Vec<u8> },
    CutAndRefill { at: u64 },
}

fn damage_keeping_size_and_time(path: &Path, damage: &Damage) {
    let meta = std::fs::metadata(path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    match damage {
        Damage::Overwrite { at, bytes } => file.write_all_at(bytes, *at).unwrap(),
        Damage::CutAndRefill { at } => file.set_len(*at).unwrap(),
    }
    file.set_len(meta.len()).unwrap();
    drop(file);
    filetime::set_file_mtime(path, FileTime::from_last_modification_time(&meta)).unwrap();
}

/// Where the header of `name` starts in `tar`.
fn header_offset(tar: &Path, name: &str) -> u64 {
    let listing = run(Command::new("tar").arg("-tRf").arg(tar));
    let line = listing.lines().find(|l| l.ends_with(&format!(": {name}"))).unwrap();
    let block: u64 = line.trim_start_matches("block ").split(':').next().unwrap().parse().unwrap();
    block * 512
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tar_with_damaged_headers_is_written_whole() {
    let f = Fixture::new().await;
    let base = format!("blobs/sha256/{}", f.a.layers[0].blob.hex());
    for kind in KINDS {
        let (_a_dir, a_tar) = f.fresh_file(kind, &f.a).await;
        let damages = [
            Damage::Overwrite { at: 0, bytes: vec![0xa5; 4096] },
            Damage::CutAndRefill { at: 1100 },
            Damage::Overwrite { at: header_offset(&a_tar, &base), bytes: b"X".to_vec() },
        ];
        for damage in damages {
            let out = f.written(kind, &f.a, "out").await;
            damage_keeping_size_and_time(&out, &damage);
            let before = inode(&out);
            f.write(kind, &f.b, &out).await;
            f.assert_holds(kind, &out, &f.b).await;
            assert_ne!(inode(&out), before, "{kind:?}, {damage:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_linked_tar_is_not_changed_in_place() {
    let f = Fixture::new().await;
    for kind in KINDS {
        let out = f.written(kind, &f.a, "out").await;
        let link = out.with_extension("link");
        std::fs::hard_link(&out, &link).unwrap();
        f.write(kind, &f.b, &out).await;
        f.assert_holds(kind, &out, &f.b).await;
        assert!(std::fs::read(&link).unwrap() == f.fresh(kind, &f.a).await, "{kind:?}");
    }
}
