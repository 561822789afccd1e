//! `cargo +nightly fuzz run directory`: see `memobuild_fuzz::directory`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    memobuild_fuzz::directory::check(data);
});
