//! The WAL file name, segment name, LSN, timeline and backup id parsers on arbitrary text
//! (see `carta_dr_core::fuzzing::wal_names`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    carta_dr_core::fuzzing::wal_names(data);
});
