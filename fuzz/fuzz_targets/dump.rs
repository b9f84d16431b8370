//! The pg_dump custom archive verifier on arbitrary bytes (see `carta_dr_core::fuzzing::dump`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    carta_dr_core::fuzzing::dump(data);
});
