//! `cargo +nightly fuzz run dockerfile`: the Dockerfile front end on
//! arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    memobuild_fuzz::check(data);
});
