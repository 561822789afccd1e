//! `cargo +nightly fuzz run decompress`: see `memobuild_fuzz::decompress`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    memobuild_fuzz::decompress::check(data);
});
