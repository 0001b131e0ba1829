#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgerun_fuzz::envelope(data));
