//! `StorePath::new` on arbitrary text (see `carta_dr_core::fuzzing::store_path`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    carta_dr_core::fuzzing::store_path(data);
});
