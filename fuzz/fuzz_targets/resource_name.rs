//! `cargo +nightly fuzz run resource_name`: see `memobuild_fuzz::resource_name`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    memobuild_fuzz::resource_name::check(data);
});
