//! Extracting layer stacks: whiteouts, links, and hostile tars.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use common::store;
use memobuild_cas::BlobStore;
use memobuild_oci::{compress_layer, extract_layers, Compression, ExtractLimits, Layer, LayerWriter};
use memobuild_proto::{Digest, DigestFunction};
use tonic::Code;

/// One raw tar entry: kind, name exactly as written, link target, content.
struct Raw<'a>(tar::EntryType, &'a str, &'a str, &'a [u8]);

/// A tar with names written verbatim (no sanitising), stored uncompressed.
async fn raw_layer(store: &dyn BlobStore, entries: &[Raw<'_>]) -> Layer {
    let mut builder = tar::Builder::new(Vec::new());
    for Raw(kind, name, link, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_mtime(1_600_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    let tar = Bytes::from(builder.into_inner().unwrap());
    let digest = Digest::of(DigestFunction::Sha256, &tar);
    store.put_bytes(&digest, tar).await.unwrap();
    Layer::uncompressed(digest)
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_whiteouts_links_and_metadata() {
    let store = store();
    let mut lower = LayerWriter::new();
    lower.add_directory("etc", 0o755, 0, 0, 100).unwrap();
    lower.add_file("etc/keep", 0o640, 12, 34, 1_600_000_000, None, &mut &b"keep"[..], 4).unwrap();
    lower.add_file("etc/gone", 0o644, 0, 0, 100, None, &mut &b"gone"[..], 4).unwrap();
    lower.add_directory("opq", 0o700, 0, 0, 100).unwrap();
    lower.add_file("opq/old", 0o644, 0, 0, 100, None, &mut &b"old"[..], 3).unwrap();
    lower.add_directory("opq/sub", 0o755, 0, 0, 100).unwrap();
    lower.add_file("opq/sub/deep", 0o644, 0, 0, 100, None, &mut &b"deep"[..], 4).unwrap();
    lower.add_symlink("etc/link", "keep", 0, 0, 100).unwrap();
    lower.add_hardlink("etc/hard", "etc/keep", 0o640, 12, 34, 1_600_000_000).unwrap();
    let long = format!("{}/file", "d".repeat(120));
    lower.add_file(&long, 0o755, 0, 0, 100, None, &mut &b"long"[..], 4).unwrap();
    let lower = lower.finish(&store).await.unwrap();
    let lower = compress_layer(&store, &lower, Compression::Gzip).await.unwrap();

    let mut upper = LayerWriter::new();
    upper.add_whiteout("etc/gone").unwrap();
    upper.add_directory("opq", 0o755, 0, 0, 200).unwrap();
    upper.add_file("opq/new", 0o644, 0, 0, 200, None, &mut &b"new"[..], 3).unwrap();
    upper.add_opaque_whiteout("opq").unwrap();
    let upper = upper.finish(&store).await.unwrap();
    let upper = compress_layer(&store, &upper, Compression::Zstd).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rootfs");
    extract_layers(&store, &[lower, upper], &dest, ExtractLimits::default()).await.unwrap();
    let mut expected = vec!["etc", "etc/hard", "etc/keep", "etc/link", "opq", "opq/new"];
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/file");
    expected.push(&long_dir);
    expected.push(&long_file);
    expected.sort();
    assert_eq!(files_under(&dest), expected);
    assert_eq!(std::fs::read_link(dest.join("etc/link")).unwrap(), Path::new("keep"));
    let keep = std::fs::metadata(dest.join("etc/keep")).unwrap();
    assert_eq!(keep.ino(), std::fs::metadata(dest.join("etc/hard")).unwrap().ino());
    assert_eq!(keep.mode() & 0o7777, 0o640);
    assert_eq!(keep.mtime(), 1_600_000_000);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((keep.uid(), keep.gid()), (12, 34));
    }
    assert_eq!(std::fs::metadata(dest.join("opq")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(dest.join("opq")).unwrap().mtime(), 200);
    assert_eq!(std::fs::read(dest.join(&long_file)).unwrap(), b"long");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tars_stay_inside_the_destination() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let store = store();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rootfs");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let outside_str = outside.display().to_string();

    // `..` is refused, naming the layer and the entry.
    let layer = raw_layer(&store, &[Raw(Regular, "../x", "", b"x")]).await;
    let err = extract_layers(&store, std::slice::from_ref(&layer), &dest, ExtractLimits::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains(&layer.blob.hex()) && err.message().contains("../x"), "{err}");
    assert!(!dir.path().join("x").exists());

    // Absolute paths land inside; a symlink to an absolute directory is
    // resolved inside too, as is one that climbs with `..`.
    let evil_target = format!("{outside_str}/");
    let layer = raw_layer(
        &store,
        &[
            Raw(Regular, "/abs", "", b"abs"),
            Raw(Symlink, "evil", &evil_target, b""),
            Raw(Regular, "evil/pwned", "", b"pwned"),
            Raw(Symlink, "up", "../../../../../..", b""),
            Raw(Regular, "up/pwned2", "", b"pwned"),
            Raw(Directory, "d/", "", b""),
        ],
    )
    .await;
    extract_layers(&store, &[layer], &dest, ExtractLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(dest.join("abs")).unwrap(), b"abs");
    assert_eq!(std::fs::read(dest.join(outside_str.trim_start_matches('/')).join("pwned")).unwrap(), b"pwned");
    assert_eq!(std::fs::read(dest.join("pwned2")).unwrap(), b"pwned");
    assert_eq!(files_under(&outside), vec!["secret"]);
    assert!(!Path::new("/pwned2").exists());

    // Hard links out of the destination are refused, relative or absolute.
    for target in ["../../etc/passwd", "/etc/passwd", "evil/secret"] {
        let layer = raw_layer(&store, &[Raw(Link, "passwd", target, b"")]).await;
        let err = extract_layers(&store, &[layer], &dest, ExtractLimits::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{target}: {err}");
        assert!(err.message().contains("passwd"), "{err}");
        assert!(!dest.join("passwd").exists());
    }
    // A whiteout through a symlink removes nothing outside.
    let layer = raw_layer(&store, &[Raw(Regular, "evil/.wh.secret", "", b"")]).await;
    extract_layers(&store, &[layer], &dest, ExtractLimits::default()).await.unwrap();
    assert!(outside.join("secret").is_file());

    // Limits on bytes and entries.
    let big = vec![0u8; 4096];
    let layer = raw_layer(&store, &[Raw(Regular, "big", "", &big)]).await;
    let limits = ExtractLimits { max_bytes: 1000, max_entries: 100 };
    let err = extract_layers(&store, std::slice::from_ref(&layer), &dest, limits).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("big") && err.message().contains(&layer.blob.hex()), "{err}");
    let layer = raw_layer(&store, &[Raw(Regular, "a", "", b""), Raw(Regular, "b", "", b"")]).await;
    let limits = ExtractLimits { max_bytes: 1000, max_entries: 1 };
    let err = extract_layers(&store, &[layer], &dest, limits).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    // Garbage is an error, not a panic.
    let junk = Bytes::from_static(b"this is not a tar at all, not even close to one; 512 bytes are needed");
    let digest = Digest::of(DigestFunction::Sha256, &junk);
    store.put_bytes(&digest, junk).await.unwrap();
    let gz = Layer { blob: digest, media_type: memobuild_oci::MEDIA_TYPE_TAR_GZIP.into(), diff_id: digest };
    assert!(extract_layers(&store, &[gz], &dest, ExtractLimits::default()).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn overlay_upper_keeps_whiteouts_as_overlayfs_does() {
    use std::os::unix::fs::FileTypeExt;
    let store = store();
    let layer = raw_layer(
        &store,
        &[
            Raw(tar::EntryType::Directory, "etc/", "", b""),
            Raw(tar::EntryType::Regular, "etc/.wh.shadow", "", b""),
            Raw(tar::EntryType::Directory, "var/cache/", "", b""),
            Raw(tar::EntryType::Regular, "var/cache/.wh..wh..opq", "", b""),
            Raw(tar::EntryType::Regular, "var/cache/new", "", b"kept"),
        ],
    )
    .await;
    let upper = tempfile::tempdir().unwrap();
    memobuild_oci::extract_layer_to_overlay_upper(&store, &layer, upper.path(), ExtractLimits::default())
        .await
        .unwrap();
    let whiteout = std::fs::symlink_metadata(upper.path().join("etc/shadow")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "a 0/0 character device");
    let opaque = xattr::get(upper.path().join("var/cache"), "trusted.overlay.opaque").unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read(upper.path().join("var/cache/new")).unwrap(), b"kept");
    assert_eq!(files_under(upper.path()), ["etc", "etc/shadow", "var", "var/cache", "var/cache/new"]);

    // A layer whose content is not its diff id (of the same size) is refused.
    let other = Digest::parse(DigestFunction::Sha256, &"0".repeat(64), layer.diff_id.size() as i64).unwrap();
    let wrong = Layer { diff_id: other, ..layer };
    let err = extract_layers(&store, &[wrong], tempfile::tempdir().unwrap().path(), ExtractLimits::default())
        .await
        .unwrap_err();
    assert!(err.message().contains("not its diff id"), "{err}");
}

/// `cap_net_raw+ep` as `setcap` writes it: revision 2, effective, permitted.
const NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// File capabilities survive writing and unpacking (after the change of
/// owner, which drops them), other xattrs are applied, `trusted.*` ones
/// (overlayfs's own instructions) never.
#[tokio::test(flavor = "multi_thread")]
async fn file_capabilities_and_xattrs_are_kept_but_trusted_ones() {
    let store = store();
    let mut writer = LayerWriter::new();
    writer.add_file("bin/ping", 0o755, 1000, 1000, 100, Some(&NET_RAW), &mut &b"ping"[..], 4).unwrap();
    writer.add_file("bin/plain", 0o755, 0, 0, 100, None, &mut &b"plain"[..], 5).unwrap();
    let written = writer.finish(&store).await.unwrap();
    let bytes = store.get_bytes(&written.blob).await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut records = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        for record in entry.pax_extensions().unwrap().into_iter().flatten() {
            let record = record.unwrap();
            records.push((path.clone(), record.key().unwrap().to_string(), record.value_bytes().to_vec()));
        }
    }
    assert_eq!(records, [("bin/ping".into(), "SCHILY.xattr.security.capability".into(), NET_RAW.to_vec())]);

    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, xattrs) in [
        ("etc/", tar::EntryType::Directory, vec![("SCHILY.xattr.user.origin", &b"base"[..])]),
        (
            "etc/conf",
            tar::EntryType::Regular,
            vec![("SCHILY.xattr.user.origin", &b"conf"[..]), ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])],
        ),
    ] {
        builder.append_pax_extensions(xattrs).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(100);
        builder.append_data(&mut header, name, &b""[..]).unwrap();
    }
    let tar = Bytes::from(builder.into_inner().unwrap());
    let digest = Digest::of(DigestFunction::Sha256, &tar);
    store.put_bytes(&digest, tar).await.unwrap();
    let with_xattrs = Layer::uncompressed(digest);

    let root = nix::unistd::geteuid().is_root();
    let output = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    extract_layers(&store, &[written.clone(), with_xattrs.clone()], output.path(), ExtractLimits::default())
        .await
        .unwrap();
    for layer in [&written, &with_xattrs] {
        memobuild_oci::extract_layer_to_overlay_upper(&store, layer, upper.path(), ExtractLimits::default())
            .await
            .unwrap();
    }
    for dir in [output.path(), upper.path()] {
        let get = |path: &str, name: &str| xattr::get(dir.join(path), name).unwrap();
        if root {
            assert_eq!(std::fs::metadata(dir.join("bin/ping")).unwrap().uid(), 1000);
            assert_eq!(get("bin/ping", "security.capability"), Some(NET_RAW.to_vec()), "kept after the chown");
        }
        assert_eq!(get("bin/plain", "security.capability"), None);
        if common::xattr_supported(dir) {
            assert_eq!(get("etc", "user.origin").as_deref(), Some(&b"base"[..]));
            assert_eq!(get("etc/conf", "user.origin").as_deref(), Some(&b"conf"[..]));
        }
        if root {
            assert_eq!(get("etc/conf", "trusted.overlay.opaque"), None, "a trusted xattr is not applied");
        }
    }
}
